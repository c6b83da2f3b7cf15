"""Sigma schedules: pure functions from a step count (and the model's range) to descending sigmas ending in 0."""

from __future__ import annotations

import torch

from modules.sampling.denoisers import DiscreteSchedule


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def uniform_schedule(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """Timesteps evenly spaced from the last to the first: the model's own default schedule."""
    t = torch.linspace(len(schedule.sigmas) - 1, 0, n)
    return append_zero(schedule.t_to_sigma(t))
