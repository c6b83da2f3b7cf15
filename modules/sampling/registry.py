"""Sampler registry: the names users pick, mapped to frozen specs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from modules.sampling import samplers


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    function: Callable
    aliases: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)


def _register(*specs: SamplerSpec) -> dict[str, SamplerSpec]:
    registry: dict[str, SamplerSpec] = {}
    for spec in specs:
        for key in (spec.name, *spec.aliases):
            if key.lower() in registry:
                raise ValueError(f"duplicate sampler name {key!r}")
            registry[key.lower()] = spec
    return registry


SAMPLERS = _register(
    SamplerSpec("Euler", samplers.sample_euler, aliases=("k_euler",)),
)


class UnknownSamplerError(ValueError):
    pass


def sampler_names() -> list[str]:
    return list(dict.fromkeys(spec.name for spec in SAMPLERS.values()))


def find_sampler(name: str) -> SamplerSpec:
    spec = SAMPLERS.get(name.strip().lower())
    if spec is None:
        raise UnknownSamplerError(f"unknown sampler {name!r}; choose one of: {', '.join(sampler_names())}")
    return spec
