"""Samplers on the sigma (Karras) parametrisation: pure functions with k-diffusion's calling convention.

    sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, **options) -> x

`model(x, sigma, **extra_args)` returns the denoised x0; `sigmas` is descending and ends with 0;
`x` enters scaled to `sigmas[0]`. The algorithms follow crowsonkb/k-diffusion `sampling.py` (the
code AUTOMATIC1111 runs) and are written here rather than imported: the k-diffusion PyPI release
pulls wandb, clip, kornia and more, and AUTOMATIC1111 itself git-clones it.

Every sampler accepts `noise_sampler` (ignored by deterministic ones), so callers can always pass
the seeded one. The callback gets {"x", "i", "sigma", "sigma_hat", "denoised"} once per step; it
may raise `SamplingInterrupted` to stop: callers catch it and keep the last x they were given.
`disable` (a progress-bar switch in k-diffusion) is accepted for compatibility and unused.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from modules.sampling.noise import NoiseSampler, brownian_tree_noise_sampler, default_noise_sampler

StepCallback = Callable[[dict], None]


class SamplingInterrupted(Exception):
    """Raised by a step callback to stop sampling (interrupt or skip); the caller keeps the last x."""


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-sample (or scalar) values broadcast over a tensor of `ndim` dimensions."""
    v = torch.as_tensor(v)
    return v.reshape(-1, *([1] * (ndim - 1))) if v.ndim else v


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma at (x, sigma)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """Split a step into a deterministic part down to sigma_down and fresh noise of size sigma_up."""
    if not eta:
        return sigma_to, torch.zeros_like(torch.as_tensor(sigma_to))
    sigma_up = torch.minimum(torch.as_tensor(sigma_to),
                             eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _down_is_zero(sigma_from: float, sigma_to: float, eta: float) -> bool:
    """Whether an ancestral step's deterministic part ends at sigma 0, from host values (the same
    float32 arithmetic as get_ancestral_step on the device)."""
    sigma_down, _ = get_ancestral_step(torch.tensor(sigma_from), torch.tensor(sigma_to), eta)
    return float(sigma_down) == 0


def report(callback: StepCallback | None, x, i, sigma, sigma_hat, denoised) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _batch_sigma(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma * x.new_ones([x.shape[0]])


def _churn(x, sigma, n_steps, s_churn, s_tmin, s_tmax, s_noise, noise, sigma_next):
    """Karras et al. (2022) stochastic churn: raise the noise level to sigma_hat before a step."""
    if s_churn <= 0:  # the usual case; comparing a GPU sigma with s_tmin would stall the host each step
        return x, sigma
    gamma = min(s_churn / n_steps, 2 ** 0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + noise(sigma, sigma_next) * s_noise * (sigma_hat ** 2 - sigma ** 2) ** 0.5
    return x, sigma_hat


def _t(sigma):
    """log-SNR time used by the DPM-Solver family: t = -log(sigma)."""
    return sigma.log().neg()


def _sigma(t):
    return t.neg().exp()


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, noise_sampler: NoiseSampler | None = None):
    """Karras et al. (2022) Algorithm 2 with Euler steps (and optional churn)."""
    extra_args = extra_args or {}
    noise = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], len(sigmas) - 1, s_churn, s_tmin, s_tmax, s_noise, noise, sigmas[i + 1])
        denoised = model(x, _batch_sigma(sigma_hat, x), **extra_args)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler: NoiseSampler | None = None):
    """Euler steps down to sigma_down, then fresh noise of size sigma_up."""
    extra_args = extra_args or {}
    host = sigmas.tolist()  # branches read these: no wait for the GPU each step
    noise = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch_sigma(sigmas[i], x), **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if host[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, noise_sampler: NoiseSampler | None = None):
    """Karras et al. (2022) Algorithm 2: Heun's method, Euler for the last step to sigma 0."""
    extra_args = extra_args or {}
    host = sigmas.tolist()  # branches read these: no wait for the GPU each step
    noise = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], len(sigmas) - 1, s_churn, s_tmin, s_tmax, s_noise, noise, sigmas[i + 1])
        denoised = model(x, _batch_sigma(sigma_hat, x), **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if host[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, _batch_sigma(sigmas[i + 1], x), **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, noise_sampler: NoiseSampler | None = None):
    """DPM-Solver-2 (midpoint in log sigma), as in Karras et al. (2022)'s comparison."""
    extra_args = extra_args or {}
    host = sigmas.tolist()  # branches read these: no wait for the GPU each step
    noise = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], len(sigmas) - 1, s_churn, s_tmin, s_tmax, s_noise, noise, sigmas[i + 1])
        denoised = model(x, _batch_sigma(sigma_hat, x), **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if host[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, _batch_sigma(sigma_mid, x), **extra_args))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler: NoiseSampler | None = None):
    """DPM-Solver-2 down to sigma_down, then fresh noise."""
    extra_args = extra_args or {}
    host = sigmas.tolist()  # branches read these: no wait for the GPU each step
    noise = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch_sigma(sigmas[i], x), **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if _down_is_zero(host[i], host[i + 1], eta):
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, _batch_sigma(sigma_mid, x), **extra_args))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def linear_multistep_coeff(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of node t_{i-j} (nodes t_i..t_{i-order+1}).

    Integrated exactly with numpy polynomials (k-diffusion uses scipy's adaptive quadrature).
    """
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")
    basis = np.poly1d([1.0])
    for k in range(order):
        if k != j:
            basis = basis * np.poly1d([1.0, -t[i - k]]) / (t[i - j] - t[i - k])
    antiderivative = basis.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4,
               noise_sampler: NoiseSampler | None = None):
    """Linear multistep (Adams-Bashforth on non-uniform sigma steps) on the ODE derivative."""
    extra_args = extra_args or {}
    t = sigmas.detach().cpu().double().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch_sigma(sigmas[i], x), **extra_args)
        ds = [*ds, to_d(x, sigmas[i], denoised)][-order:]
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, t, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                              eta=1.0, s_noise=1.0, noise_sampler: NoiseSampler | None = None):
    """DPM-Solver++(2S) single-step, ancestral (Lu et al. 2022)."""
    extra_args = extra_args or {}
    host = sigmas.tolist()  # branches read these: no wait for the GPU each step
    noise = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch_sigma(sigmas[i], x), **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if _down_is_zero(host[i], host[i + 1], eta):
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, _batch_sigma(_sigma(s), x), **extra_args)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if host[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _seeded_tree(x, sigmas, noise_sampler, seeds):
    """SDE samplers need a Brownian tree; without one given, build it from `seeds` (or random ones)."""
    if noise_sampler is not None:
        return noise_sampler
    seeds = seeds if seeds is not None else torch.randint(0, 2 ** 31 - 1, (x.shape[0],)).tolist()
    return brownian_tree_noise_sampler(x, sigmas, list(seeds))


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                     eta=1.0, s_noise=1.0, noise_sampler: NoiseSampler | None = None, r=1 / 2, seeds=None):
    """DPM-Solver++ (stochastic, two evaluations per step) with Brownian-tree noise."""
    extra_args = extra_args or {}
    host = sigmas.tolist()  # branches read these: no wait for the GPU each step
    noise = _seeded_tree(x, sigmas, noise_sampler, seeds)
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch_sigma(sigmas[i], x), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if host[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = get_ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(_sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = model(x_2, _batch_sigma(_sigma(s), x), **extra_args)
        sd, su = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise(_sigma(t), _sigma(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None,
                    noise_sampler: NoiseSampler | None = None):
    """DPM-Solver++(2M), Lu et al. (2022): second-order multistep in log-SNR time."""
    extra_args = extra_args or {}
    host = sigmas.tolist()  # branches read these: no wait for the GPU each step
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch_sigma(sigmas[i], x), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if host[i + 1] == 0:
            x = denoised
        else:
            t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
            h = t_next - t
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = (t - _t(sigmas[i - 1])) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler: NoiseSampler | None = None, solver_type="midpoint", seeds=None):
    """DPM-Solver++(2M) SDE; `solver_type` "midpoint" or "heun" for the second-order correction."""
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args = extra_args or {}
    host = sigmas.tolist()  # branches read these: no wait for the GPU each step
    noise = _seeded_tree(x, sigmas, noise_sampler, seeds)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch_sigma(sigmas[i], x), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        h = None
        if host[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(host[i], host[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler: NoiseSampler | None = None, seeds=None):
    """DPM-Solver++(3M) SDE: third-order multistep with exponential-integrator noise."""
    extra_args = extra_args or {}
    host = sigmas.tolist()  # branches read these: no wait for the GPU each step
    noise = _seeded_tree(x, sigmas, noise_sampler, seeds)
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch_sigma(sigmas[i], x), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        h = None
        if host[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                x = x + noise(host[i], host[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None,
               noise_sampler: NoiseSampler | None = None):
    """Latent Consistency Model sampling: jump to x0, re-noise to the next sigma."""
    extra_args = extra_args or {}
    host = sigmas.tolist()  # branches read these: no wait for the GPU each step
    noise = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, _batch_sigma(sigmas[i], x), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if host[i + 1] > 0:
            x = x + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1])
    return x
