"""Upscalers by name: the built-in resamplers and the latent modes of hires fix.

Model upscalers (ESRGAN family through spandrel) register here too; see the upscaler registry.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image

# AUTOMATIC1111's latent upscale modes: name -> (interpolation mode, antialias)
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_RESAMPLERS = {"None": None, "Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}


class UnknownUpscalerError(ValueError):
    pass


def is_latent_mode(name: str) -> bool:
    return name in LATENT_MODES


def upscale_latent(latent: torch.Tensor, name: str, height: int, width: int) -> torch.Tensor:
    mode, antialias = LATENT_MODES[name]
    return F.interpolate(latent, size=(height // 8, width // 8), mode=mode, antialias=antialias)


def upscale_image(image: Image.Image, name: str, width: int, height: int, models=None,
                  check_interrupt: Callable[[], None] | None = None) -> Image.Image:
    """Resize with a built-in resampler ("None" still resizes, with Lanczos, as AUTOMATIC1111 does)
    or with a model upscaler from `models` (an UpscalerRegistry)."""
    check_pixel_upscaler(name, models)
    if name in PIXEL_RESAMPLERS:
        return image.resize((width, height), PIXEL_RESAMPLERS[name] or Image.Resampling.LANCZOS)
    return models.upscale(image, name, width, height, check_interrupt)


def check_pixel_upscaler(name: str, models=None, with_latent_modes: bool = True) -> None:
    """UnknownUpscalerError listing the choices unless `name` is a resampler or one of `models`."""
    if name in PIXEL_RESAMPLERS or (models is not None and models.find(name) is not None):
        return
    choices = [*(LATENT_MODES if with_latent_modes else ()), *PIXEL_RESAMPLERS,
               *(models.names() if models is not None else [])]
    raise UnknownUpscalerError(f"unknown upscaler {name!r}; choose one of: {', '.join(choices)}")
