"""Extras: post-process one finished image (upscale with one or two upscalers, restore faces).

It runs the one extras request (modules/io/extras_request.py) that the Extras tab, the Midjourney
grid's U1-U4 and /sdapi/v1/extra-single-image fill. Faces are restored before upscaling unless
`upscale_first` says otherwise: the face models work on 512x512 crops, so restoring the small image
costs less and the upscaler then enlarges the restored detail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from modules.io.extras_request import RESIZE_BY, RESIZE_TO, ExtrasFieldError, ExtrasRequest, ExtrasSource
from modules.postprocess import upscalers
from modules.postprocess.face_restoration import FaceRestorers, not_installed_note
from modules.postprocess.upscaler_models import UpscalerRegistry

MAX_SIDE = 8192  # an extras result larger than this is refused before any work is done


@dataclass
class ExtrasResult:
    image: Image.Image
    info: str  # AUTOMATIC1111's html_info text: "Postprocess upscale by: 2, Postprocess upscaler: ..."
    notes: list[str] = field(default_factory=list)


def target_size(width: int, height: int, request: ExtrasRequest) -> tuple[float, tuple[int, int] | None]:
    """The upscale factor, and the exact size to crop to (resize-to mode with cropping) or None."""
    if request.resize_mode == RESIZE_TO:
        scale = max(request.upscaling_resize_w / width, request.upscaling_resize_h / height)
        crop = (request.upscaling_resize_w, request.upscaling_resize_h) if request.upscaling_crop else None
        return scale, crop
    return request.upscaling_resize, None


def upscaled_size(width: int, height: int, request: ExtrasRequest) -> tuple[int, int]:
    """The size the upscaler makes, before any crop."""
    scale, _ = target_size(width, height, request)
    return round(width * scale), round(height * scale)


def check_extras(request: ExtrasRequest, sources: Sequence[ExtrasSource], models: UpscalerRegistry | None) -> None:
    """ExtrasFieldError for a name this server does not know or a result larger than MAX_SIDE: checked before
    a job is queued, and again by the job (a model file may have gone meanwhile)."""
    for name in ("upscaler_1", "upscaler_2"):
        try:
            upscalers.check_pixel_upscaler(getattr(request, name), models, with_latent_modes=False)
        except upscalers.UnknownUpscalerError as e:
            raise ExtrasFieldError(name, str(e)) from None
    if request.upscaler_1 == "None":
        return
    for source in sources:
        width, height = upscaled_size(source.image.width, source.image.height, request)
        if max(width, height) > MAX_SIDE:
            raise ExtrasFieldError("upscaling_resize" if request.resize_mode == RESIZE_BY else "upscaling_resize_w",
                                   f"{source.field} would become {width}x{height}; the largest side allowed is "
                                   f"{MAX_SIDE}")


def _centre_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


def _upscale(image: Image.Image, request: ExtrasRequest, models: UpscalerRegistry | None,
             info: dict[str, object], check_interrupt: Callable[[], None] | None) -> Image.Image:
    _, crop = target_size(image.width, image.height, request)
    width, height = upscaled_size(image.width, image.height, request)
    first = upscalers.upscale_image(image, request.upscaler_1, width, height, models, check_interrupt)
    if request.resize_mode == RESIZE_TO:
        info["Postprocess upscale to"] = f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
    else:
        info["Postprocess upscale by"] = f"{request.upscaling_resize:g}"
    info["Postprocess upscaler"] = request.upscaler_1
    if request.upscaler_2 != "None" and request.extras_upscaler_2_visibility > 0:
        second = upscalers.upscale_image(image, request.upscaler_2, width, height, models, check_interrupt)
        first = Image.blend(first.convert("RGB"), second.convert("RGB"), request.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = request.upscaler_2
    if crop is not None and first.size != crop:
        first = _centre_crop(first, crop)
        info["Postprocess crop to"] = f"{crop[0]}x{crop[1]}"
    return first


def _restore_faces(image: Image.Image, request: ExtrasRequest, restorers: FaceRestorers | None,
                   info: dict[str, object], notes: list[str]) -> Image.Image:
    for name, visibility, extra in (
            ("GFPGAN", request.gfpgan_visibility, {}),
            ("CodeFormer", request.codeformer_visibility, {"CodeFormer weight": f"{request.codeformer_weight:g}"})):
        if visibility <= 0:
            continue
        if restorers is None or name not in restorers.names():
            notes.append(not_installed_note(name))
            continue
        restored = restorers.restore(image, name, visibility=visibility, codeformer_weight=request.codeformer_weight)
        image = restored.image
        notes += restored.notes
        info[f"{name} visibility"] = f"{visibility:g}"
        info.update(extra)
    return image


def run_extras(image: Image.Image, request: ExtrasRequest, upscaler_models: UpscalerRegistry | None,
               face_restorers: FaceRestorers | None,
               check_interrupt: Callable[[], None] | None = None) -> ExtrasResult:
    """Post-process one image. Raises ExtrasFieldError (a ValueError) naming a bad setting."""
    check_extras(request, [ExtrasSource(image)], upscaler_models)
    info: dict[str, object] = {}
    notes: list[str] = []
    wants_upscale = request.upscaler_1 != "None"  # as in AUTOMATIC1111: no first upscaler, no resize
    steps: list[Callable[[Image.Image], Image.Image]] = [
        lambda im: _restore_faces(im, request, face_restorers, info, notes),
        lambda im: _upscale(im, request, upscaler_models, info, check_interrupt) if wants_upscale else im,
    ]
    if request.upscale_first:
        steps.reverse()
    result = image.convert("RGB")
    for step in steps:
        if check_interrupt is not None:
            check_interrupt()
        result = step(result)
    return ExtrasResult(result, ", ".join(f"{k}: {v}" for k, v in info.items()), notes)

