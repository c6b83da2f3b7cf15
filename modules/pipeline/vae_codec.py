"""Between pixels and latents: the VAE's decode and encode, and the extra conditioning of inpainting
checkpoints (which see the mask and the masked image's latents)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from PIL import Image

from modules.accel.runner import VAE_DECODER, ModelRunner
from modules.models.sd_model import StableDiffusionModel

log = logging.getLogger(__name__)


class NonFiniteImageError(RuntimeError):
    """The VAE produced NaN or infinite pixels even in float32: no image (and no black PNG) is made."""


def vae_decode(runner: ModelRunner, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scaled latents -> [B, 3, H, W] pixels in [-1, 1], by the runner's VAE decoder in `dtype`."""
    scaled = (latents / runner.model.scale_factor).to(runner.model.policy.device, dtype)
    return runner.vae_decode(scaled)


def to_bytes(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1], in any layout -> 0..255 bytes."""
    return ((pixels + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)


def _switch_vae_to_float32(runner: ModelRunner) -> None:
    """Half-precision VAEs overflow to NaN on some latents (SDXL's on most): from the first time it
    happens the VAE runs in float32 for as long as the model is loaded, as AUTOMATIC1111's "revert VAE
    to 32-bit floats" does, instead of paying for a failed half-precision decode on every image."""
    model = runner.model
    log.warning("The VAE produced NaN in %s; it runs in float32 from now on (--no-half-vae starts it that way)",
                model.policy.vae_dtype)
    model.vae.to(torch.float32)
    runner.forget(VAE_DECODER)  # its graphs point at the half-precision weights
    model.policy = dataclasses.replace(model.policy, vae_dtype=torch.float32)


@torch.no_grad()
def decode_latents(model: StableDiffusionModel, latents: torch.Tensor,
                   runner: ModelRunner | None = None) -> list[Image.Image]:
    """Latents -> images, decoded through `runner` (a plain one when not given); NaN/inf anywhere (not
    only everywhere) is retried with a float32 VAE, which the model then keeps, and if still there raises
    NonFiniteImageError instead of returning black images."""
    if not torch.isfinite(latents).all():
        raise NonFiniteImageError("sampling produced NaN or infinite latents; no image was made")
    runner = runner or ModelRunner(model)
    pixels = vae_decode(runner, latents, model.policy.vae_dtype)
    if not torch.isfinite(pixels).all() and model.policy.vae_dtype != torch.float32:
        _switch_vae_to_float32(runner)
        pixels = vae_decode(runner, latents, torch.float32)
    if not torch.isfinite(pixels).all():
        raise NonFiniteImageError("the VAE produced NaN or infinite pixels even in float32; no image was saved "
                                  "(try another VAE or checkpoint)")
    array = to_bytes(pixels).permute(0, 2, 3, 1).cpu().numpy()
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
