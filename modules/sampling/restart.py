"""Restart sampling (Xu et al. 2023), as AUTOMATIC1111's `restart_sampler`.

Heun steps down a Karras schedule; at sigma ~0.1 the sampler jumps back up to sigma ~2 with fresh
noise and descends again, `restart_times` times. With 20+ steps the restart segments come out of
the step budget (the main schedule is rebuilt shorter); below 20 steps it is plain Heun.
"""

from __future__ import annotations

import torch

from modules.sampling.noise import NoiseSampler, default_noise_sampler
from modules.sampling.samplers import report, to_d
from modules.sampling.schedules import karras_schedule


def restart_plan(sigmas: torch.Tensor, restart_list: dict | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (sigma_from, sigma_to) pairs to walk, restarts included.

    restart_list: {min_sigma: [restart_steps, restart_times, max_sigma]}; None chooses as A1111 does.
    """
    steps = len(sigmas) - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = karras_schedule(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0]))
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    by_index = {int(torch.argmin((sigmas - key).abs())): value for key, value in restart_list.items()}
    plan = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in by_index:
            restart_steps, restart_times, restart_max = by_index[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin((sigmas - restart_max).abs()))
            if max_idx < min_idx:
                segment = karras_schedule(restart_steps, float(sigmas[min_idx]), float(sigmas[max_idx]))[:-1]
                for _ in range(restart_times):
                    plan.extend(zip(segment[:-1], segment[1:]))
    return plan


@torch.no_grad()
def sample_restart(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                   restart_list=None, noise_sampler: NoiseSampler | None = None):
    extra_args = extra_args or {}
    noise = noise_sampler or default_noise_sampler(x)
    s_in = x.new_ones([x.shape[0]])
    last_sigma = None
    for step, (old_sigma, new_sigma) in enumerate(restart_plan(sigmas, restart_list)):
        if last_sigma is not None and last_sigma < old_sigma:  # a restart: climb back up with fresh noise
            x = x + noise(last_sigma, old_sigma) * s_noise * (old_sigma ** 2 - last_sigma ** 2) ** 0.5
        denoised = model(x, old_sigma * s_in, **extra_args)
        d = to_d(x, old_sigma, denoised)
        report(callback, x, step, new_sigma, old_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, new_sigma, model(x_2, new_sigma * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
        last_sigma = new_sigma
    return x
