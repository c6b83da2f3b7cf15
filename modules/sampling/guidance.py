"""Classifier-free guidance as a wrapper around a denoiser: samplers never know it exists.

    denoised = uncond + sum_i w_i * scale * (cond_i - uncond)

One cond with weight 1 is plain CFG; several are AND-prompts (`a AND b:0.5`). Cond and uncond run
in one batched model call when their tensors have the same shapes (separate calls otherwise, e.g.
prompts of different token lengths). With a single cond at scale 1 the unconditional pass is
skipped.

Two optional callables let the caller act inside each call: `before_model` sees (and may replace)
what the model is about to evaluate, `after_cfg` sees the combined x0 and may replace it
(thresholding does). The guider keeps the unconditional x0 of its latest call in `last_uncond`
(None when that pass was skipped), which CFG++ samplers are given explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Denoiser = Callable[..., torch.Tensor]
Cond = dict  # UNet keyword name -> tensor (batch 1 per prompt, or the latent batch) or plain value
WeightedConds = list[tuple[Cond, float]]


@dataclass
class GuidanceInputs:
    """What one guided call is about to evaluate; `before_model` may replace any field."""

    x: torch.Tensor
    sigma: torch.Tensor
    conds: WeightedConds
    uncond: Cond


@dataclass
class GuidedPrediction:
    """One guided call's result. `denoised` (the combined x0) may be replaced by `after_cfg`; the
    per-prompt x0 estimates it was combined from are there to read."""

    denoised: torch.Tensor
    x: torch.Tensor
    sigma: torch.Tensor
    uncond: torch.Tensor | None  # None when the unconditional pass was skipped (scale 1)
    conds: list[torch.Tensor]
    weights: list[float]


BeforeModel = Callable[[GuidanceInputs], None]
AfterCfg = Callable[[GuidedPrediction], None]


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
    (it computes what depends on them only once, see modules/accel/context_projections.py)."""
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


class CFGDenoiser:
    """`D(x, sigma) -> guided x0` from a conditional denoiser, one or more conds, an uncond and a scale.

    `cond` is a dict (one prompt) or a list of (dict, weight) pairs (AND-prompts).
    """

    def __init__(self, denoiser: Denoiser, cond: Cond | WeightedConds, uncond: Cond, scale: float, *,
                 before_model: BeforeModel | None = None, after_cfg: AfterCfg | None = None):
        self.denoiser = denoiser
        self.conds: WeightedConds = [(cond, 1.0)] if isinstance(cond, dict) else list(cond)
        if not self.conds:
            raise ValueError("need at least one cond")
        self.uncond = uncond
        self.scale = scale
        self.before_model = before_model
        self.after_cfg = after_cfg
        self.last_uncond: torch.Tensor | None = None
        self._memo: dict = {}  # evaluate_conds' prepared conds; this guider's conds never change

    def _inputs(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[GuidanceInputs, dict | None]:
        """The call's inputs after `before_model`, and the memo to use: none once it swapped a cond."""
        inputs = GuidanceInputs(x, sigma, self.conds, self.uncond)
        if self.before_model is None:
            return inputs, self._memo
        self.before_model(inputs)
        unchanged = inputs.conds is self.conds and inputs.uncond is self.uncond
        return inputs, self._memo if unchanged else None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        inputs, memo = self._inputs(x, sigma)
        weights = [w for _, w in inputs.conds]
        if self.scale == 1.0 and len(inputs.conds) == 1 and weights[0] == 1.0:
            uncond = None
            (denoised,) = conds = evaluate_conds(self.denoiser, inputs.x, inputs.sigma, [inputs.conds[0][0]], memo)
        else:
            *conds, uncond = evaluate_conds(self.denoiser, inputs.x, inputs.sigma,
                                            [c for c, _ in inputs.conds] + [inputs.uncond], memo)
            denoised = combine(uncond, conds, weights, self.scale)
        self.last_uncond = uncond
        if self.after_cfg is None:
            return denoised
        prediction = GuidedPrediction(denoised, inputs.x, inputs.sigma, uncond, conds, weights)
        self.after_cfg(prediction)
        return prediction.denoised
