"""Sigma schedules: pure functions from a step count (and the model's noise range) to descending sigmas ending in 0.

Names and labels are AUTOMATIC1111's (`modules/sd_schedulers.py`); the UI lists `schedule_labels()`.
Every registered function has one signature, `fn(n, inputs) -> Tensor` of n + 1 values (fewer
only for `Beta`, which drops repeated timesteps), so callers need not know which schedule uses what.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import betaincinv  # scipy comes with torchsde; torch has no inverse incomplete beta

from modules.sampling.denoisers import DiscreteSchedule

# Published Align Your Steps tables (NVIDIA, Sabour et al. 2024), 10 steps + final sigma_min.
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)
BETA_ALPHA = 0.6  # A1111's default `beta_dist_alpha` / `beta_dist_beta`
BETA_BETA = 0.6


@dataclass(frozen=True)
class ScheduleInputs:
    """What a schedule may use: the model's discrete schedule and sigma range, and its family."""

    schedule: DiscreteSchedule
    sigma_min: float
    sigma_max: float
    is_sdxl: bool = False


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def uniform_schedule(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """Timesteps evenly spaced from the last to the first: the model's own default schedule."""
    t = torch.linspace(len(schedule.sigmas) - 1, 0, n)
    return append_zero(schedule.t_to_sigma(t))


def karras_schedule(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_schedule(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential_schedule(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """log sigma follows a polynomial ramp of degree rho (rho 1 = exponential)."""
    ramp = torch.linspace(1, 0, n) ** rho
    return append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def timestep_range_schedule(n: int, schedule: DiscreteSchedule, sigma_min: float, sigma_max: float,
                            drop_last: bool) -> torch.Tensor:
    """Timesteps evenly spaced between those of sigma_max and sigma_min (`Normal`; `SGM Uniform` drops the last)."""
    start = schedule.sigma_to_t(torch.tensor(sigma_max))
    end = schedule.sigma_to_t(torch.tensor(sigma_min))
    t = torch.linspace(float(start), float(end), n + 1)[:-1] if drop_last else torch.linspace(float(start), float(end), n)
    return append_zero(schedule.t_to_sigma(t))


def kl_optimal_schedule(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in arctan(sigma) (Sabour et al. 2024's KL-optimal schedule).

    n sigmas from sigma_max to sigma_min and then 0, like every other schedule here (AUTOMATIC1111's
    version returns n + 1 values ending at sigma_min, leaving that noise in the result).
    """
    step = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    alpha_min, alpha_max = math.atan(sigma_min), math.atan(sigma_max)
    return append_zero(torch.tan(step * alpha_min + (1 - step) * alpha_max).float())


def loglinear_interp(values: tuple[float, ...], num: int) -> np.ndarray:
    """Resample a decreasing sequence to `num` points, linearly in log space."""
    xs = np.linspace(0, 1, len(values))
    ys = np.log(np.asarray(values)[::-1])
    return np.exp(np.interp(np.linspace(0, 1, num), xs, ys))[::-1].copy()


def align_your_steps_schedule(n: int, is_sdxl: bool) -> torch.Tensor:
    """The published AYS table for the family, resampled to n values then 0 (as AUTOMATIC1111 does)."""
    table = AYS_SDXL if is_sdxl else AYS_SD15
    values = np.asarray(table) if n == len(table) else loglinear_interp(table, n)
    return append_zero(torch.tensor(values, dtype=torch.float32))


def simple_schedule(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """Every len/n-th training sigma from the top."""
    stride = len(schedule.sigmas) / n
    return append_zero(torch.stack([schedule.sigmas[-(1 + int(i * stride))] for i in range(n)]).float())


def ddim_schedule(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """DDIM's uniform timesteps 1, 1 + c, 1 + 2c, ... with c = 1000 // n, reversed."""
    stride = max(len(schedule.sigmas) // n, 1)
    picked = schedule.sigmas[1::stride]
    return append_zero(picked.flip(0).float())


def beta_schedule(n: int, schedule: DiscreteSchedule, alpha: float = BETA_ALPHA, beta: float = BETA_BETA) -> torch.Tensor:
    """Lee et al. (2024) "Beta Sampling is All You Need": timesteps at Beta(alpha, beta) quantiles.

    Works in timestep space (AUTOMATIC1111's development branch and ComfyUI), dropping repeats.
    """
    total = len(schedule.sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, n, endpoint=False)
    timesteps = np.rint(betaincinv(alpha, beta, quantiles) * total).astype(int)
    unique = [t for i, t in enumerate(timesteps) if i == 0 or t != timesteps[i - 1]]
    return append_zero(schedule.sigmas[torch.tensor(unique)].float())


ScheduleFn = Callable[[int, ScheduleInputs], torch.Tensor]


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    label: str
    function: ScheduleFn | None  # None: `Automatic`, resolved by the sampler
    aliases: tuple[str, ...] = ()


SCHEDULE_SPECS: tuple[ScheduleSpec, ...] = (
    ScheduleSpec("automatic", "Automatic", None),
    ScheduleSpec("uniform", "Uniform", lambda n, m: uniform_schedule(n, m.schedule)),
    ScheduleSpec("karras", "Karras", lambda n, m: karras_schedule(n, m.sigma_min, m.sigma_max)),
    ScheduleSpec("exponential", "Exponential", lambda n, m: exponential_schedule(n, m.sigma_min, m.sigma_max)),
    ScheduleSpec("polyexponential", "Polyexponential",
                 lambda n, m: polyexponential_schedule(n, m.sigma_min, m.sigma_max)),
    ScheduleSpec("sgm_uniform", "SGM Uniform",
                 lambda n, m: timestep_range_schedule(n, m.schedule, m.sigma_min, m.sigma_max, drop_last=True),
                 aliases=("SGMUniform",)),
    ScheduleSpec("kl_optimal", "KL Optimal", lambda n, m: kl_optimal_schedule(n, m.sigma_min, m.sigma_max)),
    ScheduleSpec("align_your_steps", "Align Your Steps", lambda n, m: align_your_steps_schedule(n, m.is_sdxl)),
    ScheduleSpec("simple", "Simple", lambda n, m: simple_schedule(n, m.schedule)),
    ScheduleSpec("normal", "Normal",
                 lambda n, m: timestep_range_schedule(n, m.schedule, m.sigma_min, m.sigma_max, drop_last=False)),
    ScheduleSpec("ddim", "DDIM", lambda n, m: ddim_schedule(n, m.schedule)),
    ScheduleSpec("beta", "Beta", lambda n, m: beta_schedule(n, m.schedule)),
)


def _index(specs: tuple[ScheduleSpec, ...]) -> dict[str, ScheduleSpec]:
    index: dict[str, ScheduleSpec] = {}
    for spec in specs:
        for key in (spec.name, spec.label, *spec.aliases):
            if index.get(key.lower(), spec) is not spec:
                raise ValueError(f"duplicate schedule name {key!r}")
            index[key.lower()] = spec
    return index


SCHEDULES: dict[str, ScheduleSpec] = _index(SCHEDULE_SPECS)


class UnknownScheduleError(ValueError):
    pass


def schedule_labels() -> list[str]:
    return [spec.label for spec in SCHEDULE_SPECS]


def find_schedule(name: str | None) -> ScheduleSpec:
    """By label, name or alias, case-insensitive; empty means `Automatic`."""
    spec = SCHEDULES.get((name or "automatic").strip().lower())
    if spec is None:
        raise UnknownScheduleError(f"unknown schedule type {name!r}; choose one of: {', '.join(schedule_labels())}")
    return spec
