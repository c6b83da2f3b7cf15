"""Classifier-free guidance as a wrapper around a denoiser: samplers never know it exists.

    denoised = uncond + sum_i w_i * scale * (cond_i - uncond)

One cond with weight 1 is plain CFG; several are AND-prompts (`a AND b:0.5`). Cond and uncond run
in one batched model call when their tensors have the same shapes (separate calls otherwise, e.g.
prompts of different token lengths). With a single cond at scale 1 the unconditional pass is
skipped. Thresholding (thresholding.py) is applied to the guided x0.

For CFG++ samplers the guider keeps the unconditional x0 of its latest call in `last_uncond`
(None when that pass was skipped); `timestep_samplers.last_uncond_denoised` reads it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from modules.sampling.thresholding import Thresholding, dynamic_threshold, mimic_scale_threshold, static_threshold

Denoiser = Callable[..., torch.Tensor]
Cond = dict  # UNet keyword name -> tensor (batch 1 per prompt, or the latent batch) or plain value


def _fit_batch(cond: Cond, batch: int) -> Cond:
    """Repeat per-prompt tensors (batch 1) to the latent batch; per-image tensors pass unchanged."""
    return {k: (v.repeat(batch, *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) and v.shape[0] != batch else v)
            for k, v in cond.items()}


def _batchable(conds: list[Cond]) -> bool:
    """True when every cond has the same keys, tensor shapes and plain values, so they can be concatenated."""
    first = conds[0]
    for other in conds[1:]:
        if other.keys() != first.keys():
            return False
        for k, v in first.items():
            w = other[k]
            if isinstance(v, torch.Tensor) != isinstance(w, torch.Tensor):
                return False
            if isinstance(v, torch.Tensor) and v.shape != w.shape:
                return False
            if not isinstance(v, torch.Tensor) and v != w:
                return False
    return True


def _cat_conds(conds: list[Cond]) -> Cond:
    return {k: (torch.cat([c[k] for c in conds]) if isinstance(v, torch.Tensor) else v) for k, v in conds[0].items()}


def _prepared(conds: list[Cond], batch: int) -> tuple[bool, list[Cond]]:
    """(batched, conds fitted to the batch; one concatenated cond when batched)."""
    fitted = [_fit_batch(c, batch) for c in conds]
    if len(fitted) > 1 and _batchable(fitted):
        return True, [_cat_conds(fitted)]
    return False, fitted


def evaluate_conds(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, conds: list[Cond],
                   memo: dict | None = None) -> list[torch.Tensor]:
    """x0 for each cond: one batched call if shapes allow, else one call per cond. `memo` keeps the
    prepared conds between calls with the same conds, so the model sees the same tensors at every step
    (it computes what depends on them only once, see modules/context_projections.py)."""
    batch = x.shape[0]
    key = (batch, len(conds))
    if memo is not None and key in memo:
        batched, prepared = memo[key]
    else:
        batched, prepared = _prepared(conds, batch)
        if memo is not None:
            memo[key] = (batched, prepared)
    if batched:
        n = len(conds)
        out = denoiser(torch.cat([x] * n), torch.cat([sigma] * n), **prepared[0])
        return list(out.chunk(n))
    return [denoiser(x, sigma, **c) for c in prepared]


def combine(uncond: torch.Tensor, conds: list[torch.Tensor], weights: list[float], scale: float) -> torch.Tensor:
    return uncond + sum(w * scale * (c - uncond) for c, w in zip(conds, weights))


def apply_thresholding(guided: torch.Tensor, thresholding: Thresholding, uncond: torch.Tensor | None,
                       conds: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    if thresholding.mode == "static":
        return static_threshold(guided, thresholding.threshold)
    if thresholding.mode == "dynamic":
        return dynamic_threshold(guided, thresholding.percentile, thresholding.latent_range)
    if thresholding.mode == "mimic" and uncond is not None:
        mimic = combine(uncond, conds, weights, thresholding.mimic_scale)
        return mimic_scale_threshold(guided, mimic, thresholding.percentile)
    return guided


class CFGDenoiser:
    """`D(x, sigma) -> guided x0` from a conditional denoiser, one or more conds, an uncond and a scale.

    `cond` is a dict (one prompt) or a list of (dict, weight) pairs (AND-prompts).
    """

    def __init__(self, denoiser: Denoiser, cond: Cond | list[tuple[Cond, float]], uncond: Cond, scale: float,
                 thresholding: Thresholding | None = None):
        self.denoiser = denoiser
        self.conds: list[tuple[Cond, float]] = [(cond, 1.0)] if isinstance(cond, dict) else list(cond)
        if not self.conds:
            raise ValueError("need at least one cond")
        self.uncond = uncond
        self.scale = scale
        self.thresholding = thresholding or Thresholding()
        self.last_uncond: torch.Tensor | None = None
        self._memo: dict = {}  # evaluate_conds' prepared conds; this guider's conds never change

    def _skips_uncond(self) -> bool:
        return self.scale == 1.0 and len(self.conds) == 1 and self.conds[0][1] == 1.0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        weights = [w for _, w in self.conds]
        if self._skips_uncond():
            self.last_uncond = None
            (denoised,) = evaluate_conds(self.denoiser, x, sigma, [self.conds[0][0]], self._memo)
            return apply_thresholding(denoised, self.thresholding, None, [denoised], weights)
        *conds, uncond = evaluate_conds(self.denoiser, x, sigma, [c for c, _ in self.conds] + [self.uncond],
                                        self._memo)
        self.last_uncond = uncond
        guided = combine(uncond, conds, weights, self.scale)
        return apply_thresholding(guided, self.thresholding, uncond, conds, weights)
