"""Read back what a generated picture shows: background colour, shape colour and shape kind.

Colours are the nearest named colour of the border (background) and of the largest region that
differs from it (the shape). The shape is told by OpenCV contour analysis: its outline is compared
with reference outlines of each shape by Hu-moment matching (`cv2.matchShapes`, invariant to
position, size and rotation).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from tools.embedded_model.dataset import COLOUR_NAMES, COLOURS, SHAPE_DISTANCES, SHAPES

_PALETTE = np.array([COLOURS[name] for name in COLOUR_NAMES], dtype=np.float32)
_FOREGROUND_DISTANCE = 60.0
_STAR_SOLIDITY = 0.75  # area / convex-hull area: about 0.6 for the star, above 0.85 for the others  # RGB distance from the background colour that counts as "shape"


@dataclass(frozen=True)
class Reading:
    background: str
    foreground: str | None
    shape: str | None


def nearest_colour(rgb: np.ndarray) -> str:
    return COLOUR_NAMES[int(((_PALETTE - rgb.astype(np.float32)) ** 2).sum(axis=1).argmin())]


@functools.cache
def reference_contours() -> dict[str, np.ndarray]:
    size = 256
    centre = (torch.arange(size, dtype=torch.float32) + 0.5 - size / 2) / (size * 0.4)
    grid_y, grid_x = torch.meshgrid(centre, centre, indexing="ij")
    contours = {}
    for name, distance in zip(SHAPES, SHAPE_DISTANCES):
        mask = (distance(grid_x, -grid_y) < 0).numpy().astype(np.uint8) * 255
        found, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        contours[name] = max(found, key=cv2.contourArea)
    return contours


def _largest_region(mask: np.ndarray) -> np.ndarray | None:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return None
    largest = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    if stats[largest, cv2.CC_STAT_AREA] < 0.005 * mask.size:
        return None
    return (labels == largest).astype(np.uint8) * 255


def solidity(contour: np.ndarray) -> float:
    hull_area = cv2.contourArea(cv2.convexHull(contour))
    return cv2.contourArea(contour) / hull_area if hull_area else 0.0


def classify_shape(region: np.ndarray) -> str:
    found, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(found, key=cv2.contourArea)
    # Hu moments alone confuse a small star with a triangle; a star is the one deeply concave shape.
    if solidity(contour) < _STAR_SOLIDITY:
        return "star"
    scores = {name: cv2.matchShapes(contour, ref, cv2.CONTOURS_MATCH_I1, 0.0)
              for name, ref in reference_contours().items() if name != "star"}
    return min(scores, key=scores.get)


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
