"""Live previews of a running generation, made on the worker from a sampling step's x0 estimate.

    "Approx cheap": AUTOMATIC1111's linear latent->RGB map for 4-channel SD latents; no VAE call.
    "Full": the job's own VAE, as the model holds it. A preview never changes the model: where a
            half-precision decode gives NaN, the image's decode switches the VAE to float32, a
            preview is just left out.

A preview is started on the model's device and copied to pinned host memory without waiting, so
sampling never stalls for one; it is ready a step or so later (at once on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from modules.accel.runner import ModelRunner
from modules.models.sd_model import StableDiffusionModel
from modules.pipeline.vae_codec import to_bytes, vae_decode

PreviewMethod = Literal["Approx cheap", "Full"]

SD_LATENT_RGB = torch.tensor([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
])


def preview_method(asked: PreviewMethod, model: StableDiffusionModel) -> PreviewMethod:
    """What the worker makes: full previews only where the VAE sits on the device beside the UNet; in
    --medvram/--lowvram each one would move the UNet off the device and back."""
    return asked if model.policy.memory_mode == "normal" else "Approx cheap"


def cheap_pixels(latents: torch.Tensor, latent_rgb: torch.Tensor) -> torch.Tensor | None:
    """[B, 4, h, w] latents -> [B, h, w, 3] bytes on the latents' device (`latent_rgb`: SD_LATENT_RGB there);
    None for other shapes."""
    if latents.ndim != 4 or latents.shape[1] != latent_rgb.shape[0]:
        return None
    return to_bytes(torch.einsum("blhw,lr->bhwr", latents.float(), latent_rgb))


@torch.no_grad()
def vae_pixels(runner: ModelRunner, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, H, W, 3] bytes decoded by the job's runner with the VAE in the dtype it has now, and whether every
    value was finite (a device scalar: reading it would wait for the decode)."""
    decoded = vae_decode(runner, latents, runner.model.policy.vae_dtype)
    return to_bytes(decoded.permute(0, 2, 3, 1)), torch.isfinite(decoded).all()


def _to_pinned_host(tensor: torch.Tensor) -> torch.Tensor:
    """A copy in page-locked host memory, started without waiting for the device."""
    return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor, non_blocking=True)


@dataclass
class PendingPreview:
    """Preview pixels on their way to the host; `images()` once `ready()`."""

    pixels: torch.Tensor  # [B, H, W, 3] uint8, on the host
    finite: torch.Tensor  # bool scalar, on the host
    copied: torch.cuda.Event | None  # recorded after the copies; None when they were synchronous

    def ready(self) -> bool:
        return self.copied is None or self.copied.query()

    def images(self) -> list[Image.Image] | None:
        """One image per latent of the batch; None when the decode was not finite (no preview this time)."""
        if self.copied is not None:
            self.copied.synchronize()
        if not bool(self.finite):
            return None
        return [Image.fromarray(np.ascontiguousarray(array)) for array in self.pixels.numpy()]


class PreviewMaker:
    """Starts previews of one model's latents, by the method that suits the model."""

    def __init__(self, model: StableDiffusionModel, asked: PreviewMethod, runner: ModelRunner | None = None):
        self.model = model
        # The job's runner: its VAE graphs and compiled decoder serve previews too.
        self.runner = runner or ModelRunner(model)
        self.method = preview_method(asked, model)
        # Copied to the device once: a copy from pageable host memory waits for the device, every time.
        self._latent_rgb = SD_LATENT_RGB.to(model.policy.device)

    @torch.no_grad()
    def start(self, latents: torch.Tensor) -> PendingPreview | None:
        """Start a preview of `latents` (a step's x0 estimate); None when they cannot be shown (the cheap map
        knows 4-channel latents only)."""
        if self.method == "Full":
            pixels, finite = vae_pixels(self.runner, latents)
        else:
            pixels = cheap_pixels(latents.detach(), self._latent_rgb)
            if pixels is None:
                return None
            finite = torch.isfinite(latents).all()
        if not pixels.is_cuda:
            return PendingPreview(pixels.cpu(), finite.cpu(), None)
        pixels, finite = _to_pinned_host(pixels), _to_pinned_host(finite)
        copied = torch.cuda.Event()
        copied.record()
        return PendingPreview(pixels, finite, copied)
