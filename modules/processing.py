"""txt2img as named stages over one request.

    resolve seeds -> encode prompts -> initial noise -> sample -> decode -> save
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modules import image_saving
from modules.conditioning import encode_prompts
from modules.generation_request import Txt2ImgRequest
from modules.infotext import create_infotext, format_number
from modules.sampling.denoisers import DiscreteDenoiser
from modules.sampling.guidance import CFGDenoiser
from modules.sampling.registry import find_sampler
from modules.sampling.schedules import uniform_schedule
from modules.sd_model import StableDiffusionModel

StepCallback = Callable[[dict], None]


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    paths: list[Path] = field(default_factory=list)


def resolve_seed(seed: int) -> int:
    """-1 means a random seed, drawn as AUTOMATIC1111 does."""
    return random.randrange(4294967294) if seed == -1 else int(seed)


def batch_seeds(first_seed: int, batch_index: int, batch_size: int) -> list[int]:
    start = first_seed + batch_index * batch_size
    return [start + i for i in range(batch_size)]


def initial_noise(seeds: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """One CPU generator per seed, so an image's noise does not depend on its batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])


@torch.no_grad()
def decode_latents(model: StableDiffusionModel, latents: torch.Tensor) -> list[Image.Image]:
    vae = model.vae
    scaled = (latents / model.scale_factor).to(model.policy.device, model.policy.vae_dtype)
    pixels = vae.decode(scaled, return_dict=False)[0].float()
    pixels = ((pixels + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
    array = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def build_infotext(model: StableDiffusionModel, request: Txt2ImgRequest, seed: int) -> str:
    params = {
        "Steps": request.steps,
        "Sampler": request.sampler_name,
        "Schedule type": "Automatic",
        "CFG scale": format_number(request.cfg_scale),
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model.checkpoint.shorthash,
        "Model": model.checkpoint.model_name,
        "VAE": Path(model.vae_name).stem if model.vae_name else None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        "RNG": "CPU",
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


@torch.no_grad()
def sample_batch(model: StableDiffusionModel, request: Txt2ImgRequest, seeds: list[int],
                 callback: StepCallback | None = None) -> torch.Tensor:
    sampler = find_sampler(request.sampler_name)
    cond = encode_prompts(model, [request.prompt], request.width, request.height, request.clip_skip)
    uncond = encode_prompts(model, [request.negative_prompt], request.width, request.height, request.clip_skip)
    image_cond = txt2img_image_conditioning(model, len(seeds), request.width, request.height)
    if image_cond is not None:
        cond, uncond = {**cond, "image_cond": image_cond}, {**uncond, "image_cond": image_cond}
    denoiser = CFGDenoiser(DiscreteDenoiser(model.unet_fn, model.schedule, model.prediction),
                           cond, uncond, request.cfg_scale)
    sigmas = uniform_schedule(request.steps, model.schedule).to(model.policy.device)
    shape = (model.latent_channels, request.height // 8, request.width // 8)
    x = initial_noise(seeds, shape).to(model.policy.device) * sigmas[0]
    return sampler.function(denoiser, x, sigmas, callback=callback, **sampler.options)


def txt2img(model: StableDiffusionModel, request: Txt2ImgRequest, outputs_dir: Path | None,
            callback: StepCallback | None = None) -> GenerationResult:
    first_seed = resolve_seed(request.seed)
    result = GenerationResult(images=[], seeds=[], infotexts=[])
    for batch_index in range(request.n_iter):
        seeds = batch_seeds(first_seed, batch_index, request.batch_size)
        latents = sample_batch(model, request, seeds, callback)
        for image, seed in zip(decode_latents(model, latents), seeds):
            infotext = build_infotext(model, request, seed)
            result.images.append(image)
            result.seeds.append(seed)
            result.infotexts.append(infotext)
            if request.save_images and outputs_dir is not None:
                result.paths.append(image_saving.save_generated_image(image, outputs_dir, "txt2img", seed, infotext))
    return result
