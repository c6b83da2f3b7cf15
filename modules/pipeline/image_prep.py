"""Preparing init images and masks for img2img and inpainting, as AUTOMATIC1111 does.

Pure functions over PIL images: resize modes, mask blur and inversion, the "only masked" crop
region, and the `fill` masked-content mode.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from PIL import Image, ImageFilter, ImageOps

LANCZOS = Image.Resampling.LANCZOS


class ResizeMode(IntEnum):
    JUST_RESIZE = 0
    CROP_AND_RESIZE = 1
    RESIZE_AND_FILL = 2
    LATENT_UPSCALE = 3  # "Just resize (latent upscale)": resize the latent, not the pixels


RESIZE_MODE_NAMES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


class MaskedContent(IntEnum):
    FILL = 0
    ORIGINAL = 1
    LATENT_NOISE = 2
    LATENT_NOTHING = 3


MASKED_CONTENT_NAMES = ("fill", "original", "latent noise", "latent nothing")


def resize_image(mode: ResizeMode, image: Image.Image, width: int, height: int) -> Image.Image:
    """AUTOMATIC1111's images.resize_image for modes 0-2 (mode 3 resizes pixels like mode 0)."""
    if mode in (ResizeMode.JUST_RESIZE, ResizeMode.LATENT_UPSCALE):
        return image.resize((width, height), LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == ResizeMode.CROP_AND_RESIZE:
        scaled_w = width if ratio > src_ratio else image.width * height // image.height
        scaled_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = image.resize((scaled_w, scaled_h), LANCZOS)
        result = Image.new("RGB", (width, height))
        result.paste(resized, box=(width // 2 - scaled_w // 2, height // 2 - scaled_h // 2))
        return result
    # Resize and fill: fit inside, then stretch the edge rows/columns into the empty bands.
    scaled_w = width if ratio < src_ratio else image.width * height // image.height
    scaled_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((scaled_w, scaled_h), LANCZOS)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - scaled_w // 2, height // 2 - scaled_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - scaled_h // 2
        if fill > 0:
            result.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                         box=(0, fill + scaled_h))
    elif ratio > src_ratio:
        fill = width // 2 - scaled_w // 2
        if fill > 0:
            result.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                         box=(fill + scaled_w, 0))
    return result


def prepare_mask(mask: Image.Image, blur: int, invert: bool) -> Image.Image:
    """Greyscale mask (white = repaint), inverted for "Inpaint not masked", Gaussian-blurred."""
    mask = mask.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def masked_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """Bounding box (x1, y1, x2, y2) of the mask's non-zero pixels, grown by `padding`, inside the image."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width),
            min(y2 + padding, mask.height))


def expand_to_aspect(box: tuple[int, int, int, int], width: int, height: int,
                     image_width: int, image_height: int) -> tuple[int, int, int, int]:
    """Grow the crop region to the processing aspect ratio, staying inside the image where possible."""
    x1, y1, x2, y2 = box
    box_w, box_h = x2 - x1, y2 - y1
    target_ratio = width / height
    if box_w / box_h < target_ratio:
        need = int(box_h * target_ratio) - box_w
        x1, x2 = x1 - need // 2, x2 + need - need // 2
        if x1 < 0:
            x2, x1 = min(x2 - x1, image_width), 0
        if x2 > image_width:
            x1, x2 = max(x1 - (x2 - image_width), 0), image_width
    else:
        need = int(box_w / target_ratio) - box_h
        y1, y2 = y1 - need // 2, y2 + need - need // 2
        if y1 < 0:
            y2, y1 = min(y2 - y1, image_height), 0
        if y2 > image_height:
            y1, y2 = max(y1 - (y2 - image_height), 0), image_height
    return x1, y1, x2, y2


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The `fill` masked content: the masked area painted with blurred surrounding colours.

    A normalised convolution at shrinking radii (like AUTOMATIC1111's repeated blurred composites):
    wide blurs give every masked pixel a colour, narrower ones refine it near the mask's edge.
    """
    image = image.convert("RGB")
    keep = np.asarray(mask.convert("L"), dtype=np.float32)[..., None] < 128
    pixels = np.asarray(image, dtype=np.float32)
    known = (pixels * keep).astype(np.float32)
    weight = Image.fromarray((keep[..., 0] * 255).astype(np.uint8))
    result = pixels.copy()
    for radius in (256, 64, 16, 4, 2):
        channels = [np.asarray(Image.fromarray(known[..., c].astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)),
                               dtype=np.float32) for c in range(3)]
        blurred = np.stack(channels, axis=-1)
        coverage = np.asarray(weight.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)[..., None] / 255
        estimate = blurred / np.maximum(coverage, 1e-3)
        result = np.where(~keep & (coverage > 0.02), estimate, result)
    return Image.fromarray(np.clip(result, 0, 255).astype(np.uint8))


def composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Generated pixels where the mask is white, original ones where it is black (blended between)."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), mask.convert("L"))
