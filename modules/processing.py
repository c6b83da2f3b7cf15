"""txt2img as named stages over one request.

    resolve seeds -> encode prompts -> initial noise -> sample -> decode -> save
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modules import image_saving
from modules.image_saving import ImageFacts, SaveOptions
from modules.conditioning import encode_prompts
from modules.generation_request import Txt2ImgRequest
from modules.infotext import create_infotext, format_number
from modules.rng import ImageRNG, resolve_seed
from modules.sampling.denoisers import DiscreteDenoiser
from modules.sampling.guidance import CFGDenoiser
from modules.sampling.registry import find_sampler, noise_sampler_for, run_sampler, sigmas_for
from modules.sampling.samplers import SamplingInterrupted
from modules.sampling.thresholding import Thresholding
from modules.sd_model import StableDiffusionModel

StepCallback = Callable[[dict], None]


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    paths: list[Path] = field(default_factory=list)
    grid_path: Path | None = None


def batch_seeds(request: Txt2ImgRequest, first_seed: int, first_subseed: int,
                batch_index: int) -> tuple[list[int], list[int]]:
    """Seeds and variation seeds of one batch: seed + i per image, or, with a variation strength,
    one shared seed and subseed + i (AUTOMATIC1111's rule)."""
    start = batch_index * request.batch_size
    indices = range(start, start + request.batch_size)
    if request.subseed_strength > 0:
        return [first_seed] * request.batch_size, [first_subseed + i for i in indices]
    return [first_seed + i for i in indices], [first_subseed + i for i in indices]


@torch.no_grad()
def decode_latents(model: StableDiffusionModel, latents: torch.Tensor) -> list[Image.Image]:
    vae = model.vae
    scaled = (latents / model.scale_factor).to(model.policy.device, model.policy.vae_dtype)
    pixels = vae.decode(scaled, return_dict=False)[0].float()
    pixels = ((pixels + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
    array = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def build_infotext(model: StableDiffusionModel, request: Txt2ImgRequest, seed: int, subseed: int) -> str:
    spec = find_sampler(request.sampler_name)
    variation = request.subseed_strength > 0
    resized = request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0
    params = {
        "Steps": request.steps,
        "Sampler": request.sampler_name,
        "Schedule type": request.scheduler,
        "CFG scale": format_number(request.cfg_scale),
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model.checkpoint.shorthash,
        "Model": model.checkpoint.model_name,
        "VAE": Path(model.vae_name).stem if model.vae_name else None,
        "Variation seed": subseed if variation else None,
        "Variation seed strength": format_number(request.subseed_strength) if variation else None,
        "Seed resize from": f"{request.seed_resize_from_w}x{request.seed_resize_from_h}" if resized else None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        "ENSD": request.eta_noise_seed_delta if request.eta_noise_seed_delta and spec.uses_ensd else None,
        "RNG": request.randn_source if request.randn_source != "GPU" else None,
        "Eta": format_number(request.eta) if request.eta is not None else None,
        "Thresholding": request.thresholding if request.thresholding != "none" else None,
    }
    return create_infotext(request.prompt, request.negative_prompt, params)


@torch.no_grad()
def encode_pixels(model: StableDiffusionModel, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled latents (the distribution's mode: deterministic)."""
    vae = model.vae
    posterior = vae.encode(pixels.to(model.policy.device, model.policy.vae_dtype)).latent_dist
    return posterior.mode().float() * model.scale_factor


def txt2img_image_conditioning(model: StableDiffusionModel, batch: int, width: int, height: int) -> torch.Tensor | None:
    """Inpainting checkpoints need mask + masked-image latents even for txt2img: mask all, image grey."""
    if model.unet_in_channels == model.latent_channels:
        return None
    grey = torch.zeros(1, 3, height, width)  # 0.5 grey in [0, 1] is 0 in [-1, 1]
    latents = encode_pixels(model, grey)
    mask = torch.ones(1, 1, *latents.shape[2:], device=latents.device)
    return torch.cat([mask, latents], dim=1).repeat(batch, 1, 1, 1)


def _thresholding(request: Txt2ImgRequest) -> Thresholding:
    return Thresholding(request.thresholding, percentile=request.threshold_percentile, mimic_scale=request.mimic_scale)


@torch.no_grad()
def sample_batch(model: StableDiffusionModel, request: Txt2ImgRequest, seeds: list[int], subseeds: list[int],
                 callback: StepCallback | None = None) -> torch.Tensor:
    """Latents for one batch. A callback may raise SamplingInterrupted: the latest x is returned."""
    spec = find_sampler(request.sampler_name)
    device = model.policy.device
    cond = encode_prompts(model, [request.prompt], request.width, request.height, request.clip_skip)
    uncond = encode_prompts(model, [request.negative_prompt], request.width, request.height, request.clip_skip)
    image_cond = txt2img_image_conditioning(model, len(seeds), request.width, request.height)
    if image_cond is not None:
        cond, uncond = {**cond, "image_cond": image_cond}, {**uncond, "image_cond": image_cond}
    denoiser = CFGDenoiser(DiscreteDenoiser(model.unet_fn, model.schedule, model.prediction),
                           cond, uncond, request.cfg_scale, _thresholding(request))
    sigmas = sigmas_for(spec, request.scheduler, request.steps, model.schedule, model.is_sdxl).to(device)
    rng = ImageRNG((model.latent_channels, request.height // 8, request.width // 8), seeds, subseeds,
                   request.subseed_strength, max(request.seed_resize_from_h, 0), max(request.seed_resize_from_w, 0),
                   source=request.randn_source, device=device, eta_noise_seed_delta=request.eta_noise_seed_delta)
    x = rng.first().to(device) * sigmas[0]
    latest = {"x": x}

    def on_step(info: dict) -> None:
        latest["x"] = info["x"]
        if callback is not None:
            callback(info)

    try:
        return run_sampler(spec, denoiser, x, sigmas, callback=on_step,
                           noise_sampler=noise_sampler_for(spec, x, sigmas, rng, seeds),
                           s_churn=request.s_churn, s_tmin=request.s_tmin, s_tmax=request.s_tmax,
                           s_noise=request.s_noise, eta=request.eta)
    except SamplingInterrupted:
        return latest["x"]


def save_options_for(outputs_dir: Path | None, request: Txt2ImgRequest) -> SaveOptions | None:
    if outputs_dir is None or not request.save_images:
        return None
    # Temporary files live beside outputs/, never in it, so a kill mid-write leaves nothing there.
    return SaveOptions(outputs_dir=Path(outputs_dir), temp_dir=Path(outputs_dir).parent / "tmp")


def _facts(model: StableDiffusionModel, request: Txt2ImgRequest, seed: int, batch_number: int,
           seeds: list[int]) -> ImageFacts:
    return ImageFacts(seed=seed, prompt=request.prompt, negative_prompt=request.negative_prompt,
                      model_name=model.checkpoint.model_name, model_hash=model.checkpoint.shorthash or "",
                      sampler=request.sampler_name, scheduler=request.scheduler, steps=request.steps,
                      cfg_scale=request.cfg_scale, width=request.width, height=request.height,
                      batch_number=batch_number, seeds=tuple(seeds))


def txt2img(model: StableDiffusionModel, request: Txt2ImgRequest, outputs_dir: Path | SaveOptions | None,
            callback: StepCallback | None = None) -> GenerationResult:
    save = outputs_dir if isinstance(outputs_dir, SaveOptions) else save_options_for(outputs_dir, request)
    first_seed, first_subseed = resolve_seed(request.seed), resolve_seed(request.subseed)
    result = GenerationResult(images=[], seeds=[], infotexts=[])
    for batch_index in range(request.n_iter):
        seeds, subseeds = batch_seeds(request, first_seed, first_subseed, batch_index)
        latents = sample_batch(model, request, seeds, subseeds, callback)
        for number, (image, seed, subseed) in enumerate(zip(decode_latents(model, latents), seeds, subseeds)):
            infotext = build_infotext(model, request, seed, subseed)
            result.images.append(image)
            result.seeds.append(seed)
            result.infotexts.append(infotext)
            if save is not None and not request.do_not_save_samples:
                facts = _facts(model, request, seed, number, seeds)
                result.paths.append(image_saving.save_image(image, save, "txt2img", facts, infotext))
    if save is not None and len(result.images) > 1 and not request.do_not_save_grid:
        grid = image_saving.image_grid(result.images, rows=None)
        facts = _facts(model, request, result.seeds[0], 0, result.seeds)
        result.grid_path = image_saving.save_grid(grid, save, "txt2img", facts, result.infotexts[0])
    return result
