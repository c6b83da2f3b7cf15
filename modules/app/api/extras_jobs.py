"""extra-single-image and extra-batch-images: decode and check everything, then one queue job."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from modules.postprocess import upscalers
from modules.app.api.generation import FieldError
from modules.app.api.images import decode_image
from modules.app.api.models import ExtrasBaseRequest
from modules.service.job_queue import Job, JobQueue


@dataclass
class ExtrasOutput:
    image: Image.Image
    info: str  # html_info
    infotext: str | None  # the source image's parameters, kept with the result


def _settings(req: ExtrasBaseRequest):
    from modules.postprocess.extras import ExtrasSettings

    return ExtrasSettings(**{name: getattr(req, name) for name in ExtrasSettings.__dataclass_fields__})


def _check(req: ExtrasBaseRequest, manager, images: list[tuple[str, Image.Image]]) -> None:
    from modules.postprocess.extras import MAX_SIDE, target_size

    known = [*upscalers.PIXEL_RESAMPLERS, *manager.upscalers.names()]
    for field in ("upscaler_1", "upscaler_2"):
        if getattr(req, field) not in known:
            raise FieldError(field, f"unknown upscaler {getattr(req, field)!r}; choose one of: {', '.join(known)}")
    if req.upscaler_1 == "None":
        return
    for field, image in images:
        scale, _ = target_size(image.width, image.height, _settings(req))
        width, height = round(image.width * scale), round(image.height * scale)
        if max(width, height) > MAX_SIDE:
            raise FieldError("upscaling_resize" if req.resize_mode == 0 else "upscaling_resize_w",
                             f"{field} would become {width}x{height}; the largest side allowed is {MAX_SIDE}")


def submit(manager, queue: JobQueue, req: ExtrasBaseRequest, sources: list[tuple[str, str]]) -> Job:
    """Raises ImageFieldError / FieldError for a bad request and QueueFullError, before queueing."""
    from modules.postprocess.extras import run_extras

    images = [(field, decode_image(data, field)) for field, data in sources]
    _check(req, manager, images)
    settings = _settings(req)

    def work(job: Job) -> list[ExtrasOutput]:
        outputs = []
        for _, image in images:
            result = run_extras(image, settings, manager.upscalers, getattr(manager, "face_restorers", None),
                                job.check_interrupt)
            info = "\n".join([result.info, *result.notes]).strip()
            outputs.append(ExtrasOutput(result.image, info, image.info.get("parameters")))
        return outputs

    return queue.submit("extras", work)
