"""Classifier-free guidance wrapper: batching, scale 1, AND weights, its before-model and after-CFG
callables, thresholding of the combined x0."""

from __future__ import annotations

import pytest
import torch

from modules.sampling.guidance import CFGDenoiser, GuidanceInputs, GuidedPrediction
from modules.sampling.thresholding import (Thresholding, apply_thresholding, dynamic_threshold, mimic_scale_threshold,
                                           static_threshold)


class CountingDenoiser:
    """x0 = x * 0.5 + the cond's `shift` (mean over its tokens), recording the batch of each call."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, x, sigma, context):
        self.calls.append(x.shape[0])
        assert sigma.shape[0] == x.shape[0] == context.shape[0]
        return x * 0.5 + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def ctx(value: float, tokens: int = 77) -> dict:
    return {"context": torch.full((1, tokens, 8), value)}


X = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
SIGMA = torch.full((2,), 3.0)


def test_cfg_formula_in_one_batched_call():
    model = CountingDenoiser()
    out = CFGDenoiser(model, ctx(1.0), ctx(-1.0), scale=7.0)(X, SIGMA)
    assert model.calls == [4]
    assert torch.allclose(out, X * 0.5 - 1.0 + 7.0 * 2.0)


def test_scale_one_skips_uncond():
    model = CountingDenoiser()
    guider = CFGDenoiser(model, ctx(1.0), ctx(-1.0), scale=1.0)
    out = guider(X, SIGMA)
    assert model.calls == [2] and guider.last_uncond is None
    assert torch.allclose(out, X * 0.5 + 1.0)


def test_different_context_lengths_use_separate_calls():
    model = CountingDenoiser()
    out = CFGDenoiser(model, ctx(1.0, tokens=154), ctx(-1.0, tokens=77), scale=5.0)(X, SIGMA)
    assert model.calls == [2, 2]
    assert torch.allclose(out, X * 0.5 - 1.0 + 5.0 * 2.0)


def test_and_prompts_are_weighted():
    model = CountingDenoiser()
    conds = [(ctx(1.0), 1.0), (ctx(3.0), 0.5)]
    guider = CFGDenoiser(model, conds, ctx(0.0), scale=2.0)
    out = guider(X, SIGMA)
    assert model.calls == [6]
    uncond = X * 0.5
    expected = uncond + 1.0 * 2.0 * 1.0 + 0.5 * 2.0 * 3.0
    assert torch.allclose(out, expected)
    assert torch.allclose(guider.last_uncond, uncond)


def test_per_image_conds_pass_unrepeated():
    model = CountingDenoiser()
    cond = {"context": torch.stack([torch.full((77, 8), 1.0), torch.full((77, 8), 2.0)])}
    out = CFGDenoiser(model, cond, ctx(0.0), scale=1.5)(X, SIGMA)
    assert torch.allclose(out[0], X[0] * 0.5 + 1.5) and torch.allclose(out[1], X[1] * 0.5 + 3.0)


def thresholded(thresholding: Thresholding):
    """The after-CFG callable the pipeline's thresholding hook amounts to."""
    def after_cfg(prediction: GuidedPrediction) -> None:
        prediction.denoised = apply_thresholding(prediction.denoised, thresholding, prediction.uncond,
                                                 prediction.conds, prediction.weights)
    return after_cfg


def test_before_model_may_replace_what_the_model_sees():
    model = CountingDenoiser()
    seen = []

    def swap_cond(inputs: GuidanceInputs) -> None:
        seen.append((inputs.x.shape, [w for _, w in inputs.conds]))
        inputs.conds = [(ctx(2.0), 1.0)]

    guider = CFGDenoiser(model, ctx(1.0), ctx(-1.0), scale=7.0, before_model=swap_cond)
    for _ in range(2):  # the prepared conds of the first call are not reused for the swapped ones
        out = guider(X, SIGMA)
        assert torch.allclose(out, X * 0.5 - 1.0 + 7.0 * 3.0)
    assert seen == [(X.shape, [1.0])] * 2


def test_after_cfg_sees_the_parts_and_may_replace_the_result():
    model = CountingDenoiser()
    parts = []

    def halve(prediction: GuidedPrediction) -> None:
        parts.append((prediction.uncond, prediction.conds, prediction.weights))
        prediction.denoised = prediction.denoised / 2

    out = CFGDenoiser(model, ctx(1.0), ctx(-1.0), scale=7.0, after_cfg=halve)(X, SIGMA)
    assert torch.allclose(out, (X * 0.5 - 1.0 + 7.0 * 2.0) / 2)
    ((uncond, conds, weights),) = parts
    assert torch.allclose(uncond, X * 0.5 - 1.0) and torch.allclose(conds[0], X * 0.5 + 1.0) and weights == [1.0]


def test_static_thresholding_clamps_in_latent_units():
    out = CFGDenoiser(CountingDenoiser(), ctx(1.0), ctx(-1.0), 7.0,
                      after_cfg=thresholded(Thresholding("static", threshold=2.5)))(X, SIGMA)
    assert out.max() == pytest.approx(2.5) and out.min() >= -2.5
    assert torch.equal(static_threshold(torch.tensor([-9.0, 0.3, 9.0]), 1.0), torch.tensor([-1.0, 0.3, 1.0]))


def test_dynamic_thresholding():
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    x0[0] *= 20  # far outside the latent range: squeezed back
    out = dynamic_threshold(x0, 0.995, latent_range=4.0)
    s0 = torch.quantile((x0[0] / 4).abs().flatten(), 0.995)
    assert out[0].abs().max() <= 4.0 + 1e-5
    assert torch.allclose(out[0], (x0[0] / 4).clamp(-s0, s0) / s0 * 4)
    assert torch.allclose(out[1], x0[1].clamp(-4, 4))  # s = max(percentile, 1) = 1: only clamping


def test_mimic_scale_gives_the_real_result_the_mimic_range():
    model = CountingDenoiser()
    cond = {"context": torch.randn(1, 77, 8, generator=torch.Generator().manual_seed(2))}
    guider_real = CFGDenoiser(lambda x, s, context: x * context.mean() * 3, cond, ctx(0.0), 30.0)
    real = guider_real(X, SIGMA)
    mimic_guider = CFGDenoiser(lambda x, s, context: x * context.mean() * 3, cond, ctx(0.0), 30.0,
                               after_cfg=thresholded(Thresholding("mimic", percentile=1.0, mimic_scale=7.0)))
    out = mimic_guider(X, SIGMA)
    mimic = CFGDenoiser(lambda x, s, context: x * context.mean() * 3, cond, ctx(0.0), 7.0)(X, SIGMA)
    # each (image, channel) keeps its mean and gets the mimic result's largest deviation
    dev = (out - out.mean(dim=(2, 3), keepdim=True)).abs().amax(dim=(2, 3))
    mimic_dev = (mimic - mimic.mean(dim=(2, 3), keepdim=True)).abs().amax(dim=(2, 3))
    assert torch.allclose(dev, mimic_dev, rtol=1e-4)
    assert torch.allclose(out.mean(dim=(2, 3)), real.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(mimic_scale_threshold(mimic, mimic, 1.0), mimic, atol=1e-5)
    del model


def test_bad_thresholding_settings():
    with pytest.raises(ValueError):
        Thresholding("sometimes")
    with pytest.raises(ValueError):
        Thresholding("dynamic", percentile=1.5)
