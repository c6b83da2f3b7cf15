"""Samplers: pure functions with k-diffusion's calling convention.

    sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, **options) -> x

`model(x, sigma, **extra_args)` returns the denoised x0; `sigmas` ends with 0. The callback gets
{"x", "i", "sigma", "sigma_hat", "denoised"} after every step; raising from it stops sampling.
"""

from __future__ import annotations

import torch


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE derivative dx/dsigma at (x, sigma)."""
    return (x - denoised) / sigma.view(-1, *([1] * (x.ndim - 1)))


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, noise_sampler=None):
    """Karras et al. (2022) Algorithm 2 (Euler), with optional churn."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            eps = noise_sampler(sigma, sigmas[i + 1]) if noise_sampler else torch.randn_like(x)
            x = x + eps * s_noise * (sigma_hat ** 2 - sigma ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat * s_in, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x
