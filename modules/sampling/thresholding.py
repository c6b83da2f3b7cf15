"""Thresholding of the guided x0 estimate (Saharia et al. 2022, Imagen), applied to the guider's
combined prediction (the pipeline does it at its after-CFG hook point).

Units: the denoised latents are in the *scaled* latent space the UNet sees (VAE latents times
the model's scale factor, 0.18215 for SD1, 0.13025 for SDXL), where clean images have roughly
unit standard deviation and most values within [-4, 4]. A threshold `t` clamps to [-t, t] in those
units; Imagen's pixel-space bound of 1 does not transfer to latents, so `latent_range` (default
4) plays its role in dynamic thresholding: percentiles are taken of |x0| / latent_range and the
result is scaled back by latent_range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modules.sampling.guidance import combine

LATENT_RANGE = 4.0


def static_threshold(x0: torch.Tensor, threshold: float) -> torch.Tensor:
    """Clamp to [-threshold, threshold] (scaled latent units)."""
    return x0.clamp(-threshold, threshold)


def dynamic_threshold(x0: torch.Tensor, percentile: float, latent_range: float = LATENT_RANGE) -> torch.Tensor:
    """Imagen dynamic thresholding per sample: s = max(quantile_p(|x0|), 1); clamp to [-s, s]; divide by s.

    Computed on x0 / latent_range (the latent analogue of pixels in [-1, 1]) and scaled back.
    """
    normalised = x0 / latent_range
    flat = normalised.abs().reshape(x0.shape[0], -1).float()
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return normalised.clamp(-s, s) / s * latent_range


def mimic_scale_threshold(real: torch.Tensor, mimic: torch.Tensor, percentile: float) -> torch.Tensor:
    """sd-dynamic-thresholding's "mimic scale": give the real-scale result the range of the mimic-scale one.

    Per sample and channel: centre the real result, find its p-quantile of |x| (at least the mimic
    result's), and rescale so that quantile lands on the mimic result's, clamping to that range.
    """
    b, c = real.shape[:2]
    real_flat, mimic_flat = real.reshape(b, c, -1), mimic.reshape(b, c, -1)
    real_centre, mimic_centre = real_flat.mean(-1, keepdim=True), mimic_flat.mean(-1, keepdim=True)
    real_centred, mimic_centred = real_flat - real_centre, mimic_flat - mimic_centre
    mimic_max = mimic_centred.abs().amax(-1, keepdim=True)
    real_q = torch.quantile(real_centred.abs().float(), percentile, dim=-1, keepdim=True).to(real.dtype)
    real_q = torch.maximum(real_q, mimic_max)
    rescaled = real_centred.clamp(-real_q, real_q) / real_q * mimic_max
    return (rescaled + real_centre).reshape(real.shape)


@dataclass(frozen=True)
class Thresholding:
    """One choice of thresholding; `mode` "none", "static", "dynamic" or "mimic"."""

    mode: str = "none"
    threshold: float = 4.0  # static: bound in scaled latent units
    percentile: float = 0.995  # dynamic / mimic
    mimic_scale: float = 7.0  # mimic: the CFG scale whose range the result keeps
    latent_range: float = LATENT_RANGE

    def __post_init__(self):
        if self.mode not in {"none", "static", "dynamic", "mimic"}:
            raise ValueError(f"unknown thresholding mode {self.mode!r}")
        if not 0.0 < self.percentile <= 1.0:
            raise ValueError("percentile must be in (0, 1]")


def apply_thresholding(guided: torch.Tensor, thresholding: Thresholding, uncond: torch.Tensor | None,
                       conds: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """`guided` thresholded as `thresholding` says; mimic scale needs the unconditional x0 (without it,
    at scale 1, the result is left as it is)."""
    if thresholding.mode == "static":
        return static_threshold(guided, thresholding.threshold)
    if thresholding.mode == "dynamic":
        return dynamic_threshold(guided, thresholding.percentile, thresholding.latent_range)
    if thresholding.mode == "mimic" and uncond is not None:
        mimic = combine(uncond, conds, weights, thresholding.mimic_scale)
        return mimic_scale_threshold(guided, mimic, thresholding.percentile)
    return guided
