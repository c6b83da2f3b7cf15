"""Samplers from the discrete-timestep (variance-preserving) papers: DDPM, DDIM, DDIM CFG++, PLMS, UniPC.

They keep k-diffusion's calling convention (model returns x0, `x` is scaled to sigma). A sigma of
the discrete schedule fixes its timestep's alpha_bar exactly, alpha_bar = 1 / (1 + sigma^2), and
x_vp = sqrt(alpha_bar) * x, so each update is computed from the sigmas alone: the model's
schedule enters through the sigma schedule the caller builds (`DDIM` schedule = DDIM's timesteps).
Unlike AUTOMATIC1111's copies, the last step goes to sigma 0 (the clean estimate) instead of
stopping at the first training timestep.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from modules.sampling.noise import NoiseSampler, default_noise_sampler
from modules.sampling.samplers import report, to_d


def alpha_bar(sigma) -> float:
    return 1.0 / (1.0 + float(sigma) ** 2)


def _batch_sigma(sigma, x):
    return sigma * x.new_ones([x.shape[0]])


def _ddim_step(x, denoised, eps_direction, sigma, sigma_next, eta, noise):
    """Song et al. (2021) eq. 12 in VP space, returned in sigma scaling."""
    a_t, a_prev = alpha_bar(sigma), alpha_bar(sigma_next)
    s = eta * math.sqrt(max((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev), 0.0))
    x_vp = math.sqrt(a_prev) * denoised + math.sqrt(max(1 - a_prev - s ** 2, 0.0)) * eps_direction
    if s > 0:
        x_vp = x_vp + s * noise(sigma, sigma_next)
    return x_vp / math.sqrt(a_prev)


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=0.0,
                noise_sampler: NoiseSampler | None = None):
    """DDIM; eta 0 is deterministic, eta 1 has DDPM's posterior variance."""
    extra_args = extra_args or {}
    noise = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch_sigma(sigmas[i], x), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        eps = to_d(x, sigmas[i], denoised)
        x = _ddim_step(x, denoised, eps, sigmas[i], sigmas[i + 1], eta, noise)
    return x


@torch.no_grad()
def sample_ddim_cfgpp(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=0.0,
                      noise_sampler: NoiseSampler | None = None,
                      uncond_denoised: Callable[[], torch.Tensor | None] | None = None):
    """DDIM CFG++ (Chung et al. 2024): renoise along the *unconditional* noise estimate.

    `uncond_denoised()` gives the unconditional x0 of the model's latest call (the guider's, see
    guidance.py); where it gives None (no unconditional pass at scale 1) or is not given (a model
    without guidance), the model's output stands in. CFG++ is meant for small guidance scales (the
    paper's lambda in [0, 1]).
    """
    extra_args = extra_args or {}
    noise = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch_sigma(sigmas[i], x), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        uncond = uncond_denoised() if uncond_denoised is not None else None
        eps_uncond = to_d(x, sigmas[i], denoised if uncond is None else uncond)
        x = _ddim_step(x, denoised, eps_uncond, sigmas[i], sigmas[i + 1], eta, noise)
    return x


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None,
                noise_sampler: NoiseSampler | None = None):
    """Ho et al. (2020) Algorithm 2: x_{t-1} = (x_t - (1-a_t)/sqrt(1-abar_t) eps)/sqrt(a_t) + sigma_t z.

    a_t = abar_t / abar_{t-1} between consecutive schedule entries (with the full 1000-step
    `Uniform` schedule this is the original algorithm), sigma_t^2 = beta-tilde, the posterior variance.
    """
    extra_args = extra_args or {}
    noise = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch_sigma(sigmas[i], x), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        eps = to_d(x, sigmas[i], denoised)
        abar_t, abar_prev = alpha_bar(sigmas[i]), alpha_bar(sigmas[i + 1])
        a_t = abar_t / abar_prev
        x_vp = math.sqrt(abar_t) * x
        x_vp = (x_vp - (1 - a_t) / math.sqrt(1 - abar_t) * eps) / math.sqrt(a_t)
        variance = (1 - abar_prev) / (1 - abar_t) * (1 - a_t)
        if variance > 0:
            x_vp = x_vp + math.sqrt(variance) * noise(sigmas[i], sigmas[i + 1])
        x = x_vp / math.sqrt(abar_prev)
    return x


_ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@torch.no_grad()
def sample_plms(model, x, sigmas, extra_args=None, callback=None, disable=None,
                noise_sampler: NoiseSampler | None = None):
    """PLMS (Liu et al. 2022, PNDM): Adams-Bashforth on eps with DDIM's transfer; a Heun-like first step.

    The DDIM transfer with a combined eps' is x_next = x + (sigma_next - sigma) * eps' in sigma scaling.
    """
    extra_args = extra_args or {}
    old_eps: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, _batch_sigma(sigma, x), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        eps = to_d(x, sigma, denoised)
        if not old_eps and sigma_next > 0:
            x_euler = x + (sigma_next - sigma) * eps
            eps_next = to_d(x_euler, sigma_next, model(x_euler, _batch_sigma(sigma_next, x), **extra_args))
            eps_prime = (eps + eps_next) / 2
        else:
            history = [eps, *reversed(old_eps)]
            coeffs = _ADAMS_BASHFORTH[len(history)]
            eps_prime = sum(c * e for c, e in zip(coeffs, history))
        x = x + (sigma_next - sigma) * eps_prime
        old_eps = [*old_eps, eps][-3:]
    return x


def _unipc_update(x, model_prev, lambda_prev, sigma_prev, sigma_t, lambda_t, order, variant, model_fn):
    """One UniPC step (Zhao et al. 2023) with data prediction: predictor UniP-p, then corrector UniC-p.

    Works in sigma scaling, where the VP formulas lose their alpha factors. Returns the new x and the
    model output at the predicted point (reused as the next step's history: no extra evaluation),
    or None for the output when `model_fn` is None (no corrector on the last step).
    """
    h = lambda_t - lambda_prev[-1]
    m0 = model_prev[-1]
    rks, d1s = [], []
    for k in range(1, order):
        rk = (lambda_prev[-(k + 1)] - lambda_prev[-1]) / h
        rks.append(rk)
        d1s.append((model_prev[-(k + 1)] - m0) / rk)
    rks.append(1.0)
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rows, b, factorial = [], [], 1
    rks_t = torch.tensor(rks, dtype=torch.float64)
    for k in range(1, order + 1):
        rows.append(rks_t ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r_mat, b_vec = torch.stack(rows), torch.tensor(b, dtype=torch.float64)

    x_base = (sigma_t / sigma_prev) * x - h_phi_1 * m0
    if d1s:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1]).tolist()
        x_pred = x_base - b_h * sum(r * d for r, d in zip(rhos_p, d1s))
    else:
        x_pred = x_base
    if model_fn is None:
        return x_pred, None
    model_t = model_fn(x_pred)
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(r_mat, b_vec).tolist()
    corr = sum((r * d for r, d in zip(rhos_c[:-1], d1s)), torch.zeros_like(x))
    return x_base - b_h * (corr + rhos_c[-1] * (model_t - m0)), model_t


@torch.no_grad()
def sample_unipc(model, x, sigmas, extra_args=None, callback=None, disable=None, order=3, variant="bh1",
                 lower_order_final=True, noise_sampler: NoiseSampler | None = None):
    """UniPC multistep (AUTOMATIC1111's defaults: order 3, B(h) variant bh1, lower order at the end).

    The step to sigma 0 returns the latest x0 estimate (log-SNR time is infinite there).
    """
    if variant not in {"bh1", "bh2"}:
        raise ValueError("variant must be 'bh1' or 'bh2'")
    extra_args = extra_args or {}
    n = len(sigmas) - 1
    n_positive = n - 1 if float(sigmas[-1]) == 0 else n  # UniPC's own steps; the jump to 0 is extra

    def evaluate(x_at, sigma):
        return model(x_at, _batch_sigma(sigma, x_at), **extra_args)

    model_prev = [evaluate(x, sigmas[0])]
    lambda_prev = [-math.log(float(sigmas[0]))]
    report(callback, x, 0, sigmas[0], sigmas[0], model_prev[-1])
    for step in range(1, n + 1):
        sigma_t = float(sigmas[step])
        if sigma_t == 0:
            x = model_prev[-1]
            break
        step_order = min(order, step)
        if lower_order_final:
            step_order = max(min(step_order, n_positive + 1 - step), 1)
        last = step == n
        model_fn = None if last else (lambda x_at, s=sigmas[step]: evaluate(x_at, s))
        x, model_t = _unipc_update(x, model_prev, lambda_prev, float(sigmas[step - 1]), sigma_t,
                                   -math.log(sigma_t), step_order, variant, model_fn)
        if last:
            break
        model_prev = [*model_prev, model_t][-order:]
        lambda_prev = [*lambda_prev, -math.log(sigma_t)][-order:]
        report(callback, x, step, sigmas[step], sigmas[step], model_t)
    return x
