"""txt2img and img2img as named stages over one request.

    txt2img: seeds -> encode prompts -> sample -> [hires: upscale -> sample again] -> decode -> save
    img2img: seeds -> prepare image/mask -> encode image -> sample from it -> decode -> composite -> save
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modules.pipeline import image_prep
from modules.io import image_saving
from modules.models import lora
from modules.io import png_encoding
from modules.postprocess import upscalers
from modules.models.embeddings import EmbeddingDatabase, ti_hashes
from modules.pipeline.prompt_conditioning import PromptConditioning, build_prompt_conditioning
from modules.pipeline.prompt_preparation import prepare_request
from modules.pipeline.text_encoding import emphasis_infotext
from modules.io.generation_request import Img2ImgRequest, Txt2ImgRequest
from modules.io.image_saving import ImageFacts, SaveOptions
from modules.io.infotext import create_infotext, format_number
from modules.pipeline.latent_sampling import InitLatent, NoiseSettings, SamplingSettings, sample_latents
from modules.sampling.rng import resolve_seed
from modules.sampling.registry import find_sampler
from modules.sampling.thresholding import Thresholding
from modules.models.sd_model import StableDiffusionModel

StepCallback = Callable[[dict], None]


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    paths: list[Path] = field(default_factory=list)
    grid_path: Path | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. LoRA names that were not found
    pngs: list[bytes] = field(default_factory=list)  # the saved PNG files' bytes, one per image, when saved as PNG
    # The request as it ran: styles applied, comments and Midjourney parameters turned into fields.
    request: Txt2ImgRequest | None = None


@dataclass
class Resources:
    """What a generation may use besides the checkpoint: model upscalers and LoRA files."""

    upscalers: object | None = None  # UpscalerRegistry
    face_restorers: object | None = None  # FaceRestorers
    face_restoration_model: str = "CodeFormer"  # AUTOMATIC1111's setting of that name and its default
    code_former_weight: float = 0.5
    is_interrupted: Callable[[], bool] = lambda: False  # the job was interrupted: start no further batch
    lora_files: list = field(default_factory=list)  # lora.LoraFile
    lora_cache: lora.LoraCache = field(default_factory=lora.LoraCache)
    embeddings: EmbeddingDatabase | None = None  # the textual inversions that fit the loaded model
    styles_file: Path | None = None  # styles.csv


@contextmanager
def _loras_applied(model: StableDiffusionModel, request: Txt2ImgRequest, resources: Resources,
                   result: GenerationResult):
    """Apply the prompt's <lora:...> tags for the duration; yields the request without the tags
    and the infotext fields to add. The base weights come back exactly afterwards."""
    plan = lora.plan_loras(request.prompt, resources.lora_files, resources.lora_cache)
    if plan.not_found:  # AUTOMATIC1111's words, which its users look for
        result.warnings.append(f"Networks not found: {', '.join(plan.not_found)}")
    result.warnings += [f"LoRA {name} could not be read: {why}" for name, why in plan.failed.items()]
    stripped = request.model_copy(update={"prompt": plan.prompt})
    with lora.apply_loras(model, plan.loras):
        yield stripped, plan.infotext


# ---- seeds, settings, conditioning ------------------------------------------------------------

def batch_seeds(request: Txt2ImgRequest, first_seed: int, first_subseed: int,
                batch_index: int) -> tuple[list[int], list[int]]:
    """Seeds and variation seeds of one batch: seed + i per image, or, with a variation strength,
    one shared seed and subseed + i (AUTOMATIC1111's rule)."""
    start = batch_index * request.batch_size
    indices = range(start, start + request.batch_size)
    if request.subseed_strength > 0:
        return [first_seed] * request.batch_size, [first_subseed + i for i in indices]
    return [first_seed + i for i in indices], [first_subseed + i for i in indices]


def sampling_settings(request: Txt2ImgRequest, width: int, height: int, steps: int | None = None,
                      sampler_name: str | None = None, scheduler: str | None = None) -> SamplingSettings:
    return SamplingSettings(
        stop_at_fraction=request.stop_at_fraction,
        sampler_name=sampler_name or request.sampler_name, scheduler=scheduler or request.scheduler,
        steps=steps or request.steps, cfg_scale=request.cfg_scale, width=width, height=height,
        thresholding=Thresholding(request.thresholding, percentile=request.threshold_percentile,
                                  mimic_scale=request.mimic_scale),
        s_churn=request.s_churn, s_tmin=request.s_tmin, s_tmax=request.s_tmax, s_noise=request.s_noise,
        eta=request.eta)


def noise_settings(request: Txt2ImgRequest, seeds: list[int], subseeds: list[int]) -> NoiseSettings:
    return NoiseSettings(seeds=seeds, subseeds=subseeds, subseed_strength=request.subseed_strength,
                         seed_resize_from_h=max(request.seed_resize_from_h, 0),
                         seed_resize_from_w=max(request.seed_resize_from_w, 0), source=request.randn_source,
                         eta_noise_seed_delta=request.eta_noise_seed_delta,
                         initial_noise_multiplier=getattr(request, "initial_noise_multiplier", 1.0))


def encode_conditioning(model: StableDiffusionModel, prompt: str, negative: str, request: Txt2ImgRequest,
                        width: int, height: int, steps: int, resources: "Resources",
                        image_cond: torch.Tensor | None = None) -> PromptConditioning:
    return build_prompt_conditioning(model, prompt, negative, steps, width, height, request.clip_skip,
                                     request.emphasis, resources.embeddings, image_cond)


def prompt_infotext(request: Txt2ImgRequest, conditioning: PromptConditioning) -> dict[str, object]:
    return {"Emphasis": emphasis_infotext([request.prompt, request.negative_prompt], request.emphasis),
            "TI hashes": ti_hashes(conditioning.used_embeddings)}


# ---- VAE --------------------------------------------------------------------------------------

class NonFiniteImageError(RuntimeError):
    """The VAE produced NaN or infinite pixels even in float32: no image (and no black PNG) is made."""


def _vae_decode(model: StableDiffusionModel, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    scaled = (latents / model.scale_factor).to(model.policy.device, dtype)
    return model.vae_decode(scaled)


def _switch_vae_to_float32(model: StableDiffusionModel) -> None:
    """Half-precision VAEs overflow to NaN on some latents (SDXL's on most): from the first time it
    happens the VAE runs in float32 for as long as the model is loaded, as AUTOMATIC1111's "revert VAE
    to 32-bit floats" does, instead of paying for a failed half-precision decode on every image."""
    logging.getLogger(__name__).warning("The VAE produced NaN in %s; it runs in float32 from now on "
                                        "(--no-half-vae starts it that way)", model.policy.vae_dtype)
    model.vae.to(torch.float32)
    model.forget_compiled_state("VAE decoder")  # its graphs point at the half-precision weights
    model.policy = dataclasses.replace(model.policy, vae_dtype=torch.float32)


@torch.no_grad()
def decode_latents(model: StableDiffusionModel, latents: torch.Tensor) -> list[Image.Image]:
    """Latents -> images; NaN/inf anywhere (not only everywhere) is retried with a float32 VAE, which
    the model then keeps, and if still there raises NonFiniteImageError instead of returning black images."""
    if not torch.isfinite(latents).all():
        raise NonFiniteImageError("sampling produced NaN or infinite latents; no image was made")
    pixels = _vae_decode(model, latents, model.policy.vae_dtype)
    if not torch.isfinite(pixels).all() and model.policy.vae_dtype != torch.float32:
        _switch_vae_to_float32(model)
        pixels = _vae_decode(model, latents, torch.float32)
    if not torch.isfinite(pixels).all():
        raise NonFiniteImageError("the VAE produced NaN or infinite pixels even in float32; no image was saved "
                                  "(try another VAE or checkpoint)")
    pixels = ((pixels + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
    array = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


@torch.no_grad()
def encode_pixels(model: StableDiffusionModel, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled latents (the distribution's mode: deterministic)."""
    posterior = model.vae.encode(pixels.to(model.policy.device, model.policy.vae_dtype)).latent_dist
    return posterior.mode().float() * model.scale_factor


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> [1, 3, H, W] in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def inpainting_conditioning(model: StableDiffusionModel, pixels: torch.Tensor, mask: torch.Tensor | None,
                            batch: int) -> torch.Tensor | None:
    """9-channel checkpoints see the mask and the latents of the image with the masked area blanked.

    `mask` is [1, 1, H, W] in pixel space (1 = repaint); None means all of it (txt2img).
    """
    if model.unet_in_channels == model.latent_channels:
        return None
    mask = torch.ones_like(pixels[:, :1]) if mask is None else mask.round()
    latents = encode_pixels(model, pixels * (1 - mask))
    latent_mask = torch.nn.functional.interpolate(mask, size=latents.shape[2:]).to(latents.device)
    return torch.cat([latent_mask, latents], dim=1).repeat(batch, 1, 1, 1)


# ---- infotext and saving ----------------------------------------------------------------------

def build_infotext(model: StableDiffusionModel, request: Txt2ImgRequest, seed: int, subseed: int,
                   width: int, height: int, extra: dict[str, object] | None = None) -> str:
    spec = find_sampler(request.sampler_name)
    variation = request.subseed_strength > 0
    resized = request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0
    params = {
        "Steps": request.steps,
        "Sampler": request.sampler_name,
        "Schedule type": request.scheduler,
        "CFG scale": format_number(request.cfg_scale),
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model.checkpoint.shorthash,
        "Model": model.checkpoint.model_name,
        "VAE": Path(model.vae_name).stem if model.vae_name else None,
        "Variation seed": subseed if variation else None,
        "Variation seed strength": format_number(request.subseed_strength) if variation else None,
        "Seed resize from": f"{request.seed_resize_from_w}x{request.seed_resize_from_h}" if resized else None,
        "Denoising strength": None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        "ENSD": request.eta_noise_seed_delta if request.eta_noise_seed_delta and spec.uses_ensd else None,
        "RNG": request.randn_source if request.randn_source != "GPU" else None,
        "Eta": format_number(request.eta) if request.eta is not None else None,
        "Thresholding": request.thresholding if request.thresholding != "none" else None,
        **(extra or {}),
    }
    return create_infotext(request.prompt, request.negative_prompt, params)


def save_options_for(outputs_dir: Path | SaveOptions | None, request: Txt2ImgRequest) -> SaveOptions | None:
    if isinstance(outputs_dir, SaveOptions):
        return outputs_dir if request.save_images else None
    if outputs_dir is None or not request.save_images:
        return None
    # Temporary files live beside outputs/, never in it, so a kill mid-write leaves nothing there.
    return SaveOptions(outputs_dir=Path(outputs_dir), temp_dir=Path(outputs_dir).parent / "tmp")


def _facts(model: StableDiffusionModel, request: Txt2ImgRequest, seed: int, batch_number: int,
           seeds: list[int], width: int, height: int) -> ImageFacts:
    return ImageFacts(seed=seed, prompt=request.prompt, negative_prompt=request.negative_prompt,
                      model_name=model.checkpoint.model_name, model_hash=model.checkpoint.shorthash or "",
                      sampler=request.sampler_name, scheduler=request.scheduler, steps=request.steps,
                      cfg_scale=request.cfg_scale, width=width, height=height,
                      batch_number=batch_number, seeds=tuple(seeds))


def restore_faces(images: list[Image.Image], request: Txt2ImgRequest, resources: Resources,
                  result: GenerationResult, extra: dict[str, object]) -> list[Image.Image]:
    """The images with faces restored when the request asks for it; a missing restorer is a warning."""
    if not request.restore_faces:
        return images
    name = resources.face_restoration_model
    restorers = resources.face_restorers
    if restorers is None or name not in restorers.names():
        from modules.postprocess.face_restoration import not_installed_note

        warning = f"Face restoration skipped: {not_installed_note(name)}"
        if warning not in result.warnings:
            result.warnings.append(warning)
        return images
    restored = []
    for image in images:
        outcome = restorers.restore(image, name, codeformer_weight=resources.code_former_weight)
        result.warnings += [note for note in outcome.notes if note not in result.warnings]
        restored.append(outcome.image)
    extra["Face restoration"] = name
    return restored


def _unless_interrupted(save: SaveOptions | None, resources: Resources) -> SaveOptions | None:
    """Incomplete images are returned but not saved (AUTOMATIC1111's "Save incomplete images" is off
    by default): an interrupted job leaves no half-denoised file in outputs/."""
    return None if resources.is_interrupted() else save


def _collect(result: GenerationResult, model, request, kind: str, save: SaveOptions | None,
             images: list[Image.Image], seeds: list[int], infotexts: list[str]) -> None:
    saving = save is not None and not request.do_not_save_samples
    # A batch's PNGs are encoded together, on all cores; the API answers with the same bytes.
    pngs = png_encoding.encode_pngs(images, infotexts) if saving and save.format == "png" else []
    result.pngs += pngs
    for number, (image, seed, infotext) in enumerate(zip(images, seeds, infotexts)):
        result.images.append(image)
        result.seeds.append(seed)
        result.infotexts.append(infotext)
        if saving:
            facts = _facts(model, request, seed, number, seeds, image.width, image.height)
            result.paths.append(image_saving.save_image(image, save, kind, facts, infotext,
                                                        pngs[number] if pngs else None))


def _save_grid(result: GenerationResult, model, request, kind: str, save: SaveOptions | None) -> None:
    if save is not None and len(result.images) > 1 and not request.do_not_save_grid:
        grid = image_saving.image_grid(result.images)
        first = result.images[0]
        facts = _facts(model, request, result.seeds[0], 0, result.seeds, first.width, first.height)
        result.grid_path = image_saving.save_grid(grid, save, kind, facts, result.infotexts[0])


# ---- txt2img ----------------------------------------------------------------------------------

def hires_size(request: Txt2ImgRequest) -> tuple[int, int]:
    """Target size of the hires pass: `Resize width/height to` when given, else `Upscale by`."""
    if request.hr_resize_x or request.hr_resize_y:
        ratio = request.width / request.height
        width = request.hr_resize_x or int(request.hr_resize_y * ratio)
        height = request.hr_resize_y or int(request.hr_resize_x / ratio)
    else:
        width, height = int(request.width * request.hr_scale), int(request.height * request.hr_scale)
    return width // 8 * 8, height // 8 * 8


def _hires_pass(model, request: Txt2ImgRequest, latents: torch.Tensor, seeds, subseeds,
                callback: StepCallback | None, resources: Resources) -> tuple[torch.Tensor, dict[str, object]]:
    width, height = hires_size(request)
    if upscalers.is_latent_mode(request.hr_upscaler):
        start = upscalers.upscale_latent(latents, request.hr_upscaler, height, width)
    else:
        images = [upscalers.upscale_image(im, request.hr_upscaler, width, height, resources.upscalers)
                  for im in decode_latents(model, latents)]
        start = torch.cat([encode_pixels(model, image_to_tensor(im)) for im in images])
    prompt = request.hr_prompt or request.prompt
    negative = request.hr_negative_prompt or request.negative_prompt
    pixels_for_cond = None
    if model.unet_in_channels != model.latent_channels:
        pixels_for_cond = torch.cat([image_to_tensor(im) for im in decode_latents(model, start)])
    image_cond = inpainting_conditioning(model, pixels_for_cond[:1], None, len(seeds)) \
        if pixels_for_cond is not None else None
    settings = sampling_settings(request, width, height, steps=request.hr_second_pass_steps or request.steps,
                                 sampler_name=request.hr_sampler_name, scheduler=request.hr_scheduler)
    conditioning = encode_conditioning(model, prompt, negative, request, width, height, settings.steps, resources,
                                       image_cond)
    init = InitLatent(start, request.denoising_strength, fixed_steps=True)
    latents = sample_latents(model, settings, noise_settings(request, seeds, subseeds), conditioning, init, callback)
    extra = {"Denoising strength": format_number(request.denoising_strength),
             "Hires upscale" if not (request.hr_resize_x or request.hr_resize_y) else "Hires resize":
                 format_number(request.hr_scale) if not (request.hr_resize_x or request.hr_resize_y)
                 else f"{width}x{height}",
             "Hires steps": request.hr_second_pass_steps or None, "Hires upscaler": request.hr_upscaler,
             "Hires sampler": request.hr_sampler_name, "Hires schedule type": request.hr_scheduler,
             "Hires prompt": request.hr_prompt or None, "Hires negative prompt": request.hr_negative_prompt or None}
    return latents, extra


def txt2img(model: StableDiffusionModel, request: Txt2ImgRequest, outputs_dir: Path | SaveOptions | None,
            callback: StepCallback | None = None, resources: Resources | None = None) -> GenerationResult:
    resources = resources or Resources()
    request = prepare_request(request, model.native_size, resources.styles_file)
    result = GenerationResult(images=[], seeds=[], infotexts=[], request=request)
    with _loras_applied(model, request, resources, result) as (stripped, lora_infotext):
        _txt2img(model, request, stripped, outputs_dir, callback, resources, result, lora_infotext)
    return result


def _txt2img(model: StableDiffusionModel, request: Txt2ImgRequest, stripped: Txt2ImgRequest, outputs_dir,
             callback: StepCallback | None, resources: Resources, result: GenerationResult,
             lora_infotext: dict[str, object]) -> None:
    """`request` is what the user wrote (it goes into the infotext); `stripped` has no LoRA tags."""
    save = save_options_for(outputs_dir, request)
    first_seed, first_subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
    image_cond = inpainting_conditioning(model, torch.zeros(1, 3, request.height, request.width), None,
                                         request.batch_size)
    settings = sampling_settings(request, request.width, request.height)
    conditioning = encode_conditioning(model, stripped.prompt, request.negative_prompt, request, request.width,
                                       request.height, settings.steps, resources, image_cond)
    for batch_index in range(request.n_iter):
        if batch_index and resources.is_interrupted():
            break  # an interrupt stops the job: batches not started are not run (a skip ends one batch only)
        seeds, subseeds = batch_seeds(request, first_seed, first_subseed, batch_index)
        latents = sample_latents(model, settings, noise_settings(request, seeds, subseeds), conditioning,
                                 callback=callback)
        width, height = request.width, request.height
        extra = {**prompt_infotext(request, conditioning), **lora_infotext}
        if request.enable_hr:
            latents, hires_extra = _hires_pass(model, stripped, latents, seeds, subseeds, callback, resources)
            extra.update(hires_extra)
            width, height = hires_size(request)
        images = restore_faces(decode_latents(model, latents), request, resources, result, extra)
        infotexts = [build_infotext(model, request, seed, subseed, width, height, extra)
                     for seed, subseed in zip(seeds, subseeds)]
        _collect(result, model, request, "txt2img", _unless_interrupted(save, resources), images, seeds, infotexts)
    _save_grid(result, model, request, "txt2img", _unless_interrupted(save, resources))


# ---- img2img and inpainting -------------------------------------------------------------------

@dataclass
class _Prepared:
    """The init image and mask at processing size, and how to put the result back."""

    image: Image.Image  # at width x height
    mask: Image.Image | None  # at width x height, blurred, white = repaint
    original: Image.Image  # the full init image
    full_mask: Image.Image | None  # the blurred mask at the original size
    crop_box: tuple[int, int, int, int] | None  # "only masked": where the processed image goes back


def _prepare(request: Img2ImgRequest) -> _Prepared:
    original = request.init_images[0].convert("RGB")
    if request.mask is None:
        image = image_prep.resize_image(image_prep.ResizeMode(request.resize_mode), original,
                                        request.width, request.height)
        return _Prepared(image, None, original, None, None)
    full_mask = image_prep.prepare_mask(request.mask.resize(original.size), request.mask_blur,
                                        bool(request.inpainting_mask_invert))
    if request.inpaint_full_res:
        box = image_prep.masked_region(full_mask, request.inpaint_full_res_padding)
        if box is not None:
            box = image_prep.expand_to_aspect(box, request.width, request.height, *original.size)
            image = original.crop(box).resize((request.width, request.height), image_prep.LANCZOS)
            mask = full_mask.crop(box).resize((request.width, request.height), image_prep.LANCZOS)
            return _Prepared(image, mask, original, full_mask, box)
    mode = image_prep.ResizeMode(request.resize_mode)
    image = image_prep.resize_image(mode, original, request.width, request.height)
    mask = image_prep.resize_image(mode, full_mask.convert("RGB"), request.width, request.height).convert("L")
    return _Prepared(image, mask, original, full_mask if mode == image_prep.ResizeMode.JUST_RESIZE and
                     original.size == (request.width, request.height) else None, None)


def _put_back(prepared: _Prepared, generated: Image.Image) -> Image.Image:
    """Composite onto the original so pixels outside the mask stay exactly as they were."""
    if prepared.mask is None:
        return generated
    if prepared.crop_box is not None:
        x1, y1, x2, y2 = prepared.crop_box
        pasted = prepared.original.copy()
        pasted.paste(generated.resize((x2 - x1, y2 - y1), image_prep.LANCZOS), (x1, y1))
        return image_prep.composite(prepared.original, pasted, prepared.full_mask)
    if prepared.full_mask is not None:
        return image_prep.composite(prepared.original, generated, prepared.full_mask)
    return image_prep.composite(prepared.image, generated, prepared.mask)


def _init_latent(model, request: Img2ImgRequest, prepared: _Prepared, batch: int,
                 noise: NoiseSettings) -> tuple[InitLatent, torch.Tensor | None]:
    source = prepared.image
    if prepared.mask is not None and request.inpainting_fill == image_prep.MaskedContent.FILL:
        source = image_prep.fill_masked(source, prepared.mask)
    pixels = image_to_tensor(source)
    if request.resize_mode == image_prep.ResizeMode.LATENT_UPSCALE and prepared.mask is None:
        latent = upscalers.upscale_latent(encode_pixels(model, image_to_tensor(prepared.original)), "Latent",
                                          request.height, request.width)
    else:
        latent = encode_pixels(model, pixels)
    latent = latent.repeat(batch, 1, 1, 1)
    mask_pixels = None
    keep = None
    if prepared.mask is not None:
        mask_pixels = torch.from_numpy(np.asarray(prepared.mask, dtype=np.float32) / 255)[None, None]
        latent_mask = torch.nn.functional.interpolate(mask_pixels, size=latent.shape[2:], mode="bilinear")
        latent_mask = latent_mask.round()  # AUTOMATIC1111 rounds the latent mask (no soft inpainting)
        keep = (1 - latent_mask).to(latent.device)
        if request.inpainting_fill == image_prep.MaskedContent.LATENT_NOISE:
            from modules.sampling.rng import ImageRNG

            fresh = ImageRNG(tuple(latent.shape[1:]), [s + 1 for s in noise.seeds], source=noise.source).first()
            latent = latent * keep + fresh.to(latent.device) * (1 - keep)
        elif request.inpainting_fill == image_prep.MaskedContent.LATENT_NOTHING:
            latent = latent * keep
    image_cond = inpainting_conditioning(model, image_to_tensor(prepared.image), mask_pixels, batch)
    return InitLatent(latent, request.denoising_strength, keep_mask=keep), image_cond


def img2img(model: StableDiffusionModel, request: Img2ImgRequest, outputs_dir: Path | SaveOptions | None,
            callback: StepCallback | None = None, resources: Resources | None = None) -> GenerationResult:
    resources = resources or Resources()
    request = prepare_request(request, model.native_size, resources.styles_file)
    result = GenerationResult(images=[], seeds=[], infotexts=[], request=request)
    with _loras_applied(model, request, resources, result) as (stripped, lora_infotext):
        _img2img(model, request, stripped, outputs_dir, callback, result, lora_infotext, resources)
    return result


def _img2img(model: StableDiffusionModel, request: Img2ImgRequest, stripped: Img2ImgRequest, outputs_dir,
             callback: StepCallback | None, result: GenerationResult, lora_infotext: dict[str, object],
             resources: Resources) -> None:
    save = save_options_for(outputs_dir, request)
    prepared = _prepare(request)
    first_seed, first_subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
    settings = sampling_settings(request, request.width, request.height)
    extra: dict[str, object] = {"Denoising strength": format_number(request.denoising_strength), **lora_infotext}
    if prepared.mask is not None:
        extra.update({"Mask blur": request.mask_blur,
                      "Masked content": image_prep.MASKED_CONTENT_NAMES[request.inpainting_fill],
                      "Inpaint area": "Only masked" if request.inpaint_full_res else None,
                      "Masked area padding": request.inpaint_full_res_padding if request.inpaint_full_res else None,
                      "Mask mode": "Inpaint not masked" if request.inpainting_mask_invert else None})
    for batch_index in range(request.n_iter):
        if batch_index and resources.is_interrupted():
            break  # an interrupt stops the job: batches not started are not run (a skip ends one batch only)
        seeds, subseeds = batch_seeds(request, first_seed, first_subseed, batch_index)
        noise = noise_settings(request, seeds, subseeds)
        init, image_cond = _init_latent(model, request, prepared, len(seeds), noise)
        conditioning = encode_conditioning(model, stripped.prompt, request.negative_prompt, request, request.width,
                                           request.height, settings.steps, resources, image_cond)
        extra.update(prompt_infotext(request, conditioning))
        latents = sample_latents(model, settings, noise, conditioning, init, callback)
        images = [_put_back(prepared, image) for image in decode_latents(model, latents)]
        images = restore_faces(images, request, resources, result, extra)
        infotexts = [build_infotext(model, request, seed, subseed, images[0].width, images[0].height, extra)
                     for seed, subseed in zip(seeds, subseeds)]
        _collect(result, model, request, "img2img", _unless_interrupted(save, resources), images, seeds, infotexts)
    _save_grid(result, model, request, "img2img", _unless_interrupted(save, resources))
