"""What a job leaves behind: each image's infotext, its PNG in outputs/, and the grid of a batch."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from modules.io import image_saving, png_encoding
from modules.io.generation_request import Txt2ImgRequest
from modules.io.image_saving import ImageFacts, SaveOptions
from modules.io.infotext import create_infotext, format_number
from modules.models.sd_model import StableDiffusionModel
from modules.pipeline.job import GenerationResult
from modules.sampling.registry import SamplerSpec


def build_infotext(model: StableDiffusionModel, request: Txt2ImgRequest, sampler: SamplerSpec, seed: int,
                   subseed: int, width: int, height: int, extra: dict[str, object] | None = None) -> str:
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
        "ENSD": request.eta_noise_seed_delta if request.eta_noise_seed_delta and sampler.uses_ensd else None,
        "RNG": request.randn_source if request.randn_source != "GPU" else None,
        "Eta": format_number(request.eta) if request.eta is not None else None,
        "Thresholding": request.thresholding if request.thresholding != "none" else None,
        **(extra or {}),
    }
    return create_infotext(request.prompt, request.negative_prompt, params)


def save_options_for(outputs_dir: Path | SaveOptions | None, request: Txt2ImgRequest) -> SaveOptions | None:
    if not request.save_images or outputs_dir is None:
        return None
    return outputs_dir if isinstance(outputs_dir, SaveOptions) else SaveOptions(outputs_dir=Path(outputs_dir))


def image_facts(model: StableDiffusionModel, request: Txt2ImgRequest, seed: int, batch_number: int,
                seeds: list[int], width: int, height: int) -> ImageFacts:
    return ImageFacts(seed=seed, prompt=request.prompt, negative_prompt=request.negative_prompt,
                      model_name=model.checkpoint.model_name, model_hash=model.checkpoint.shorthash or "",
                      sampler=request.sampler_name, scheduler=request.scheduler, steps=request.steps,
                      cfg_scale=request.cfg_scale, width=width, height=height,
                      batch_number=batch_number, seeds=tuple(seeds))


def save_batch(result: GenerationResult, model: StableDiffusionModel, request: Txt2ImgRequest, kind: str,
               save: SaveOptions | None, images: list[Image.Image], seeds: list[int],
               infotexts: list[str]) -> list[Path]:
    """Add a batch to the result and, unless `save` is None, write its PNGs; the paths written."""
    saving = save is not None and not request.do_not_save_samples
    # A batch's PNGs are encoded together, on all cores; the API answers with the same bytes.
    pngs = png_encoding.encode_pngs(images, infotexts) if saving and save.format == "png" else []
    result.pngs += pngs
    paths = []
    for number, (image, seed, infotext) in enumerate(zip(images, seeds, infotexts)):
        result.images.append(image)
        result.seeds.append(seed)
        result.infotexts.append(infotext)
        if saving:
            facts = image_facts(model, request, seed, number, seeds, image.width, image.height)
            paths.append(image_saving.save_image(image, save, kind, facts, infotext, pngs[number] if pngs else None))
    result.paths += paths
    return paths


def save_grid(result: GenerationResult, model: StableDiffusionModel, request: Txt2ImgRequest, kind: str,
              save: SaveOptions | None) -> Image.Image | None:
    """The grid of a job of several images, written as result.grid_path; None when none is saved."""
    if save is None or len(result.images) <= 1 or request.do_not_save_grid:
        return None
    grid = image_saving.image_grid(result.images)
    first = result.images[0]
    facts = image_facts(model, request, result.seeds[0], 0, result.seeds, first.width, first.height)
    result.grid_path = image_saving.save_grid(grid, save, kind, facts, result.infotexts[0])
    return grid
