"""Extras: post-process one finished image (upscale with one or two upscalers, restore faces).

The settings carry AUTOMATIC1111's field names, so the Extras tab and /sdapi/v1/extra-single-image
fill the same object. Faces are restored before upscaling unless `upscale_first` says otherwise:
the face models work on 512x512 crops, so restoring the small image costs less and the upscaler
then enlarges the restored detail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from modules.postprocess import upscalers
from modules.postprocess.face_restoration import FaceRestorers, not_installed_note
from modules.postprocess.upscaler_models import UpscalerRegistry

RESIZE_BY, RESIZE_TO = 0, 1
MAX_SIDE = 8192  # an extras result larger than this is refused before any work is done


@dataclass(frozen=True)
class ExtrasSettings:
    resize_mode: int = RESIZE_BY  # 0: scale by upscaling_resize, 1: to upscaling_resize_w x upscaling_resize_h
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscale_first: bool = False


@dataclass
class ExtrasResult:
    image: Image.Image
    info: str  # AUTOMATIC1111's html_info text: "Postprocess upscale by: 2, Postprocess upscaler: ..."
    notes: list[str] = field(default_factory=list)


def target_size(width: int, height: int, settings: ExtrasSettings) -> tuple[float, tuple[int, int] | None]:
    """The upscale factor, and the exact size to crop to (resize-to mode with cropping) or None."""
    if settings.resize_mode == RESIZE_TO:
        scale = max(settings.upscaling_resize_w / width, settings.upscaling_resize_h / height)
        crop = (settings.upscaling_resize_w, settings.upscaling_resize_h) if settings.upscaling_crop else None
        return scale, crop
    return settings.upscaling_resize, None


def _centre_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


def _upscale(image: Image.Image, settings: ExtrasSettings, models: UpscalerRegistry | None,
             info: dict[str, object], check_interrupt: Callable[[], None] | None) -> Image.Image:
    scale, crop = target_size(image.width, image.height, settings)
    width, height = round(image.width * scale), round(image.height * scale)
    if max(width, height) > MAX_SIDE:
        raise ValueError(f"the upscaled image would be {width}x{height}; the largest side allowed is {MAX_SIDE}")
    first = upscalers.upscale_image(image, settings.upscaler_1, width, height, models, check_interrupt)
    if settings.resize_mode == RESIZE_TO:
        info["Postprocess upscale to"] = f"{settings.upscaling_resize_w}x{settings.upscaling_resize_h}"
    else:
        info["Postprocess upscale by"] = f"{settings.upscaling_resize:g}"
    info["Postprocess upscaler"] = settings.upscaler_1
    if settings.upscaler_2 != "None" and settings.extras_upscaler_2_visibility > 0:
        second = upscalers.upscale_image(image, settings.upscaler_2, width, height, models, check_interrupt)
        first = Image.blend(first.convert("RGB"), second.convert("RGB"), settings.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = settings.upscaler_2
    if crop is not None and first.size != crop:
        first = _centre_crop(first, crop)
        info["Postprocess crop to"] = f"{crop[0]}x{crop[1]}"
    return first


def _restore_faces(image: Image.Image, settings: ExtrasSettings, restorers: FaceRestorers | None,
                   info: dict[str, object], notes: list[str]) -> Image.Image:
    for name, visibility, extra in (
            ("GFPGAN", settings.gfpgan_visibility, {}),
            ("CodeFormer", settings.codeformer_visibility, {"CodeFormer weight": f"{settings.codeformer_weight:g}"})):
        if visibility <= 0:
            continue
        if restorers is None or name not in restorers.names():
            notes.append(not_installed_note(name))
            continue
        restored = restorers.restore(image, name, visibility=visibility, codeformer_weight=settings.codeformer_weight)
        image = restored.image
        notes += restored.notes
        info[f"{name} visibility"] = f"{visibility:g}"
        info.update(extra)
    return image


def run_extras(image: Image.Image, settings: ExtrasSettings, upscaler_models: UpscalerRegistry | None,
               face_restorers: FaceRestorers | None,
               check_interrupt: Callable[[], None] | None = None) -> ExtrasResult:
    """Post-process one image. Raises ValueError (upscalers.UnknownUpscalerError) naming a bad setting."""
    for name in (settings.upscaler_1, settings.upscaler_2):
        upscalers.check_pixel_upscaler(name, upscaler_models, with_latent_modes=False)
    info: dict[str, object] = {}
    notes: list[str] = []
    wants_upscale = settings.upscaler_1 != "None"  # as in AUTOMATIC1111: no first upscaler, no resize
    steps: list[Callable[[Image.Image], Image.Image]] = [
        lambda im: _restore_faces(im, settings, face_restorers, info, notes),
        lambda im: _upscale(im, settings, upscaler_models, info, check_interrupt) if wants_upscale else im,
    ]
    if settings.upscale_first:
        steps.reverse()
    result = image.convert("RGB")
    for step in steps:
        if check_interrupt is not None:
            check_interrupt()
        result = step(result)
    return ExtrasResult(result, ", ".join(f"{k}: {v}" for k, v in info.items()), notes)

