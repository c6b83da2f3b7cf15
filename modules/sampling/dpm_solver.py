"""DPM-Solver (Lu et al. 2022) fast and adaptive, in k-diffusion's form (`DPM fast`, `DPM adaptive`).

They integrate in t = -log(sigma) on the noise prediction and choose their own steps: `DPM fast`
spends `len(sigmas) - 1` model evaluations spread over orders 3/2/1; `DPM adaptive` ignores the
step count and stops on its error estimate. Both take only the range of `sigmas` (first and last
nonzero value), so like AUTOMATIC1111 they end at the smallest sigma, not at 0.
"""

from __future__ import annotations

import math

import torch

from modules.sampling.noise import NoiseSampler, default_noise_sampler
from modules.sampling.samplers import get_ancestral_step, report


class PIDStepSizeController:
    """PID control of the step size from the normalised error (Söderlind's digital filters)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.8, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose_step(self, error) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)  # soft limiter
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


class DPMSolver:
    """Single-step DPM-Solver-1/2/3 on eps = (x - D(x, sigma)) / sigma, with a per-step cache."""

    def __init__(self, model, extra_args=None, callback=None):
        self.model = model
        self.extra_args = extra_args or {}
        self.callback = callback
        self.nfe = 0

    @staticmethod
    def t(sigma):
        return sigma.log().neg()

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    def eps(self, cache: dict, key: str, x, t):
        if key not in cache:
            sigma = self.sigma(t) * x.new_ones([x.shape[0]])
            cache[key] = (x - self.model(x, sigma, **self.extra_args)) / self.sigma(t)
            self.nfe += 1
        return cache[key]

    def step_1(self, x, t, t_next, cache):
        h = t_next - t
        return x - self.sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - self.sigma(s2) * (r2 * h).expm1() * eps
              - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def _ancestral_target(self, s, t, t_end, eta):
        if not eta:
            return t, 0.0
        sd, _ = get_ancestral_step(self.sigma(s), self.sigma(t), eta)
        t_ = torch.minimum(t_end, self.t(sd))
        return t_, (self.sigma(t) ** 2 - self.sigma(t_) ** 2) ** 0.5

    def fast(self, x, t_start, t_end, nfe, eta=0.0, s_noise=1.0, noise_sampler=None):
        noise = noise_sampler or default_noise_sampler(x)
        m = math.floor(nfe / 3) + 1
        ts = torch.linspace(float(t_start), float(t_end), m + 1, device=x.device)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i, order in enumerate(orders):
            cache: dict = {}
            t, t_next = ts[i], ts[i + 1]
            t_next_, su = self._ancestral_target(t, t_next, t_end, eta)
            eps = self.eps(cache, "eps", x, t)
            report(self.callback, x, i, self.sigma(t), self.sigma(t), x - self.sigma(t) * eps)
            step = {1: self.step_1, 2: self.step_2, 3: self.step_3}[order]
            x = step(x, t, t_next_, cache)
            x = x + su * s_noise * noise(self.sigma(t), self.sigma(t_next))
        return x

    def adaptive(self, x, t_start, t_end, order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0,
                 dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None):
        if order not in {2, 3}:
            raise ValueError("order should be 2 or 3")
        noise = noise_sampler or default_noise_sampler(x)
        forward = t_end > t_start
        h_init = abs(h_init) * (1 if forward else -1)
        atol, rtol = torch.tensor(atol), torch.tensor(rtol)
        s, x_prev, step_index = t_start, x, 0
        pid = PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
        while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
            cache: dict = {}
            t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
            t_, su = self._ancestral_target(s, t, t_end, eta)
            eps = self.eps(cache, "eps", x, s)
            report(self.callback, x, step_index, self.sigma(s), self.sigma(s), x - self.sigma(s) * eps)
            if order == 2:
                x_low, x_high = self.step_1(x, s, t_, cache), self.step_2(x, s, t_, cache)
            else:
                x_low, x_high = self.step_2(x, s, t_, cache, r1=1 / 3), self.step_3(x, s, t_, cache)
            delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            if pid.propose_step(error):
                x_prev = x_low
                x = x_high + su * s_noise * noise(self.sigma(s), self.sigma(t))
                s = t
            step_index += 1
        return x


def _sigma_range(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positive = sigmas[sigmas > 0]
    return positive.min().double().cpu(), sigmas.max().double().cpu()


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, disable=None,
                    eta=0.0, s_noise=1.0, noise_sampler: NoiseSampler | None = None):
    """DPM-Solver-fast: `len(sigmas) - 1` evaluations over [min positive sigma, max sigma]."""
    sigma_min, sigma_max = _sigma_range(sigmas)
    solver = DPMSolver(model, extra_args, callback)
    t_start, t_end = solver.t(sigma_max).float().to(x.device), solver.t(sigma_min).float().to(x.device)
    return solver.fast(x, t_start, t_end, len(sigmas) - 1, eta, s_noise, noise_sampler)


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None, order=3, rtol=0.05,
                        atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81,
                        eta=0.0, s_noise=1.0, noise_sampler: NoiseSampler | None = None):
    """DPM-Solver-12/23 with PID step-size control over [min positive sigma, max sigma]."""
    sigma_min, sigma_max = _sigma_range(sigmas)
    solver = DPMSolver(model, extra_args, callback)
    t_start, t_end = solver.t(sigma_max).float().to(x.device), solver.t(sigma_min).float().to(x.device)
    return solver.adaptive(x, t_start, t_end, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff,
                           accept_safety, eta, s_noise, noise_sampler)
