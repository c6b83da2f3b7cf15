"""Seeds and noise: per-seed generators, sources, variation seeds, resize-from, ENSD, Philox."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from modules.sampling.rng import MAX_SEED, ImageRNG, PhiloxGenerator, paste_centered, resolve_seed, seeded_randn, slerp
from modules.sampling.noise import brownian_tree_noise_sampler, rng_noise_sampler

SHAPE = (4, 8, 8)
NV_REFERENCE = Path(__file__).parent / "data" / "nv_randn.json"
SOURCES = ["CPU", "NV"] + (["GPU"] if torch.cuda.is_available() else [])
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_resolve_seed():
    assert resolve_seed(1234) == 1234
    drawn = {resolve_seed(-1) for _ in range(20)}
    assert all(0 <= s < MAX_SEED for s in drawn) and len(drawn) > 1


def test_cpu_noise_is_torch_cpu_generator():
    expected = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(42))
    assert torch.equal(ImageRNG(SHAPE, [42]).first()[0], expected)


@pytest.mark.parametrize("source", SOURCES)
def test_same_seed_same_noise(source):
    a, b = ImageRNG(SHAPE, [7], source=source, device=DEVICE), ImageRNG(SHAPE, [7], source=source, device=DEVICE)
    assert torch.equal(a.first(), b.first()) and torch.equal(a.next(), b.next())
    assert not torch.equal(ImageRNG(SHAPE, [8], source=source, device=DEVICE).first(), ImageRNG(SHAPE, [7], source=source, device=DEVICE).first())


@pytest.mark.parametrize("source", SOURCES)
def test_batch_reproduces_single_images(source):
    seeds = [10, 11, 12, 13]
    batch = ImageRNG(SHAPE, seeds, source=source, device=DEVICE)
    singles = [ImageRNG(SHAPE, [s], source=source, device=DEVICE) for s in seeds]
    assert torch.equal(batch.first(), torch.cat([r.first() for r in singles]))
    for _ in range(3):  # the ancestral noise too
        assert torch.equal(batch.next(), torch.cat([r.next() for r in singles]))


def test_sources_differ():
    assert not torch.allclose(ImageRNG(SHAPE, [1], source="CPU").first(), ImageRNG(SHAPE, [1], source="NV").first())
    with pytest.raises(ValueError):
        ImageRNG(SHAPE, [1], source="TPU")


def test_next_continues_the_generator():
    rng = ImageRNG(SHAPE, [5])
    first, second = rng.first(), rng.next()
    g = torch.Generator("cpu").manual_seed(5)
    assert torch.equal(first[0], torch.randn(SHAPE, generator=g))
    assert torch.equal(second[0], torch.randn(SHAPE, generator=g))


def test_eta_noise_seed_delta_reseeds_after_first_noise():
    plain = ImageRNG(SHAPE, [5])
    ensd = ImageRNG(SHAPE, [5], eta_noise_seed_delta=31337)
    assert torch.equal(plain.first(), ensd.first())
    expected = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(5 + 31337))
    assert torch.equal(ensd.next()[0], expected)
    assert not torch.equal(plain.next(), expected[None])


def test_variation_seed_strength():
    main = ImageRNG(SHAPE, [1]).first()
    sub = ImageRNG(SHAPE, [2]).first()
    assert torch.equal(ImageRNG(SHAPE, [1], subseeds=[2], subseed_strength=0.0).first(), main)
    assert torch.allclose(ImageRNG(SHAPE, [1], subseeds=[2], subseed_strength=1.0).first(), sub, atol=1e-5)
    mixed = ImageRNG(SHAPE, [1], subseeds=[2], subseed_strength=0.3).first()
    assert torch.allclose(mixed[0], slerp(0.3, main[0], sub[0]))
    assert mixed.std() == pytest.approx(1.0, abs=0.15)  # slerp keeps the noise's scale, a lerp would not


def test_slerp_is_per_column_and_keeps_the_reversed_linear_fallback():
    g = torch.Generator().manual_seed(0)
    low, high = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    out = slerp(0.5, low, high)
    # per (channel, column) slice along H, as A1111: norms of each slice are preserved at the midpoint
    assert torch.allclose(out.norm(dim=1), (low.norm(dim=1) + high.norm(dim=1)) / 2, rtol=0.2)
    near = low + 1e-3 * high
    assert torch.allclose(slerp(0.25, low, near), low * 0.25 + near * 0.75)  # the quirk, reproduced


def test_resize_seed_pastes_old_size_noise_centred():
    rng = ImageRNG((4, 12, 16), [9], seed_resize_from_h=64, seed_resize_from_w=64)  # old latent 8x8
    noise = rng.first()[0]
    old = seeded_randn(9, (4, 8, 8), "CPU", torch.device("cpu"))
    assert torch.equal(noise[:, 2:10, 4:12], old)
    # outside the pasted block: the image generator's full-size draw
    canvas = torch.randn((4, 12, 16), generator=torch.Generator().manual_seed(9))
    assert torch.equal(noise[:, 0, :], canvas[:, 0, :])


def test_paste_centered_crops_when_larger():
    small, big = torch.arange(16.0).view(1, 4, 4), torch.zeros(1, 2, 2)
    assert torch.equal(paste_centered(small, big), small[:, 1:3, 1:3])


def test_rng_noise_sampler_draws_next():
    rng, twin = ImageRNG(SHAPE, [3, 4]), ImageRNG(SHAPE, [3, 4])
    rng.first(), twin.first()
    sampler = rng_noise_sampler(rng)
    assert torch.equal(sampler(torch.tensor(1.0), torch.tensor(0.5)), twin.next())


def test_brownian_tree_noise_is_seeded_per_image_and_standard_normal():
    sigmas = torch.linspace(10, 0.1, 30)
    x = torch.zeros(2, 2048)
    a = brownian_tree_noise_sampler(x, sigmas, [1, 2])
    b = brownian_tree_noise_sampler(x[:1], sigmas, [1])
    n = a(sigmas[3], sigmas[4])
    assert torch.allclose(n[0], b(sigmas[3], sigmas[4])[0])  # batch independent
    assert n.std().item() == pytest.approx(1.0, abs=0.05)
    # Brownian: the noise of a long interval is the scaled sum of its halves
    whole = a(sigmas[3], sigmas[5]) * (sigmas[3] - sigmas[5]).sqrt()
    parts = a(sigmas[3], sigmas[4]) * (sigmas[3] - sigmas[4]).sqrt() + a(sigmas[4], sigmas[5]) * (sigmas[4] - sigmas[5]).sqrt()
    assert torch.allclose(whole, parts, atol=1e-4)


def test_philox_is_deterministic_and_normal():
    g = PhiloxGenerator(0)
    first, second = g.randn((4096,)), g.randn((4096,))
    assert np.array_equal(first, PhiloxGenerator(0).randn((4096,)))
    assert not np.array_equal(first, second)  # the offset advances per call
    assert first.dtype == np.float32
    assert abs(first.mean()) < 0.05 and abs(first.std() - 1) < 0.05


@pytest.mark.skipif(not NV_REFERENCE.exists(), reason="no GPU reference vectors yet")
def test_philox_reproduces_cuda_randn():
    reference = json.loads(NV_REFERENCE.read_text())
    for entry in reference["entries"]:
        values = PhiloxGenerator(entry["seed"]).randn(tuple(entry["shape"]))
        assert np.allclose(values.flatten()[:16], entry["first16"], atol=1e-5), entry["seed"]
        assert float(values.astype(np.float64).sum()) == pytest.approx(entry["sum"], abs=1e-2)
