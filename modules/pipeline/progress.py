"""What a sampling run tells whoever runs it, one step at a time, and how that caller stops it.

The pipeline hands each step to one `StepReporter`: the service's per-job reporter records
progress, makes live previews and, when the job was interrupted or skipped, raises
`SamplingInterrupted`, after which the sampling run returns the latents it has (as today).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from modules.sampling.samplers import SamplingInterrupted


@dataclass(frozen=True)
class SamplingStep:
    """Step `index` (0-based) of `total` in one sampling pass, with the current estimate of the result."""

    index: int
    total: int
    denoised: torch.Tensor  # the x0 estimate: [batch, latent channels, h, w] latents

    @property
    def is_last(self) -> bool:
        return self.index >= self.total - 1


StepReporter = Callable[[SamplingStep], None]

__all__ = ["SamplingInterrupted", "SamplingStep", "StepReporter"]
