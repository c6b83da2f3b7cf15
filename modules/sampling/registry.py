"""Sampler registry: the names users pick (AUTOMATIC1111's labels and aliases), mapped to frozen specs.

Also the two decisions that depend on sampler and schedule together: which schedule `Automatic`
means (`sigmas_for`), and which noise an ancestral/SDE sampler draws (`noise_sampler_for`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from modules.sampling.rng import ImageRNG
from modules.sampling import dpm_solver, restart, samplers, timestep_samplers
from modules.sampling.denoisers import DiscreteSchedule
from modules.sampling.noise import NoiseSampler, brownian_tree_noise_sampler, rng_noise_sampler
from modules.sampling.schedules import SCHEDULE_SPECS, ScheduleInputs, find_schedule, uniform_schedule


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    function: Callable
    aliases: tuple[str, ...] = ()
    default_schedule: str | None = None  # what `Automatic` means; None: the model's uniform schedule
    second_order: bool = False  # two model evaluations per step
    brownian_noise: bool = False  # SDE sampler: wants a seeded Brownian tree as its noise sampler
    uses_ensd: bool = False  # A1111 writes the eta noise seed delta into the infotext for these
    discard_next_to_last_sigma: bool = False
    needs_uncond: bool = False  # is given the guider's unconditional x0 as `uncond_denoised` (CFG++)
    options: dict = field(default_factory=dict)  # fixed keyword options (e.g. solver_type)

    def accepted_options(self) -> set[str]:
        return set(inspect.signature(self.function).parameters) - {"model", "x", "sigmas", "extra_args", "callback",
                                                                  "disable"}


SAMPLER_SPECS: tuple[SamplerSpec, ...] = (
    # k-diffusion samplers, in AUTOMATIC1111's order (its UI default first)
    SamplerSpec("DPM++ 2M", samplers.sample_dpmpp_2m, ("k_dpmpp_2m",), "karras"),
    SamplerSpec("DPM++ SDE", samplers.sample_dpmpp_sde, ("k_dpmpp_sde",), "karras",
                second_order=True, brownian_noise=True),
    SamplerSpec("DPM++ 2M SDE", samplers.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde",), "exponential",
                brownian_noise=True),
    SamplerSpec("DPM++ 2M SDE Heun", samplers.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde_heun",), "exponential",
                brownian_noise=True, options={"solver_type": "heun"}),
    SamplerSpec("DPM++ 2S a", samplers.sample_dpmpp_2s_ancestral, ("k_dpmpp_2s_a",), "karras",
                second_order=True, uses_ensd=True),
    SamplerSpec("DPM++ 3M SDE", samplers.sample_dpmpp_3m_sde, ("k_dpmpp_3m_sde",), "exponential",
                brownian_noise=True, discard_next_to_last_sigma=True),
    SamplerSpec("Euler a", samplers.sample_euler_ancestral, ("k_euler_a", "k_euler_ancestral"), uses_ensd=True),
    SamplerSpec("Euler", samplers.sample_euler, ("k_euler",)),
    SamplerSpec("LMS", samplers.sample_lms, ("k_lms",)),
    SamplerSpec("Heun", samplers.sample_heun, ("k_heun",), second_order=True),
    SamplerSpec("DPM2", samplers.sample_dpm_2, ("k_dpm_2",), "karras",
                second_order=True, discard_next_to_last_sigma=True),
    SamplerSpec("DPM2 a", samplers.sample_dpm_2_ancestral, ("k_dpm_2_a",), "karras",
                second_order=True, uses_ensd=True, discard_next_to_last_sigma=True),
    SamplerSpec("DPM fast", dpm_solver.sample_dpm_fast, ("k_dpm_fast",), uses_ensd=True),
    SamplerSpec("DPM adaptive", dpm_solver.sample_dpm_adaptive, ("k_dpm_ad",), uses_ensd=True),
    SamplerSpec("Restart", restart.sample_restart, ("restart",), "karras", second_order=True),
    # timestep samplers: `Automatic` gives DDIM's timesteps, which A1111 always uses for them
    SamplerSpec("DDIM", timestep_samplers.sample_ddim, ("ddim",), "ddim", uses_ensd=True),
    SamplerSpec("DDIM CFG++", timestep_samplers.sample_ddim_cfgpp, ("ddim_cfgpp",), "ddim",
                uses_ensd=True, needs_uncond=True),
    SamplerSpec("PLMS", timestep_samplers.sample_plms, ("plms",), "ddim"),
    SamplerSpec("UniPC", timestep_samplers.sample_unipc, ("unipc",)),
    SamplerSpec("LCM", samplers.sample_lcm, ("k_lcm",)),
    SamplerSpec("DDPM", timestep_samplers.sample_ddpm, ("ddpm",)),
)


def _index(specs: tuple[SamplerSpec, ...]) -> dict[str, SamplerSpec]:
    registry: dict[str, SamplerSpec] = {}
    for spec in specs:
        for key in (spec.name, *spec.aliases):
            if registry.get(key.lower(), spec) is not spec:
                raise ValueError(f"duplicate sampler name {key!r}")
            registry[key.lower()] = spec
    return registry


SAMPLERS: dict[str, SamplerSpec] = _index(SAMPLER_SPECS)


class UnknownSamplerError(ValueError):
    pass


def sampler_names() -> list[str]:
    return [spec.name for spec in SAMPLER_SPECS]


def split_sampler_and_schedule(name: str, schedule_name: str | None = None) -> tuple[SamplerSpec, str]:
    """("DPM++ 2M Karras") -> (DPM++ 2M spec, "Karras"); a plain sampler name keeps `schedule_name`.

    A legacy combined name ends with a schedule's label, name or alias after a space; that suffix
    wins over `schedule_name`. The schedule comes back as its label ("Automatic" when none).
    """
    key = name.strip()
    spec = SAMPLERS.get(key.lower())
    if spec is not None:
        return spec, find_schedule(schedule_name).label
    for schedule in SCHEDULE_SPECS:
        for suffix in (schedule.label, schedule.name, *schedule.aliases):
            if key.lower().endswith(" " + suffix.lower()):
                spec = SAMPLERS.get(key[: -len(suffix) - 1].strip().lower())
                if spec is not None:
                    return spec, schedule.label
    raise UnknownSamplerError(f"unknown sampler {name!r}; choose one of: {', '.join(sampler_names())}")


def find_sampler(name: str) -> SamplerSpec:
    """By name or alias, case-insensitive; legacy combined names ("DPM++ 2M Karras") give their sampler."""
    return split_sampler_and_schedule(name)[0]


def resolve_schedule_name(spec: SamplerSpec, schedule_name: str | None) -> str | None:
    """The schedule's registry name; `Automatic` becomes the sampler's default (None: model uniform)."""
    schedule = find_schedule(schedule_name)
    return spec.default_schedule if schedule.function is None else schedule.name


def sigmas_for(spec: SamplerSpec, schedule_name: str | None, steps: int, schedule: DiscreteSchedule,
               is_sdxl: bool = False, *, always_discard_next_to_last_sigma: bool = False,
               reduce_second_order_steps: bool = False) -> torch.Tensor:
    """The sigmas a sampler runs for `steps` steps under a schedule type, as AUTOMATIC1111 builds them.

    Samplers that discard the next-to-last sigma get steps + 1 sigmas and lose that one, so the
    step count stays `steps`. `reduce_second_order_steps` (off, as A1111's default) halves the steps
    of second-order samplers so the number of model evaluations stays near `steps`.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if reduce_second_order_steps and spec.second_order:
        steps = max(1, math.ceil(steps / 2))
    discard = spec.discard_next_to_last_sigma or always_discard_next_to_last_sigma
    n = steps + 1 if discard else steps
    name = resolve_schedule_name(spec, schedule_name)
    if name is None:
        sigmas = uniform_schedule(n, schedule)
    else:
        inputs = ScheduleInputs(schedule, float(schedule.sigma_min), float(schedule.sigma_max), is_sdxl)
        sigmas = find_schedule(name).function(n, inputs)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.float()


def noise_sampler_for(spec: SamplerSpec, x: torch.Tensor, sigmas: torch.Tensor, rng: ImageRNG,
                      seeds: list[int]) -> NoiseSampler:
    """Brownian tree seeded per image for SDE samplers, else the image generators of `rng`."""
    if spec.brownian_noise:
        return brownian_tree_noise_sampler(x, sigmas, seeds)
    return rng_noise_sampler(rng)


def run_sampler(spec: SamplerSpec, model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                callback=None, noise_sampler: NoiseSampler | None = None, **options) -> torch.Tensor:
    """Call the sampler with its fixed options plus those of `options` it accepts (others are ignored,
    as AUTOMATIC1111 passes s_churn/eta/... only to samplers that take them); None values are dropped."""
    accepted = spec.accepted_options()
    chosen = {k: v for k, v in options.items() if k in accepted and v is not None}
    return spec.function(model, x, sigmas, extra_args=extra_args, callback=callback,
                         noise_sampler=noise_sampler, **{**chosen, **spec.options})
