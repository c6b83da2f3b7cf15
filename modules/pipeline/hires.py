"""Hires fix: the first pass's latents upscaled to the target size, the start of a second img2img pass.

    latents -> [latent upscale | decode -> image upscaler -> encode] -> start of the second pass
"""

from __future__ import annotations

import torch

from modules.accel.runner import ModelRunner
from modules.io.generation_request import Txt2ImgRequest
from modules.io.infotext import format_number
from modules.models.sd_model import StableDiffusionModel
from modules.pipeline.vae_codec import decode_latents, encode_pixels, image_to_tensor, inpainting_conditioning
from modules.postprocess import upscalers


def hires_size(request: Txt2ImgRequest) -> tuple[int, int]:
    """Target size of the hires pass: `Resize width/height to` when given, else `Upscale by`."""
    if request.hr_resize_x or request.hr_resize_y:
        ratio = request.width / request.height
        width = request.hr_resize_x or int(request.hr_resize_y * ratio)
        height = request.hr_resize_y or int(request.hr_resize_x / ratio)
    else:
        width, height = int(request.width * request.hr_scale), int(request.height * request.hr_scale)
    return width // 8 * 8, height // 8 * 8


def hires_start(model: StableDiffusionModel, request: Txt2ImgRequest, latents: torch.Tensor,
                upscaler_registry: object | None, runner: ModelRunner | None = None) -> torch.Tensor:
    """The first pass's latents at the hires size, by the request's upscaler."""
    width, height = hires_size(request)
    if upscalers.is_latent_mode(request.hr_upscaler):
        return upscalers.upscale_latent(latents, request.hr_upscaler, height, width)
    images = [upscalers.upscale_image(im, request.hr_upscaler, width, height, upscaler_registry)
              for im in decode_latents(model, latents, runner)]
    return torch.cat([encode_pixels(model, image_to_tensor(im)) for im in images])


def hires_image_cond(model: StableDiffusionModel, start: torch.Tensor, batch: int,
                     runner: ModelRunner | None = None) -> torch.Tensor | None:
    """The second pass's inpainting conditioning (9-channel checkpoints: all of the image is repainted)."""
    if model.unet_in_channels == model.latent_channels:
        return None
    pixels = torch.cat([image_to_tensor(im) for im in decode_latents(model, start, runner)])
    return inpainting_conditioning(model, pixels[:1], None, batch)


def hires_infotext(request: Txt2ImgRequest) -> dict[str, object]:
    resized = bool(request.hr_resize_x or request.hr_resize_y)
    width, height = hires_size(request)
    return {"Denoising strength": format_number(request.denoising_strength),
            "Hires resize" if resized else "Hires upscale": f"{width}x{height}" if resized
            else format_number(request.hr_scale),
            "Hires steps": request.hr_second_pass_steps or None, "Hires upscaler": request.hr_upscaler,
            "Hires sampler": request.hr_sampler_name, "Hires schedule type": request.hr_scheduler,
            "Hires prompt": request.hr_prompt or None, "Hires negative prompt": request.hr_negative_prompt or None}
