"""Samplers against an analytic model: data ~ N(MU, S^2) per element, whose exact denoiser is known.

    D(x, sigma) = (S^2 x + sigma^2 MU) / (S^2 + sigma^2)

The probability-flow ODE then has a closed-form solution, so deterministic samplers are checked
against it, stochastic ones against the data distribution, and the multistep/second-order ones
against reference implementations written here from their papers' update rules.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modules.sampling.denoisers import DiscreteSchedule, scaled_linear_alphas_cumprod
from modules.sampling.guidance import CFGDenoiser
from modules.sampling.registry import SAMPLER_SPECS, find_sampler, run_sampler, sigmas_for
from modules.sampling.samplers import SamplingInterrupted
from modules.sampling.schedules import karras_schedule, uniform_schedule

MU, S = 0.5, 0.8
SCHEDULE = DiscreteSchedule(scaled_linear_alphas_cumprod())

A1111_SAMPLERS = ["Euler", "Euler a", "Heun", "LMS", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
                  "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM fast", "DPM adaptive", "Restart",
                  "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM", "DDPM"]

# Per sampler: schedule, steps, extra options for the convergence test. A registry entry missing
# here fails `test_every_sampler_has_a_convergence_setting`.
CONVERGENCE = {
    "Euler": ("Karras", 200, {}),
    "Euler a": ("Karras", 300, {}),
    "Heun": ("Karras", 40, {}),
    "LMS": ("Karras", 60, {}),
    "DPM2": ("Karras", 40, {}),
    "DPM2 a": ("Karras", 150, {}),
    "DPM++ 2S a": ("Karras", 100, {}),
    "DPM++ 2M": ("Karras", 40, {}),
    "DPM++ SDE": ("Karras", 40, {}),
    "DPM++ 2M SDE": ("Exponential", 60, {}),
    "DPM++ 2M SDE Heun": ("Exponential", 60, {}),
    "DPM++ 3M SDE": ("Exponential", 60, {}),
    "DPM fast": ("Karras", 40, {}),
    "DPM adaptive": ("Karras", 40, {"rtol": 1e-4, "atol": 1e-5}),  # steps are its own; tolerance decides
    "Restart": ("Karras", 40, {}),
    "DDIM": ("Uniform", 200, {}),
    "DDIM CFG++": ("Uniform", 200, {}),
    "PLMS": ("Uniform", 60, {}),
    "UniPC": ("Uniform", 30, {}),
    "LCM": ("Uniform", 4, {}),
    "DDPM": ("Uniform", 1000, {}),
}
DETERMINISTIC = ["Euler", "Heun", "LMS", "DPM2", "DPM++ 2M", "DPM fast", "DPM adaptive", "DDIM", "DDIM CFG++",
                 "PLMS", "UniPC"]


def denoiser(x: torch.Tensor, sigma: torch.Tensor, mu: float = MU) -> torch.Tensor:
    sig = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (S ** 2 * x + sig ** 2 * mu) / (S ** 2 + sig ** 2)


def consistency_model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact consistency function of the Gaussian: the ODE solution carried from sigma to 0."""
    sig = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return MU + (x - MU) * S / (S ** 2 + sig ** 2) ** 0.5


def ode_solution(x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
    return MU + (x_start - MU) * math.sqrt(S ** 2 + sigma_end ** 2) / math.sqrt(S ** 2 + sigma_start ** 2)


def marginal_sample(shape, sigma_max: float, seed: int) -> torch.Tensor:
    """x at noise level sigma_max, exactly distributed as the noised data."""
    g = torch.Generator().manual_seed(seed)
    return MU + math.sqrt(S ** 2 + sigma_max ** 2) * torch.randn(shape, generator=g, dtype=torch.float64)


def seeded_noise(shape, seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(shape, generator=g, dtype=torch.float64)


def run(name: str, x: torch.Tensor, sigmas: torch.Tensor, model=denoiser, seed: int = 1, **options) -> torch.Tensor:
    spec = find_sampler(name)
    noise = None if spec.brownian_noise else seeded_noise(x.shape, seed)
    seeds = list(range(seed, seed + x.shape[0]))
    return run_sampler(spec, model, x, sigmas.double(), noise_sampler=noise, seeds=seeds, **options)


# --- registry ---------------------------------------------------------------------------------

def test_registry_holds_exactly_the_a1111_samplers_and_ddpm():
    assert sorted(spec.name for spec in SAMPLER_SPECS) == sorted(A1111_SAMPLERS)


@pytest.mark.parametrize("name", A1111_SAMPLERS)
def test_sampler_selectable_by_exact_name(name):
    assert find_sampler(name).name == name


@pytest.mark.parametrize("alias, name", [("k_euler", "Euler"), ("k_euler_a", "Euler a"),
                                         ("k_euler_ancestral", "Euler a"), ("k_dpmpp_2m", "DPM++ 2M"),
                                         ("k_dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun"), ("k_dpm_ad", "DPM adaptive"),
                                         ("k_lms", "LMS"), ("ddim_cfgpp", "DDIM CFG++"), ("unipc", "UniPC"),
                                         ("k_lcm", "LCM"), ("restart", "Restart"), ("K_HEUN", "Heun")])
def test_aliases(alias, name):
    assert find_sampler(alias).name == name


def test_a1111_default_schedules_and_flags():
    expect = {"DPM++ 2M": "karras", "DPM++ SDE": "karras", "DPM++ 2M SDE": "exponential",
              "DPM++ 2M SDE Heun": "exponential", "DPM++ 3M SDE": "exponential", "DPM2": "karras",
              "DPM2 a": "karras", "DPM++ 2S a": "karras", "Restart": "karras", "Euler": None, "Euler a": None,
              "LMS": None, "Heun": None}
    for name, schedule in expect.items():
        assert find_sampler(name).default_schedule == schedule, name
    assert find_sampler("DPM++ 3M SDE").discard_next_to_last_sigma
    assert find_sampler("DPM2").discard_next_to_last_sigma and find_sampler("DPM2 a").discard_next_to_last_sigma
    assert find_sampler("DPM++ SDE").brownian_noise and find_sampler("DPM++ SDE").second_order
    assert find_sampler("Euler a").uses_ensd and not find_sampler("Euler").uses_ensd
    assert find_sampler("DPM++ 2M SDE Heun").options == {"solver_type": "heun"}
    assert find_sampler("DDIM CFG++").needs_uncond


def test_every_sampler_has_a_convergence_setting():
    assert set(CONVERGENCE) == {spec.name for spec in SAMPLER_SPECS}


def test_per_sampler_options_reach_the_function():
    assert {"s_churn", "s_tmin", "s_tmax", "s_noise"} <= find_sampler("Euler").accepted_options()
    assert {"eta", "s_noise"} <= find_sampler("Euler a").accepted_options()
    assert "eta" in find_sampler("DDIM").accepted_options()
    x = marginal_sample((2, 64), float(SCHEDULE.sigma_max), 0)
    sigmas = karras_schedule(10, float(SCHEDULE.sigma_min), float(SCHEDULE.sigma_max))
    plain = run("Euler", x, sigmas)
    churned = run("Euler", x, sigmas, s_churn=1.0, eta=0.3)  # eta is not Euler's: dropped, not an error
    assert not torch.allclose(plain, churned)


# --- convergence ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", A1111_SAMPLERS)
def test_sampler_converges_to_data_distribution(name):
    schedule_name, steps, options = CONVERGENCE[name]
    spec = find_sampler(name)
    sigmas = sigmas_for(spec, schedule_name, steps, SCHEDULE)
    batch = 4 if spec.brownian_noise else 16
    x = marginal_sample((batch, 4096 // batch * 4), float(sigmas[0]), 0)
    model = consistency_model if name == "LCM" else denoiser
    out = run(name, x, sigmas, model=model, **options)
    # DPM fast/adaptive stop at the smallest positive sigma, as in k-diffusion: that noise stays
    sigma_end = float(sigmas[sigmas > 0].min()) if name in ("DPM fast", "DPM adaptive") else 0.0
    assert abs(out.mean().item() - MU) < 0.02, out.mean()
    assert abs(out.var().item() / (S ** 2 + sigma_end ** 2) - 1) < 0.04, out.var()


def test_lcm_with_a_plain_denoiser_shrinks_variance():
    """Why LCM is tested with a consistency model: an MMSE denoiser averages, LCM then keeps the average."""
    sigmas = uniform_schedule(4, SCHEDULE)
    out = run("LCM", marginal_sample((4, 1024), float(sigmas[0]), 0), sigmas)
    assert out.var().item() < 0.6 * S ** 2


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_follow_the_exact_ode(name):
    spec = find_sampler(name)
    steps = 400 if name in ("Euler", "DDIM", "DDIM CFG++") else 100  # first order needs more
    sigmas = sigmas_for(spec, "Karras", steps, SCHEDULE).double()
    x = marginal_sample((2, 256), float(sigmas[0]), 3)
    sigma_end = float(sigmas[sigmas > 0].min()) if name in ("DPM fast", "DPM adaptive") else 0.0
    options = {"rtol": 1e-4, "atol": 1e-5} if name == "DPM adaptive" else {}
    expected = ode_solution(x, float(sigmas[0]), sigma_end)
    out = run(name, x, sigmas, **options)
    assert (out - expected).abs().max() < 2e-2, (out - expected).abs().max()
    assert torch.equal(out, run(name, x, sigmas, seed=99, **options))  # noise never enters


def test_deterministic_samplers_agree_with_each_other():
    sigmas = karras_schedule(400, float(SCHEDULE.sigma_min), float(SCHEDULE.sigma_max)).double()
    x = marginal_sample((2, 128), float(sigmas[0]), 5)
    outs = {name: run(name, x, sigmas)
            for name in ["Euler", "Heun", "LMS", "DPM2", "DPM++ 2M", "PLMS", "UniPC", "DDIM"]}
    reference = outs["Heun"]
    for name, out in outs.items():
        assert (out - reference).abs().max() < 1e-2, name


def test_higher_order_samplers_beat_euler_at_few_steps():
    sigmas = karras_schedule(10, float(SCHEDULE.sigma_min), float(SCHEDULE.sigma_max)).double()
    x = marginal_sample((2, 128), float(sigmas[0]), 6)
    exact = ode_solution(x, float(sigmas[0]), 0.0)
    err = {n: (run(n, x, sigmas) - exact).abs().max().item() for n in ["Euler", "Heun", "DPM++ 2M", "UniPC", "LMS"]}
    assert all(err[n] < err["Euler"] for n in ["Heun", "DPM++ 2M", "UniPC", "LMS"]), err


# --- reference implementations, written from the papers ---------------------------------------

def ref_heun(model, x, t):
    """Karras et al. (2022) Algorithm 2 without churn."""
    for i in range(len(t) - 1):
        d = (x - model(x, t[i:i + 1])) / t[i]
        x_next = x + (t[i + 1] - t[i]) * d
        if t[i + 1] != 0:
            d_next = (x_next - model(x_next, t[i + 1:i + 2])) / t[i + 1]
            x_next = x + (t[i + 1] - t[i]) * (d + d_next) / 2
        x = x_next
    return x


def ref_dpmpp_2m(model, x, sigmas):
    """Lu et al. (2022) DPM-Solver++(2M), Algorithm 2, in VP variables; final step to sigma 0 returns x0."""
    s = sigmas.tolist()
    alpha = [1 / math.sqrt(1 + v ** 2) for v in s]
    sig_vp = [a * v for a, v in zip(alpha, s)]
    lam = [math.log(a / sv) if sv > 0 else math.inf for a, sv in zip(alpha, sig_vp)]
    x_vp = alpha[0] * x
    prev_x0 = None
    for i in range(len(s) - 1):
        x0 = model(x_vp / alpha[i], sigmas[i:i + 1])
        if s[i + 1] == 0:
            return x0
        h = lam[i + 1] - lam[i]
        if prev_x0 is None:
            D = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev_x0
        x_vp = sig_vp[i + 1] / sig_vp[i] * x_vp - alpha[i + 1] * math.expm1(-h) * D
        prev_x0 = x0
    return x_vp / alpha[-1]


def ref_lms(model, x, sigmas, order=4):
    """Linear multistep: integrate the Lagrange interpolant of past derivatives (Gauss-Legendre quadrature)."""
    t = sigmas.tolist()
    nodes, weights = np.polynomial.legendre.leggauss(8)
    ds = []
    for i in range(len(t) - 1):
        ds.append((x - model(x, sigmas[i:i + 1])) / t[i])
        k = min(i + 1, order)
        a, b = t[i], t[i + 1]
        taus = (b - a) / 2 * nodes + (a + b) / 2
        step = torch.zeros_like(x)
        for j in range(k):
            basis = np.ones_like(taus)
            for m in range(k):
                if m != j:
                    basis *= (taus - t[i - m]) / (t[i - j] - t[i - m])
            step = step + float((b - a) / 2 * np.sum(weights * basis)) * ds[i - j]
        x = x + step
    return x


def ref_plms(model, x, sigmas):
    """Liu et al. (2022) PNDM/PLMS in VP variables with the DDIM transfer phi(x, eps, t, t_prev)."""
    ab = [1 / (1 + v ** 2) for v in sigmas.tolist()]

    def eps_at(x_vp, i):
        x_k = x_vp / math.sqrt(ab[i])
        return (x_k - model(x_k, sigmas[i:i + 1])) / sigmas[i]

    def transfer(x_vp, e, i):
        x0 = (x_vp - math.sqrt(1 - ab[i]) * e) / math.sqrt(ab[i])
        return math.sqrt(ab[i + 1]) * x0 + math.sqrt(1 - ab[i + 1]) * e

    x_vp = math.sqrt(ab[0]) * x
    history = []
    for i in range(len(ab) - 1):
        e = eps_at(x_vp, i)
        if not history:
            e_prime = (e + eps_at(transfer(x_vp, e, i), i + 1)) / 2
        elif len(history) == 1:
            e_prime = (3 * e - history[-1]) / 2
        elif len(history) == 2:
            e_prime = (23 * e - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_prime = (55 * e - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x_vp = transfer(x_vp, e_prime, i)
        history.append(e)
    return x_vp / math.sqrt(ab[-1])


def ref_unipc_bh2_order2(model, x, sigmas):
    """Zhao et al. (2023) UniPC-2 with B(h) = e^h - 1 (bh2), data prediction, in VP variables.

    UniP-2 predictor (rho = 1/2) and UniC corrector solved from the 2x2 order conditions; the
    corrector's model output at the predicted point is reused. The jump to sigma 0 returns it.
    """
    s = sigmas.tolist()
    alpha = [1 / math.sqrt(1 + v ** 2) for v in s]
    lam = [-math.log(v) if v > 0 else math.inf for v in s]
    x_vp = alpha[0] * x
    m = [model(x_vp / alpha[0], sigmas[0:1])]
    lams = [lam[0]]
    for i in range(1, len(s)):
        if s[i] == 0:
            return m[-1]
        h = lam[i] - lams[-1]
        B = -math.expm1(-h)
        phi1 = math.expm1(-h)  # e^{-h} - 1
        g1 = phi1 / (-h) - 1  # h-scaled phi_2
        g2 = g1 / (-h) - 0.5  # h-scaled phi_3
        b1, b2 = g1 / -B, 2 * g2 / -B
        base = (alpha[i] * s[i]) / (alpha[i - 1] * s[i - 1]) * x_vp - alpha[i] * phi1 * m[-1]
        if len(m) >= 2:
            r1 = (lams[-2] - lams[-1]) / h
            D1 = (m[-2] - m[-1]) / r1
            pred = base + alpha[i] * B * 0.5 * D1
        else:
            pred = base
        if i == len(s) - 1:
            return pred / alpha[i]
        m_t = model(pred / alpha[i], sigmas[i:i + 1])
        if len(m) >= 2:
            # [[1, 1], [r1, 1]] @ (rho1, rho2) = (b1, b2) by Cramer's rule
            det = 1 - r1
            rho1, rho2 = (b1 - b2) / det, (b2 - r1 * b1) / det
            x_vp = base + alpha[i] * B * (rho1 * D1 + rho2 * (m_t - m[-1]))
        else:
            x_vp = base + alpha[i] * B * 0.5 * (m_t - m[-1])
        m, lams = [m[-1], m_t], [lams[-1], lam[i]]
    return x_vp / alpha[-1]


def ref_ddpm(model, x, noises):
    """Ho et al. (2020) Algorithm 2 over all 1000 training timesteps, sigma_t^2 = beta-tilde."""
    abar = SCHEDULE.alphas_cumprod.double()
    x_vp = math.sqrt(abar[-1]) * x
    for k, t in enumerate(range(len(abar) - 1, -1, -1)):
        abar_prev = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        a_t = abar[t] / abar_prev
        sigma = torch.tensor([math.sqrt((1 - abar[t]) / abar[t])], dtype=torch.float64)
        x_k = x_vp / math.sqrt(abar[t])
        eps = (x_k - model(x_k, sigma)) / sigma
        x_vp = (x_vp - (1 - a_t) / math.sqrt(1 - abar[t]) * eps) / math.sqrt(a_t)
        if t > 0:
            x_vp = x_vp + math.sqrt((1 - abar_prev) / (1 - abar[t]) * (1 - a_t)) * noises[k]
    return x_vp


REFERENCES = {
    "Heun": (ref_heun, {}),
    "DPM++ 2M": (ref_dpmpp_2m, {}),
    "LMS": (ref_lms, {}),
    "PLMS": (ref_plms, {}),
    "UniPC": (ref_unipc_bh2_order2, {"order": 2, "variant": "bh2", "lower_order_final": False}),
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_sampler_matches_paper_reference(name):
    reference, options = REFERENCES[name]
    sigmas = karras_schedule(12, float(SCHEDULE.sigma_min), float(SCHEDULE.sigma_max)).double()
    x = marginal_sample((2, 32), float(sigmas[0]), 7)
    assert torch.allclose(run(name, x, sigmas, **options), reference(denoiser, x, sigmas), atol=1e-6)


def test_ddpm_is_ho_et_al_algorithm_2():
    # the 1000-step Uniform schedule visits every training timestep (to float32 precision) ...
    abar = SCHEDULE.alphas_cumprod.double()
    training_sigmas = ((1 - abar) / abar).sqrt().flip(0)
    assert torch.allclose(uniform_schedule(1000, SCHEDULE)[:-1].double(), training_sigmas, rtol=1e-6)
    # ... and with those sigmas in float64 DDPM is exactly the original algorithm
    sigmas = torch.cat([training_sigmas, training_sigmas.new_zeros(1)])
    x = marginal_sample((2, 16), float(sigmas[0]), 8)
    g = torch.Generator().manual_seed(4)
    noises = [torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(1000)]
    it = iter(noises)
    out = find_sampler("DDPM").function(denoiser, x, sigmas, noise_sampler=lambda a, b: next(it))
    assert torch.allclose(out, ref_ddpm(denoiser, x, noises), atol=1e-10)


def test_ddim_eta_0_is_deterministic_and_eta_1_is_ddpm():
    sigmas = uniform_schedule(50, SCHEDULE).double()
    x = marginal_sample((2, 64), float(sigmas[0]), 9)
    assert torch.equal(run("DDIM", x, sigmas, seed=1, eta=0.0), run("DDIM", x, sigmas, seed=2, eta=0.0))
    assert torch.allclose(run("DDIM", x, sigmas, seed=3, eta=1.0), run("DDPM", x, sigmas, seed=3), atol=1e-6)
    assert not torch.allclose(run("DDIM", x, sigmas, seed=3, eta=1.0), run("DDIM", x, sigmas, seed=3, eta=0.0))


def test_ddim_cfgpp_renoises_along_the_unconditional_estimate():
    cond, uncond = {"mu": torch.tensor([1.0])}, {"mu": torch.tensor([-1.0])}

    def conditional(x, sigma, mu):
        return denoiser(x, sigma, mu=mu.view(-1, 1))

    def cfgpp(model, sigmas_run):  # the guider's unconditional x0, given to the sampler explicitly
        return run("DDIM CFG++", x, sigmas_run, model=model, uncond_denoised=lambda: model.last_uncond)

    sigmas = uniform_schedule(20, SCHEDULE).double()
    x = marginal_sample((2, 64), float(sigmas[0]), 10)
    guided = CFGDenoiser(conditional, cond, uncond, scale=1.0)
    plain = cfgpp(guided, sigmas)
    assert guided.last_uncond is None
    assert torch.allclose(plain, run("DDIM", x, sigmas, model=guided))  # scale 1: no uncond pass, same as DDIM
    guided = CFGDenoiser(conditional, cond, uncond, scale=0.6)
    cfgpp_out, ddim = cfgpp(guided, sigmas), run("DDIM", x, sigmas, model=guided)
    assert guided.last_uncond is not None
    assert not torch.allclose(cfgpp_out, ddim)
    # without the unconditional estimate CFG++ is DDIM
    assert torch.equal(run("DDIM CFG++", x, sigmas, model=guided), ddim)
    # one step: x' = guided x0 + sigma' * eps_uncond, where DDIM would use the guided eps
    s0, s1 = sigmas[:2]
    step = cfgpp(guided, sigmas[:2])
    sig = s0 * torch.ones(x.shape[0], dtype=torch.float64)
    uncond_x0 = conditional(x, sig, uncond["mu"])
    expected = guided(x, sig) + s1 * (x - uncond_x0) / s0
    assert torch.allclose(step, expected, atol=1e-9)


# --- progress ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", A1111_SAMPLERS)
def test_callback_and_interrupt(name):
    spec = find_sampler(name)
    sigmas = sigmas_for(spec, "Automatic", 8, SCHEDULE).double()
    x = marginal_sample((2, 8), float(sigmas[0]), 11)
    model = consistency_model if name == "LCM" else denoiser
    seen = []

    def callback(info):
        assert set(info) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        seen.append(info)
        if len(seen) == 2:
            raise SamplingInterrupted

    with pytest.raises(SamplingInterrupted):
        run(name, x, sigmas, model=model, callback=callback)
    assert len(seen) == 2 and seen[-1]["x"].shape == x.shape and seen[0]["i"] == 0
