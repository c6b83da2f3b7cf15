"""A cheap live preview of a running generation: latents to RGB by a fixed linear map.

AUTOMATIC1111's "Approx cheap" coefficients for 4-channel SD latents; no VAE call, so a preview
costs microseconds and never competes with the job for the device.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

SD_LATENT_RGB = torch.tensor([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
])


def latent_preview(latent: torch.Tensor | None) -> Image.Image | None:
    """The first image of a [B, 4, h, w] latent batch as a small RGB image; None for other shapes."""
    if latent is None or latent.ndim != 4 or latent.shape[1] != SD_LATENT_RGB.shape[0]:
        return None
    sample = latent[0].detach().float().cpu()
    rgb = torch.einsum("lhw,lr->hwr", sample, SD_LATENT_RGB)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))
