"""Seeds and noise, reproducing AUTOMATIC1111's `ImageRNG` so a seed gives the same latent noise.

One generator per image seed: an image's noise never depends on the batch it was made in. The
same generators feed the ancestral samplers' noise (`ImageRNG.next`), so a batch reproduces
single images through the whole sampling run, not only at the start.

Sources:
    "CPU"  torch's CPU generator (the default: identical on every machine)
    "GPU"  torch.randn on the device with a device generator (vendor dependent)
    "NV"   Philox4x32-10 + Box-Muller in numpy: what NVIDIA CUDA torch.randn draws, on any hardware
"""

from __future__ import annotations

import random
from typing import Literal

import numpy as np
import torch

NoiseSource = Literal["CPU", "GPU", "NV"]
NOISE_SOURCES: tuple[str, ...] = ("GPU", "CPU", "NV")
MAX_SEED = 4294967294  # A1111 draws random seeds below this (`random.randrange(4294967294)`)


def resolve_seed(seed: int | None) -> int:
    """-1 (or None) means a fresh random seed, drawn as AUTOMATIC1111 does."""
    return random.randrange(MAX_SEED) if seed is None or int(seed) == -1 else int(seed)


# --- Philox4x32-10 (Salmon et al. 2011), laid out as curand / CUDA torch.randn use it ---------

_PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))  # round multipliers
_PHILOX_W = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))  # key increments (Weyl sequence)
# float32 constants as curand's box-muller uses them; the arithmetic below promotes to float64
# exactly like the reference implementation, so results match bit for bit after the final cast.
_TWO_POW32_INV = np.array([2.3283064e-10], dtype=np.float32)
_TWO_POW32_INV_2PI = np.array([2.3283064e-10 * 6.2831855], dtype=np.float32)


def _mulhilo(a: np.ndarray, m: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) 32-bit halves of the 64-bit product a * m."""
    product = a.astype(np.uint64) * m
    return (product >> np.uint64(32)).astype(np.uint32), (product & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _philox_round(counter: list[np.ndarray], key: list[np.ndarray]) -> list[np.ndarray]:
    hi0, lo0 = _mulhilo(counter[0], _PHILOX_M[0])
    hi1, lo1 = _mulhilo(counter[2], _PHILOX_M[1])
    return [hi1 ^ counter[1] ^ key[0], lo1, hi0 ^ counter[3] ^ key[1], lo0]


def philox4x32(counter: list[np.ndarray], key: list[np.ndarray], rounds: int = 10) -> list[np.ndarray]:
    """Philox4x32 on four uint32 counter words and two uint32 key words (vectorised over elements)."""
    key = [k.copy() for k in key]
    for r in range(rounds):
        if r:
            key = [key[0] + _PHILOX_W[0], key[1] + _PHILOX_W[1]]  # uint32 wrap-around is intended
        counter = _philox_round(counter, key)
    return counter


def box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One standard normal from two uint32 words (the sine branch, as curand_normal)."""
    u = x * _TWO_POW32_INV + _TWO_POW32_INV / 2
    v = y * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """numpy generator that yields what `torch.randn(shape, device="cuda")` yields on NVIDIA GPUs.

    Element i of call k uses counter (k, 0, i, 0) and key (seed low word, seed high word): curand's
    subsequence = element index, offset = call index. Only the first two output words are used.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape)) if len(shape) else 1
        zeros = np.zeros(n, dtype=np.uint32)
        counter = [np.full(n, self.offset, dtype=np.uint32), zeros, np.arange(n, dtype=np.uint32), zeros]
        self.offset += 1
        key = [np.full(n, self.seed & 0xFFFFFFFF, dtype=np.uint32),
               np.full(n, (self.seed >> 32) & 0xFFFFFFFF, dtype=np.uint32)]
        words = philox4x32(counter, key)
        return box_muller(words[0], words[1]).reshape(shape)


# --- generators per source -------------------------------------------------------------------

def create_generator(seed: int, source: NoiseSource, device: torch.device) -> torch.Generator | PhiloxGenerator:
    if source == "NV":
        return PhiloxGenerator(seed)
    generator_device = device if source == "GPU" else torch.device("cpu")
    return torch.Generator(generator_device).manual_seed(int(seed))


def randn(shape: tuple[int, ...], generator: torch.Generator | PhiloxGenerator, device: torch.device) -> torch.Tensor:
    """Draw from `generator` and place the result on `device`."""
    if isinstance(generator, PhiloxGenerator):
        return torch.from_numpy(generator.randn(tuple(shape))).to(device)
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)


def seeded_randn(seed: int, shape: tuple[int, ...], source: NoiseSource, device: torch.device) -> torch.Tensor:
    """First draw of a fresh generator for `seed`."""
    return randn(shape, create_generator(seed, source, device), device)


# --- variation and resize --------------------------------------------------------------------

def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors of shape (C, H, W), as AUTOMATIC1111.

    Two quirks are reproduced on purpose, because variation seeds must give A1111's images:
    norms and dot products run over dim 1 (H), i.e. per (channel, column) slice, not per tensor;
    and the near-parallel fallback is written `low * val + high * (1 - val)`, the reverse of a
    linear interpolation (it only triggers when both noises are almost identical).
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def paste_centered(small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
    """Put `small` (C, h, w) in the middle of a copy of `big` (C, H, W), cropping when it is larger."""
    out = big.clone()
    dx = (big.shape[2] - small.shape[2]) // 2
    dy = (big.shape[1] - small.shape[1]) // 2
    w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    out[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w]
    return out


class ImageRNG:
    """Seeded noise for one batch of latents of per-image `shape` (C, H, W).

    `first()` is the initial latent noise (variation seed and resize-from applied); `next()` is the
    noise for each later ancestral/SDE step, drawn from the same per-seed generators. With an eta
    noise seed delta (ENSD) the generators are re-seeded with `seed + ENSD` after the first noise.
    """

    def __init__(self, shape: tuple[int, ...], seeds: list[int], subseeds: list[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from_h: int = 0, seed_resize_from_w: int = 0,
                 source: NoiseSource = "CPU", device: torch.device | str = "cpu", eta_noise_seed_delta: int = 0):
        if source not in NOISE_SOURCES:
            raise ValueError(f"unknown noise source {source!r}; choose one of {NOISE_SOURCES}")
        self.shape = tuple(shape)
        self.seeds = [int(s) for s in seeds]
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.seed_resize_from_h = seed_resize_from_h
        self.seed_resize_from_w = seed_resize_from_w
        self.source: NoiseSource = source
        self.device = torch.device(device)
        self.eta_noise_seed_delta = eta_noise_seed_delta
        self.generators = [create_generator(s, source, self.device) for s in self.seeds]

    def _resized_shape(self) -> tuple[int, ...]:
        if self.seed_resize_from_h <= 0 or self.seed_resize_from_w <= 0:
            return self.shape
        return (self.shape[0], int(self.seed_resize_from_h) // 8, int(self.seed_resize_from_w) // 8)

    def _image_noise(self, index: int, seed: int, generator) -> torch.Tensor:
        noise_shape = self._resized_shape()
        resized = noise_shape != self.shape
        # with resize, the old-size noise comes from a fresh generator and the image's own
        # generator then draws the full-size canvas (so later steps continue after that draw)
        noise = seeded_randn(seed, noise_shape, self.source, self.device) if resized \
            else randn(self.shape, generator, self.device)
        if self.subseeds is not None and self.subseed_strength != 0:
            subseed = self.subseeds[index] if index < len(self.subseeds) else 0
            noise = slerp(self.subseed_strength, noise, seeded_randn(subseed, noise_shape, self.source, self.device))
        if resized:
            noise = paste_centered(noise, randn(self.shape, generator, self.device))
        return noise

    def first(self) -> torch.Tensor:
        noise = torch.stack([self._image_noise(i, s, g) for i, (s, g) in enumerate(zip(self.seeds, self.generators))])
        if self.eta_noise_seed_delta:
            self.generators = [create_generator(s + self.eta_noise_seed_delta, self.source, self.device)
                               for s in self.seeds]
        return noise

    def next(self) -> torch.Tensor:
        return torch.stack([randn(self.shape, g, self.device) for g in self.generators])
