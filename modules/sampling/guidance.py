"""Classifier-free guidance as a wrapper around a denoiser: samplers never know it exists."""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[..., torch.Tensor]


def _fit_batch(cond: dict, batch: int) -> dict:
    """Repeat per-prompt tensors (batch 1) to the latent batch; per-image tensors pass unchanged."""
    return {k: (v.repeat(batch, *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) and v.shape[0] != batch else v)
            for k, v in cond.items()}


def _cat_conds(a: dict, b: dict) -> dict:
    return {k: (torch.cat([a[k], b[k]]) if isinstance(a[k], torch.Tensor) else a[k]) for k in a}


class CFGDenoiser:
    """uncond + scale * (cond - uncond), evaluated in one batched model call.

    `cond` and `uncond` map UNet keyword names to tensors with a batch of one (per prompt, repeated
    to the latent batch) or of the latent batch (per image). With scale 1 only the conditional
    pass runs.
    """

    def __init__(self, denoiser: Denoiser, cond: dict, uncond: dict, scale: float):
        self.denoiser = denoiser
        self.cond = cond
        self.uncond = uncond
        self.scale = scale

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        cond = _fit_batch(self.cond, batch)
        if self.scale == 1.0:
            return self.denoiser(x, sigma, **cond)
        uncond = _fit_batch(self.uncond, batch)
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **_cat_conds(cond, uncond))
        denoised_cond, denoised_uncond = both.chunk(2)
        return denoised_uncond + (denoised_cond - denoised_uncond) * self.scale

