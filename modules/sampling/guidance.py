"""Classifier-free guidance as a wrapper around a denoiser: samplers never know it exists."""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[..., torch.Tensor]


def _repeat_cond(cond: dict, times: int) -> dict:
    return {k: (v.repeat(times, *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) else v) for k, v in cond.items()}


def _cat_conds(a: dict, b: dict) -> dict:
    return {k: (torch.cat([a[k], b[k]]) if isinstance(a[k], torch.Tensor) else a[k]) for k in a}


class CFGDenoiser:
    """uncond + scale * (cond - uncond), evaluated in one batched model call.

    `cond` and `uncond` map UNet keyword names to tensors with a batch size of one prompt; they
    are repeated to the latent batch. With scale 1 only the conditional pass runs.
    """

    def __init__(self, denoiser: Denoiser, cond: dict, uncond: dict, scale: float):
        self.denoiser = denoiser
        self.cond = cond
        self.uncond = uncond
        self.scale = scale

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        cond = _repeat_cond(self.cond, batch) if _batch_of(self.cond) != batch else self.cond
        if self.scale == 1.0:
            return self.denoiser(x, sigma, **cond)
        uncond = _repeat_cond(self.uncond, batch) if _batch_of(self.uncond) != batch else self.uncond
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **_cat_conds(cond, uncond))
        denoised_cond, denoised_uncond = both.chunk(2)
        return denoised_uncond + (denoised_cond - denoised_uncond) * self.scale


def _batch_of(cond: dict) -> int:
    for v in cond.values():
        if isinstance(v, torch.Tensor):
            return v.shape[0]
    return 1
