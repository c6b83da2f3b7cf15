"""Noise samplers: `noise_sampler(sigma, sigma_next) -> Tensor` shaped like the latents.

Ancestral samplers take fresh noise each step; where it comes from decides reproducibility, so
it is always an explicit option. `rng_noise_sampler` draws from the seeded per-image generators
(what AUTOMATIC1111 does for ancestral samplers); `BrownianTreeNoiseSampler` gives SDE samplers
noise that depends on the sigma interval only, so changing the step count changes little.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchsde

from modules.sampling.rng import ImageRNG

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_noise_sampler(x: torch.Tensor) -> NoiseSampler:
    """Unseeded noise (torch's global generator): only for callers that do not care to reproduce."""
    return lambda sigma, sigma_next: torch.randn_like(x)


def rng_noise_sampler(rng: ImageRNG) -> NoiseSampler:
    """Each call draws the next noise from the image generators of `rng` (after `rng.first()`)."""
    return lambda sigma, sigma_next: rng.next()


class BrownianTreeNoiseSampler:
    """Brownian motion W(sigma) per image, seeded per image: noise = (W(s1) - W(s0)) / sqrt(|s1 - s0|).

    One torchsde Brownian tree per seed, built on the CPU so results do not depend on the device.
    """

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seeds: list[int]):
        if len(seeds) != x.shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for a batch of {x.shape[0]}")
        # torchsde rounds the tree's ends to its tolerance; a small margin keeps every schedule
        # sigma (whatever dtype it went through) inside, so no query is clipped
        t0, t1 = float(sigma_min), float(sigma_max)
        t0, t1 = max(t0 - 1e-4, t0 / 2), t1 + 1e-4
        w0 = torch.zeros(x.shape[1:], dtype=torch.float64)
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(seed)) for seed in seeds]
        self.device, self.dtype = x.device, x.dtype

    def __call__(self, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
        """Callers that pass host floats (not device tensors) spare the host a wait for the GPU."""
        s0, s1 = float(sigma), float(sigma_next)
        lo, hi = min(s0, s1), max(s0, s1)
        sign = 1.0 if s1 > s0 else -1.0
        w = torch.stack([tree(lo, hi) for tree in self.trees])
        noise = (w * sign / abs(hi - lo) ** 0.5).to(self.dtype)
        if self.device.type != "cuda":
            return noise.to(self.device)
        # From pinned memory the copy runs in the background; a plain copy would make the host wait.
        return noise.pin_memory().to(self.device, non_blocking=True)


def brownian_tree_noise_sampler(x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]) -> BrownianTreeNoiseSampler:
    """The tree spans the schedule's nonzero range, as AUTOMATIC1111 builds it for SDE samplers."""
    positive = sigmas[sigmas > 0]
    return BrownianTreeNoiseSampler(x, float(positive.min()), float(sigmas.max()), seeds)
