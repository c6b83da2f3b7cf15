"""From API requests to queued generations, and from finished jobs to AUTOMATIC1111's responses."""

from __future__ import annotations

import json
from typing import Any

from modules.io import png_encoding
from modules.app.api.images import as_base64, decode_image, encode_png
from modules.app.api.models import GenerationResponse, Img2ImgApiRequest, Txt2ImgApiRequest
from modules.io.generation_request import Img2ImgRequest, Txt2ImgRequest
from modules.service.generation_service import SETTING_FIELDS, Generated
from modules.io.image_saving import image_grid
from modules.service.catalog import Catalog

MAX_HIRES_SIDE = 4096
VERSION = "1.0.0"


class FieldError(ValueError):
    """A request value that is valid on its own but not here (an unknown name, a size too large)."""

    def __init__(self, field: str | tuple[str, ...], message: str):
        self.loc = (field,) if isinstance(field, str) else tuple(field)
        super().__init__(f"{'.'.join(self.loc)}: {message}")
        self.message = message


# Left out by the client, these come from elsewhere: the settings (SETTING_FIELDS), or the checkpoint's
# native size (so a request without a size suits whichever model runs it).
_FILLED_WHEN_UNSET = {*SETTING_FIELDS, "width", "height"}


def _core_fields(api: Txt2ImgApiRequest, target: type[Txt2ImgRequest]) -> dict[str, Any]:
    """The shared request's fields; those filled from elsewhere only when the client set them."""
    names = set(target.model_fields) - {"infotext", "init_images", "mask"}
    return {name: getattr(api, name) for name in names
            if name in api.model_fields and (name in api.model_fields_set or name not in _FILLED_WHEN_UNSET)}


def check_names(api: Txt2ImgApiRequest, catalog: Catalog) -> None:
    """Names the request mentions that only the server knows; unknown ones are 422, not a failed job."""
    style_names = catalog.style_names()
    if unknown := [name for name in api.styles if name not in style_names]:
        raise FieldError("styles", f"unknown style {', '.join(map(repr, unknown))}; "
                                   f"styles here: {', '.join(style_names) or '(none: create one in the UI)'}")
    if api.script_name:
        raise FieldError("script_name", f"script {api.script_name!r} not found; no scripts are installed")
    if api.enable_hr:
        known = [*catalog.latent_modes, *catalog.pixel_resamplers, *catalog.upscaler_model_names()]
        if api.hr_upscaler not in known:
            raise FieldError("hr_upscaler", f"unknown upscaler {api.hr_upscaler!r}; choose one of: {', '.join(known)}")
        width, height = catalog.hires_size(api)
        if max(width, height) > MAX_HIRES_SIDE or min(width, height) < 64:
            raise FieldError("hr_scale", f"hires size {width}x{height} is outside 64..{MAX_HIRES_SIDE}")


def to_txt2img(api: Txt2ImgApiRequest) -> Txt2ImgRequest:
    return Txt2ImgRequest.model_validate(_core_fields(api, Txt2ImgRequest))


def to_img2img(api: Img2ImgApiRequest) -> Img2ImgRequest:
    """Decodes the images (ImageFieldError names the bad one)."""
    images = [decode_image(data, f"init_images.{index}") for index, data in enumerate(api.init_images)]
    mask = decode_image(api.mask, "mask") if api.mask else None
    fields = _core_fields(api, Img2ImgRequest)
    fields.update(init_images=images, mask=mask,
                  mask_blur=api.mask_blur if api.mask_blur is not None else max(api.mask_blur_x, api.mask_blur_y),
                  initial_noise_multiplier=1.0 if api.initial_noise_multiplier is None
                  else api.initial_noise_multiplier)
    return Img2ImgRequest.model_validate(fields)


def request_notes(api: Txt2ImgApiRequest, ignored_settings: list[str]) -> list[str]:
    notes = [f"alwayson script {name!r} is not installed here; ignored" for name in api.alwayson_scripts]
    notes += [f"setting {key!r} is not known here; ignored" for key in ignored_settings]
    return notes


def info_dict(generated: Generated, job_id: str, with_grid: bool, notes: list[str]) -> dict[str, Any]:
    """AUTOMATIC1111's `Processed.js()`, plus this server's notes and job id; it describes the job as it
    ran (Midjourney parameters and styles applied), as the images' infotexts do."""
    request, result = ran_request(generated), generated.result
    count = len(result.images)
    infotexts = ([result.infotexts[0]] if with_grid else []) + list(result.infotexts)
    return {
        "prompt": request.prompt, "all_prompts": [request.prompt] * count,
        "negative_prompt": request.negative_prompt, "all_negative_prompts": [request.negative_prompt] * count,
        "seed": result.seeds[0] if result.seeds else request.seed, "all_seeds": list(result.seeds),
        "subseed": request.subseed, "all_subseeds": [request.subseed + i for i in range(count)],
        "subseed_strength": request.subseed_strength, "width": request.width, "height": request.height,
        "sampler_name": request.sampler_name, "scheduler": request.scheduler, "cfg_scale": request.cfg_scale,
        "steps": request.steps, "batch_size": request.batch_size, "restore_faces": request.restore_faces,
        "face_restoration_model": generated.settings.face_restoration_model if request.restore_faces else None, "sd_model_name": generated.checkpoint.model_name,
        "sd_model_hash": generated.checkpoint.shorthash, "sd_vae_name": generated.vae_name,
        "sd_vae_hash": None, "seed_resize_from_w": request.seed_resize_from_w,
        "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": request.denoising_strength if isinstance(request, Img2ImgRequest) or request.enable_hr
        else None,
        "extra_generation_params": {}, "index_of_first_image": 1 if with_grid else 0, "infotexts": infotexts,
        "styles": list(request.styles), "job_timestamp": generated.job_timestamp, "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": False, "version": VERSION,
        "interrupted": generated.interrupted, "job_id": job_id, "notes": notes + list(result.warnings),
    }


def ran_request(generated: Generated) -> Txt2ImgRequest:
    return generated.result.request or generated.request


def response_parameters(api: Txt2ImgApiRequest, generated: Generated) -> dict[str, Any]:
    """The request's fields with the values the job ran with (size, seed, prompts after parameters)."""
    parameters = api.model_dump(mode="json")
    ran = ran_request(generated).model_dump(mode="json", exclude={"infotext", "init_images", "mask"})
    parameters.update({name: value for name, value in ran.items() if name in parameters})
    if isinstance(api, Img2ImgApiRequest):
        parameters.update(init_images=None, mask=None)
    return parameters


def build_response(api: Txt2ImgApiRequest, generated: Generated, job_id: str, notes: list[str],
                   init_images: list | None = None) -> GenerationResponse:
    result = generated.result
    with_grid = generated.settings.return_grid and len(result.images) > 1
    images: list[str] = []
    if api.send_images:
        if with_grid:
            images.append(encode_png(image_grid(result.images), result.infotexts[0]))
        pngs = result.pngs if len(result.pngs) == len(result.images) else \
            png_encoding.encode_pngs(result.images, result.infotexts)
        images += [as_base64(png) for png in pngs]
        if init_images and getattr(api, "include_init_images", False):
            images += [encode_png(image) for image in init_images]
    info = info_dict(generated, job_id, with_grid, notes)
    return GenerationResponse(images=images, parameters=response_parameters(api, generated), info=json.dumps(info))
