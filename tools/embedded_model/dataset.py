"""Procedural training data: coloured shapes on a coloured background, with captions.

Scenes are sampled on the CPU from a seeded generator (a few numbers per image, so the same seed gives
the same scenes on any device) and drawn as signed distance fields with torch, on whatever device
trains. Coverage = clamp(0.5 - distance_in_pixels, 0, 1) is a one-pixel box filter across each edge,
which antialiases without drawing at a larger size and downsampling, and keeps a GPU fed without a
CPU data pipeline.

Every shape lies inside its own region (the whole image, or one half of it in two-shape scenes) with
a margin, so shapes never overlap and never touch the image corners: a shape's centre pixel always has
the shape's colour and a corner pixel the background's. The tests rely on that.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from tools.embedded_model.config import DataConfig

COLOURS: MappingProxyType[str, tuple[int, int, int]] = MappingProxyType({
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "orange": (245, 130, 20),
    "purple": (130, 50, 180),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "pink": (245, 140, 190),
    "cyan": (40, 200, 220),
    "brown": (120, 70, 30),
    "gray": (128, 128, 128),
})
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "heart")

SMALL, MEDIUM, LARGE = 0, 1, 2
SIZE_WORDS: tuple[str, ...] = ("small", "", "large")
# Shape radius as a fraction of half the region's shorter side, per size class.
SIZE_FRACTIONS: tuple[tuple[float, float], ...] = ((0.2, 0.32), (0.36, 0.55), (0.6, 0.85))
TWO_SHAPE_FRACTION = (0.5, 0.88)
MARGIN_PIXELS = 2.0

# Rows top to bottom, columns left to right: where a shape's centre lies, in thirds of the image.
POSITION_PHRASES: tuple[tuple[str, ...], ...] = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the middle", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)
HORIZONTAL, VERTICAL = 0, 1


@dataclass(frozen=True)
class SceneBatch:
    """B scenes of one or two shapes. Slot 1 is unused where count == 1.

    In two-shape scenes slot 0 is left of (HORIZONTAL) or above (VERTICAL) slot 1.
    """

    shapes: Tensor  # [B, 2] long, index into SHAPES
    colours: Tensor  # [B, 2] long, index into COLOUR_NAMES; never the background's
    backgrounds: Tensor  # [B] long
    centres: Tensor  # [B, 2, 2] float (x, y) in pixels, y down
    radii: Tensor  # [B, 2] float, circumradius in pixels
    angles: Tensor  # [B, 2] float, radians
    size_classes: Tensor  # [B, 2] long: SMALL, MEDIUM, LARGE (single-shape scenes only)
    counts: Tensor  # [B] long, 1 or 2
    layouts: Tensor  # [B] long: HORIZONTAL or VERTICAL (two-shape scenes only)
    colour_offsets: Tensor  # [B, 3, 3] float: jitter of (background, shape 0, shape 1) RGB in [0, 1] units

    def __len__(self) -> int:
        return int(self.backgrounds.shape[0])


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def colour_table(device: torch.device | str = "cpu") -> Tensor:
    """[N, 3] named colours in [0, 1]."""
    return torch.tensor([COLOURS[name] for name in COLOUR_NAMES], dtype=torch.float32, device=device) / 255.0


# ---------------------------------------------------------------------------------------------- sampling


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: Tensor | float, high: Tensor | float) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _other_colour(generator: torch.Generator, excluded: Tensor) -> Tensor:
    """A colour index different from `excluded`, uniform over the rest."""
    pick = torch.randint(len(COLOUR_NAMES) - 1, excluded.shape, generator=generator)
    return pick + (pick >= excluded).long()


def sample_scenes(batch: int, config: DataConfig, generator: torch.Generator) -> SceneBatch:
    size = float(config.image_size)
    counts = 1 + (torch.rand(batch, generator=generator) < config.two_shape_probability).long()
    two = counts == 2
    layouts = torch.randint(2, (batch,), generator=generator)
    backgrounds = torch.randint(len(COLOUR_NAMES), (batch,), generator=generator)
    colours = torch.stack([_other_colour(generator, backgrounds) for _ in range(2)], dim=1)
    shapes = torch.randint(len(SHAPES), (batch, 2), generator=generator)
    size_classes = torch.randint(3, (batch, 2), generator=generator)

    # Regions: the whole image, or the two halves along the layout's axis.
    region_low = torch.zeros(batch, 2, 2)
    region_high = torch.full((batch, 2, 2), size)
    axis = layouts  # 0: split along x, 1: split along y
    for slot in range(2):
        split_low = torch.where(two, torch.full((batch,), size / 2 * slot), torch.zeros(batch))
        split_high = torch.where(two, torch.full((batch,), size / 2 * (slot + 1)), torch.full((batch,), size))
        region_low[torch.arange(batch), slot, axis] = split_low
        region_high[torch.arange(batch), slot, axis] = split_high
    half_short_side = (region_high - region_low).amin(dim=2) / 2  # [B, 2]

    fractions = torch.tensor(SIZE_FRACTIONS)
    single_fraction = _uniform(generator, (batch, 2), fractions[size_classes, 0], fractions[size_classes, 1])
    pair_fraction = _uniform(generator, (batch, 2), *TWO_SHAPE_FRACTION)
    fraction = torch.where(two[:, None], pair_fraction, single_fraction)
    radii = fraction * (half_short_side - MARGIN_PIXELS)

    low = region_low + (radii + MARGIN_PIXELS)[..., None]
    high = region_high - (radii + MARGIN_PIXELS)[..., None]
    centres = _uniform(generator, (batch, 2, 2), low, high)
    max_angle = math.radians(config.max_rotation_degrees)
    angles = _uniform(generator, (batch, 2), -max_angle, max_angle)
    colour_offsets = _uniform(generator, (batch, 3, 3), -config.colour_jitter, config.colour_jitter)
    return SceneBatch(shapes, colours, backgrounds, centres, radii, angles, size_classes, counts, layouts,
                      colour_offsets)


# ---------------------------------------------------------------------------------------------- captions


def position_phrase(centre_x: float, centre_y: float, image_size: int) -> str:
    column = min(int(3 * centre_x / image_size), 2)
    row = min(int(3 * centre_y / image_size), 2)
    return POSITION_PHRASES[row][column]


@dataclass(frozen=True)
class Scene:
    """One scene of a SceneBatch as plain Python numbers (captions are built from these, fast)."""

    shapes: tuple[int, int]
    colours: tuple[int, int]
    background: int
    centres: tuple[tuple[float, float], tuple[float, float]]
    size_classes: tuple[int, int]
    count: int
    layout: int


def scene_records(scenes: SceneBatch) -> list[Scene]:
    columns = zip(scenes.shapes.tolist(), scenes.colours.tolist(), scenes.backgrounds.tolist(),
                  scenes.centres.tolist(), scenes.size_classes.tolist(), scenes.counts.tolist(),
                  scenes.layouts.tolist())
    return [Scene(tuple(s), tuple(c), b, (tuple(p[0]), tuple(p[1])), tuple(z), n, layout)
            for s, c, b, p, z, n, layout in columns]


def colour_word(colour: int, config: DataConfig, rng: random.Random) -> str:
    """The colour's name, or, at the config's mislabelling rate, another colour's name.

    Real captions are noisy, and that noise is what classifier-free guidance corrects: with a few wrong
    colour words the conditional model alone is unsure of the colour, and guidance sharpens it.
    """
    if rng.random() < config.mislabelled_colour_probability:
        return rng.choice([name for index, name in enumerate(COLOUR_NAMES) if index != colour])
    return COLOUR_NAMES[colour]


def _object_phrase(scene: Scene, slot: int, config: DataConfig, rng: random.Random, size_word: str = "") -> str:
    words = [size_word] if size_word else []
    words += [colour_word(scene.colours[slot], config, rng), SHAPES[scene.shapes[slot]]]
    return with_article(" ".join(words))


def caption(scene: Scene, config: DataConfig, rng: random.Random) -> str:
    """One caption from the grammar; the base form is "a {colour} {shape} on a {colour} background".

    Single shapes may add a size word ("small", "large") and a position phrase ("at the top left");
    two-shape scenes are "A and B", "A to the left of B", "B to the right of A", "A above B" or "B below A",
    where A is the left/upper shape.
    """
    background = f"on {with_article(colour_word(scene.background, config, rng))} background"
    if scene.count == 1:
        size_word = SIZE_WORDS[scene.size_classes[0]] if rng.random() < config.size_word_probability else ""
        parts = [_object_phrase(scene, 0, config, rng, size_word)]
        if rng.random() < config.position_word_probability:
            parts.append(position_phrase(*scene.centres[0], config.image_size))
        return " ".join(parts + [background])
    first, second = _object_phrase(scene, 0, config, rng), _object_phrase(scene, 1, config, rng)
    horizontal = scene.layout == HORIZONTAL
    forms = (
        f"{first} and {second}",
        f"{first} to the left of {second}" if horizontal else f"{first} above {second}",
        f"{second} to the right of {first}" if horizontal else f"{second} below {first}",
    )
    return f"{rng.choice(forms)} {background}"


def captions(scenes: SceneBatch, config: DataConfig, rng: random.Random) -> list[str]:
    return [caption(scene, config, rng) for scene in scene_records(scenes)]


# ---------------------------------------------------------------------------------------------- drawing
# Signed distances (negative inside) in units of the shape's circumradius, y up; after Inigo Quilez's
# 2D distance functions. Each shape fits inside the unit circle.


def _circle(x: Tensor, y: Tensor) -> Tensor:
    return torch.sqrt(x * x + y * y) - 0.85


def _square(x: Tensor, y: Tensor) -> Tensor:
    half_side = 0.7
    qx, qy = x.abs() - half_side, y.abs() - half_side
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _triangle(x: Tensor, y: Tensor) -> Tensor:
    k = math.sqrt(3.0)
    half_side = k / 2  # equilateral, circumradius 1, centroid at the origin, apex up
    x = x.abs() - half_side
    y = y + half_side / k
    fold = (x + k * y) > 0
    x, y = torch.where(fold, (x - k * y) / 2, x), torch.where(fold, (-k * x - y) / 2, y)
    x = x - x.clamp(-2 * half_side, 0)
    return -torch.sqrt(x * x + y * y) * torch.sign(y)


def _star(x: Tensor, y: Tensor) -> Tensor:
    outer, inner_ratio = 1.0, 0.45  # five points up
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x, k2y = -k1x, k1y
    x = x.abs()
    d = (k1x * x + k1y * y).clamp(min=0)
    x, y = x - 2 * d * k1x, y - 2 * d * k1y
    d = (k2x * x + k2y * y).clamp(min=0)
    x, y = x - 2 * d * k2x, y - 2 * d * k2y
    x = x.abs()
    y = y - outer
    bax, bay = inner_ratio * -k1y, inner_ratio * k1x - 1.0
    h = ((x * bax + y * bay) / (bax * bax + bay * bay)).clamp(0, outer)
    return torch.sqrt((x - bax * h) ** 2 + (y - bay * h) ** 2) * torch.sign(y * bax - x * bay)


def _hexagon(x: Tensor, y: Tensor) -> Tensor:
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    apothem = 0.866025404  # circumradius 1, flat top and bottom
    x, y = x.abs(), y.abs()
    d = (kx * x + ky * y).clamp(max=0)
    x, y = x - 2 * d * kx, y - 2 * d * ky
    x = x - x.clamp(-kz * apothem, kz * apothem)
    y = y - apothem
    return torch.sqrt(x * x + y * y) * torch.sign(y)


def _heart(x: Tensor, y: Tensor) -> Tensor:
    # Quilez's heart has its tip at the origin and spans about 1.1 up; centre and shrink it to the unit circle.
    scale = 0.65
    x, y = x.abs() * scale, y * scale + 0.55
    lobe = torch.sqrt((x - 0.25) ** 2 + (y - 0.75) ** 2) - math.sqrt(2.0) / 4
    s = (x + y).clamp(min=0) * 0.5
    body = torch.sqrt(torch.minimum(x * x + (y - 1.0) ** 2, (x - s) ** 2 + (y - s) ** 2)) * torch.sign(x - y)
    return torch.where(x + y > 1.0, lobe, body) / scale


SHAPE_DISTANCES: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (_circle, _square, _triangle, _star, _hexagon, _heart)


def _coverage(scenes: SceneBatch, slot: int, grid_x: Tensor, grid_y: Tensor) -> Tensor:
    """[B, H, W] fraction of each pixel covered by the shape in `slot`."""
    device = grid_x.device
    cx, cy = (scenes.centres[:, slot, i].to(device)[:, None, None] for i in range(2))
    radius = scenes.radii[:, slot].to(device)[:, None, None]
    angle = scenes.angles[:, slot].to(device)[:, None, None]
    dx, dy = grid_x - cx, grid_y - cy
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Rotate into the shape's frame, scale to unit circumradius, flip y to point up.
    u = (cos * dx + sin * dy) / radius
    v = -(-sin * dx + cos * dy) / radius
    shape_ids = scenes.shapes[:, slot].to(device)[:, None, None]
    distance = torch.zeros_like(u)
    for index, shape_distance in enumerate(SHAPE_DISTANCES):
        distance = torch.where(shape_ids == index, shape_distance(u, v), distance)
    return (0.5 - distance * radius).clamp(0, 1)


def render(scenes: SceneBatch, image_size: int, device: torch.device | str = "cpu") -> Tensor:
    """[B, 3, S, S] float images in [-1, 1] (the VAE's range)."""
    device = torch.device(device)
    pixel_centres = torch.arange(image_size, device=device, dtype=torch.float32) + 0.5
    grid_y, grid_x = torch.meshgrid(pixel_centres, pixel_centres, indexing="ij")
    table = colour_table(device)
    offsets = scenes.colour_offsets.to(device)
    image = (table[scenes.backgrounds.to(device)] + offsets[:, 0])[:, :, None, None]
    image = image.expand(-1, -1, image_size, image_size)
    present = torch.stack([torch.ones(len(scenes), dtype=torch.bool), scenes.counts == 2], dim=1).to(device)
    for slot in range(2):
        colour = (table[scenes.colours[:, slot].to(device)] + offsets[:, slot + 1])[:, :, None, None]
        cover = _coverage(scenes, slot, grid_x, grid_y) * present[:, slot, None, None]
        image = torch.lerp(image, colour, cover[:, None])
    return (image.clamp(0, 1) * 2 - 1).contiguous()


def nearest_colour_name(rgb: Tensor) -> str:
    """The named colour closest to one RGB pixel given in [-1, 1]."""
    pixel = (rgb.float().cpu() + 1) / 2
    return COLOUR_NAMES[int(((colour_table() - pixel) ** 2).sum(dim=1).argmin())]
