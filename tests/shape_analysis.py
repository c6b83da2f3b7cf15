"""Read back what a generated picture shows: background colour, shape colour and shape kind.

Colours are the nearest named colour of the border (background) and of the largest region that
differs from it (the shape). The shape is told by OpenCV region analysis: the region, moved to its
centroid and scaled to a fixed area (image moments), is compared by intersection over union with
each shape drawn the way the training data draws it, at tilts of up to 15 degrees.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from tools.embedded_model.dataset import COLOUR_NAMES, COLOURS, SHAPE_DISTANCES, SHAPES

_PALETTE = np.array([COLOURS[name] for name in COLOUR_NAMES], dtype=np.float32)
_FOREGROUND_DISTANCE = 60.0  # RGB distance from the background colour that counts as "shape"


@dataclass(frozen=True)
class Reading:
    background: str
    foreground: str | None
    shape: str | None


def nearest_colour(rgb: np.ndarray) -> str:
    return COLOUR_NAMES[int(((_PALETTE - rgb.astype(np.float32)) ** 2).sum(axis=1).argmin())]


_CANVAS = 64  # side of the normalised masks that are compared
_ROTATIONS = np.radians(np.arange(-15, 16, 5))  # the training pictures tilt shapes by up to 12 degrees


def normalised_mask(mask: np.ndarray) -> np.ndarray:
    """The mask moved so its centroid is the canvas centre and scaled to a fixed area, as booleans."""
    mask = (mask > 0).astype(np.uint8)
    moments = cv2.moments(mask, binaryImage=True)
    scale = (_CANVAS * 0.3) / np.sqrt(moments["m00"])  # the shape's area becomes 9 % of the canvas
    centre_x, centre_y = moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]
    matrix = np.array([[scale, 0, _CANVAS / 2 - scale * centre_x], [0, scale, _CANVAS / 2 - scale * centre_y]])
    warped = cv2.warpAffine(mask.astype(np.float32), matrix, (_CANVAS, _CANVAS), flags=cv2.INTER_AREA)
    return warped > 0.5


@functools.cache
def reference_masks() -> dict[str, list[np.ndarray]]:
    """Each shape drawn as the dataset draws it, at several tilts, normalised."""
    size = 256
    centre = (torch.arange(size, dtype=torch.float32) + 0.5 - size / 2) / (size * 0.4)
    grid_y, grid_x = torch.meshgrid(centre, centre, indexing="ij")
    masks = {}
    for name, distance in zip(SHAPES, SHAPE_DISTANCES):
        masks[name] = []
        for angle in _ROTATIONS:
            cos, sin = float(np.cos(angle)), float(np.sin(angle))
            x, y = cos * grid_x + sin * grid_y, -sin * grid_x + cos * grid_y
            masks[name].append(normalised_mask((distance(x, -y) < 0).numpy().astype(np.uint8)))
    return masks


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _largest_region(mask: np.ndarray) -> np.ndarray | None:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return None
    largest = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    if stats[largest, cv2.CC_STAT_AREA] < 0.005 * mask.size:
        return None
    return (labels == largest).astype(np.uint8) * 255


def classify_shape(region: np.ndarray) -> str:
    """The shape whose outline, at the best of a few tilts, overlaps the region most (IoU after
    normalising position and size)."""
    query = normalised_mask(region)
    scores = {name: max(_iou(query, reference) for reference in references)
              for name, references in reference_masks().items()}
    return max(scores, key=scores.get)


def read_image(image) -> Reading:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background_rgb = np.median(border, axis=0)
    distance = np.sqrt(((pixels - background_rgb) ** 2).sum(axis=2))
    mask = (distance > _FOREGROUND_DISTANCE).astype(np.uint8) * 255
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    region = _largest_region(mask)
    if region is None:
        return Reading(nearest_colour(background_rgb), None, None)
    core = cv2.erode(region, np.ones((3, 3), np.uint8))
    inside = pixels[(core if core.any() else region) > 0]
    return Reading(nearest_colour(background_rgb), nearest_colour(np.median(inside, axis=0)), classify_shape(region))
