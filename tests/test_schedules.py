"""Sigma schedules, schedule names, legacy combined names and `sigmas_for`; the model wrappers' schedule maths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modules.sampling.denoisers import DiscreteDenoiser, DiscreteSchedule, scaled_linear_alphas_cumprod
from modules.sampling.registry import find_sampler, sigmas_for, split_sampler_and_schedule
from modules.sampling.schedules import (AYS_SD15, AYS_SDXL, SCHEDULE_SPECS, ScheduleInputs, find_schedule,
                                        karras_schedule, schedule_labels)

SCHEDULE = DiscreteSchedule(scaled_linear_alphas_cumprod())
SIGMA_MIN, SIGMA_MAX = float(SCHEDULE.sigma_min), float(SCHEDULE.sigma_max)
INPUTS = ScheduleInputs(SCHEDULE, SIGMA_MIN, SIGMA_MAX, is_sdxl=False)

A1111_SCHEDULES = {"Automatic": "automatic", "Uniform": "uniform", "Karras": "karras", "Exponential": "exponential",
                   "Polyexponential": "polyexponential", "SGM Uniform": "sgm_uniform", "KL Optimal": "kl_optimal",
                   "Align Your Steps": "align_your_steps", "Simple": "simple", "Normal": "normal", "DDIM": "ddim",
                   "Beta": "beta"}

# Expected first sigma per schedule for 20 steps (None: checked elsewhere). A registry entry
# missing here fails `test_every_schedule_has_a_test_entry`.
FIRST_SIGMA = {"automatic": None, "uniform": SIGMA_MAX, "karras": SIGMA_MAX, "exponential": SIGMA_MAX,
               "polyexponential": SIGMA_MAX, "sgm_uniform": SIGMA_MAX, "kl_optimal": SIGMA_MAX,
               "align_your_steps": 14.615, "simple": SIGMA_MAX, "normal": SIGMA_MAX,
               "ddim": float(SCHEDULE.sigmas[951]), "beta": SIGMA_MAX}


def test_registry_holds_the_a1111_schedule_types():
    assert schedule_labels() == list(A1111_SCHEDULES)
    assert {spec.label: spec.name for spec in SCHEDULE_SPECS} == A1111_SCHEDULES


def test_every_schedule_has_a_test_entry():
    assert set(FIRST_SIGMA) == {spec.name for spec in SCHEDULE_SPECS}


@pytest.mark.parametrize("label, name", list(A1111_SCHEDULES.items()))
def test_schedule_selectable_by_label_name_and_case(label, name):
    assert find_schedule(label).name == name
    assert find_schedule(name).label == label
    assert find_schedule(label.upper()).name == name


def test_schedule_alias_and_empty_name():
    assert find_schedule("SGMUniform").name == "sgm_uniform"
    assert find_schedule(None).name == "automatic" and find_schedule("").name == "automatic"
    with pytest.raises(ValueError):
        find_schedule("Cosine-ish")


@pytest.mark.parametrize("spec", [s for s in SCHEDULE_SPECS if s.function is not None], ids=lambda s: s.name)
def test_schedule_shape(spec):
    sigmas = spec.function(20, INPUTS)
    expected_len = 21
    if spec.name == "beta":  # repeated timesteps are dropped
        assert 15 <= len(sigmas) <= 21
    else:
        assert len(sigmas) == expected_len
    assert sigmas[-1] == 0 and torch.all(sigmas[:-1] > 0)
    assert torch.all(sigmas[1:] < sigmas[:-1]), sigmas
    assert float(sigmas[0]) == pytest.approx(FIRST_SIGMA[spec.name], rel=1e-4)
    assert float(sigmas[-2]) <= 0.3


def test_karras_formula():
    sigmas = karras_schedule(5, 0.1, 10.0, rho=7.0)
    ramp = np.linspace(0, 1, 5)
    expected = (10.0 ** (1 / 7) + ramp * (0.1 ** (1 / 7) - 10.0 ** (1 / 7))) ** 7
    assert np.allclose(sigmas[:-1].numpy(), expected, rtol=1e-5)


def test_exponential_is_log_linear_and_polyexponential_rho_1_equals_it():
    exp = find_schedule("Exponential").function(10, INPUTS)
    poly = find_schedule("Polyexponential").function(10, INPUTS)
    steps = exp[:-1].log().diff()
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-5)
    assert torch.allclose(exp, poly, rtol=1e-5)


def test_kl_optimal_is_linear_in_arctan():
    sigmas = find_schedule("KL Optimal").function(10, INPUTS)[:-1].double()
    steps = sigmas.atan().diff()
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-6)
    assert float(sigmas[-1]) == pytest.approx(SIGMA_MIN, rel=1e-5)


def test_align_your_steps_tables():
    assert find_schedule("Align Your Steps").function(11, INPUTS)[:-1].tolist() == pytest.approx(AYS_SD15, rel=1e-6)
    sdxl = ScheduleInputs(SCHEDULE, SIGMA_MIN, SIGMA_MAX, is_sdxl=True)
    assert find_schedule("Align Your Steps").function(11, sdxl)[:-1].tolist() == pytest.approx(AYS_SDXL, rel=1e-6)
    # other lengths: log-linear resampling through the table's points (ends kept)
    sigmas = find_schedule("Align Your Steps").function(21, INPUTS)[:-1].double()
    assert float(sigmas[0]) == pytest.approx(14.615) and float(sigmas[-1]) == pytest.approx(0.029)
    assert float(sigmas[2]) == pytest.approx(AYS_SD15[1], rel=1e-5)  # every other point is a table point
    assert float(sigmas[1]) == pytest.approx(math.sqrt(AYS_SD15[0] * AYS_SD15[1]), rel=1e-5)  # geometric midpoint


def test_ddim_schedule_uses_ddim_timesteps():
    sigmas = find_schedule("DDIM").function(20, INPUTS)
    expected = SCHEDULE.sigmas[[951 - 50 * i for i in range(20)]]
    assert torch.allclose(sigmas[:-1], expected)


def test_beta_schedule_is_dense_at_both_ends():
    sigmas = find_schedule("Beta").function(30, INPUTS)[:-1]
    t = SCHEDULE.sigma_to_t(sigmas)
    gaps = t[:-1] - t[1:]
    middle = gaps[len(gaps) // 2]
    assert gaps[0] < middle and gaps[-1] < middle  # Beta(0.6, 0.6) puts more steps near both ends


def test_uniform_matches_model_timesteps_and_sgm_uniform_drops_last():
    uniform = find_schedule("Uniform").function(10, INPUTS)
    t = SCHEDULE.sigma_to_t(uniform[:-1])
    assert torch.allclose(t, torch.linspace(999, 0, 10), atol=1e-3)
    sgm = find_schedule("SGM Uniform").function(10, INPUTS)
    t = SCHEDULE.sigma_to_t(sgm[:-1])
    assert torch.allclose(t, torch.linspace(999, 0, 11)[:-1], atol=1e-3)


# --- combined names and sigmas_for ------------------------------------------------------------

@pytest.mark.parametrize("combined, sampler, schedule", [
    ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
    ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras"),
    ("DPM++ 2M SDE Heun Exponential", "DPM++ 2M SDE Heun", "Exponential"),
    ("Euler a", "Euler a", "Automatic"),
    ("DPM++ 2M SDE", "DPM++ 2M SDE", "Automatic"),
    ("DDIM", "DDIM", "Automatic"),
    ("Euler SGMUniform", "Euler", "SGM Uniform"),
    ("k_dpmpp_2m karras", "DPM++ 2M", "Karras"),
    ("UniPC align_your_steps", "UniPC", "Align Your Steps"),
])
def test_split_sampler_and_schedule(combined, sampler, schedule):
    spec, schedule_label = split_sampler_and_schedule(combined)
    assert (spec.name, schedule_label) == (sampler, schedule)
    assert find_sampler(combined).name == sampler


def test_split_keeps_explicit_schedule_for_plain_names():
    assert split_sampler_and_schedule("Euler", "Karras")[1] == "Karras"
    with pytest.raises(ValueError):
        split_sampler_and_schedule("Euler Cosine")


def test_automatic_uses_the_sampler_default():
    karras = sigmas_for(find_sampler("DPM++ 2M"), "Automatic", 20, SCHEDULE)
    assert torch.allclose(karras, karras_schedule(20, SIGMA_MIN, SIGMA_MAX))
    uniform = sigmas_for(find_sampler("Euler"), "Automatic", 20, SCHEDULE)
    assert torch.allclose(uniform, find_schedule("Uniform").function(20, INPUTS))
    assert torch.allclose(sigmas_for(find_sampler("Euler"), "Karras", 20, SCHEDULE), karras)


def test_discard_next_to_last_sigma_keeps_step_count():
    sigmas = sigmas_for(find_sampler("DPM2"), "Automatic", 20, SCHEDULE)
    full = karras_schedule(21, SIGMA_MIN, SIGMA_MAX)
    assert len(sigmas) == 21
    assert torch.allclose(sigmas, torch.cat([full[:-2], full[-1:]]))
    forced = sigmas_for(find_sampler("Euler"), "Karras", 20, SCHEDULE, always_discard_next_to_last_sigma=True)
    assert torch.allclose(forced, sigmas)


def test_second_order_step_reduction_is_opt_in():
    heun = find_sampler("Heun")
    assert len(sigmas_for(heun, "Karras", 20, SCHEDULE)) == 21
    assert len(sigmas_for(heun, "Karras", 20, SCHEDULE, reduce_second_order_steps=True)) == 11
    assert len(sigmas_for(find_sampler("Euler"), "Karras", 20, SCHEDULE, reduce_second_order_steps=True)) == 21


def test_sdxl_flag_reaches_align_your_steps():
    spec = find_sampler("Euler")
    sd15 = sigmas_for(spec, "Align Your Steps", 11, SCHEDULE, is_sdxl=False)
    sdxl = sigmas_for(spec, "Align Your Steps", 11, SCHEDULE, is_sdxl=True)
    assert sd15[1] == pytest.approx(6.475) and sdxl[1] == pytest.approx(6.315)


# --- model wrappers ---------------------------------------------------------------------------

def test_sigma_timestep_round_trip():
    t = torch.tensor([0.0, 10.0, 250.5, 999.0])
    assert torch.allclose(SCHEDULE.sigma_to_t(SCHEDULE.t_to_sigma(t)), t, atol=1e-3)
    assert SCHEDULE.t_to_sigma(torch.tensor([999.0])).item() == pytest.approx(SIGMA_MAX, rel=1e-6)


def test_zero_terminal_snr_makes_the_last_step_pure_noise():
    plain = scaled_linear_alphas_cumprod()
    ztsnr = scaled_linear_alphas_cumprod(zero_terminal_snr=True)
    assert plain[-1] > 1e-3 and ztsnr[-1] < 1e-7
    assert ztsnr[0] == pytest.approx(plain[0].item(), rel=1e-6)  # the first step is unchanged
    assert DiscreteSchedule(ztsnr).sigma_max > 1000 * SIGMA_MAX / 14.6


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_denoiser_recovers_x0_from_eps_and_v(prediction):
    """A UNet that predicts exactly (from a known x0 and noise) gives back x0 through the wrapper."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    sigma = torch.tensor([0.5, 3.0, 12.0])
    x = x0 + noise * sigma[:, None]

    def unet(x_in, t):
        abar = 1 / (1 + sigma[:, None] ** 2)
        assert torch.allclose(x_in, x * abar.sqrt())  # c_in scaling to the VP latent
        if prediction == "epsilon":
            return noise
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0  # v = alpha * eps - sigma_vp * x0

    out = DiscreteDenoiser(unet, SCHEDULE, prediction)(x, sigma)
    assert torch.allclose(out, x0, atol=1e-5)


def test_sigma_to_t_matches_k_diffusions_interpolation_everywhere():
    """The timestep of any sigma, inside, between and beyond the table's entries (and with zero-terminal-SNR's
    infinite last sigma), is k-diffusion's: its index search is the scan `ge(0).cumsum(0).argmax(0)`."""
    from modules.sampling.denoisers import rescale_zero_terminal_snr

    def k_diffusion(schedule, sigma):
        log_sigma, log_sigmas = sigma.log(), schedule.log_sigmas
        dists = log_sigma - log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
        low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * (low_idx + 1)).view(sigma.shape)

    ztsnr = DiscreteSchedule(rescale_zero_terminal_snr(scaled_linear_alphas_cumprod()))
    for schedule in (SCHEDULE, ztsnr):
        table = schedule.sigmas[torch.isfinite(schedule.sigmas)]
        between = (table[:-1] * table[1:]).sqrt()
        sigmas = torch.cat([table, between, torch.tensor([1e-4, table[0] * 0.5, table[-1] * 2, 1e4])])
        assert torch.equal(schedule.sigma_to_t(sigmas), k_diffusion(schedule, sigmas))
