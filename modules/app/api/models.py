"""AUTOMATIC1111's `/sdapi/v1` request and response models.

The generation requests are the shared typed request with the API's own defaults (50 steps,
nothing saved unless asked) and its extra fields; images travel as base64 strings and are decoded
by the routes, before anything is queued. Fields AUTOMATIC1111 accepts that have no effect here
are still declared, so clients that always send them validate.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modules.io.extras_request import ExtrasRequest
from modules.io.generation_request import Txt2ImgRequest
from modules.io.strict_input import StrictInput
from modules.sampling.registry import UnknownSamplerError, split_sampler_and_schedule
from modules.sampling.schedules import UnknownScheduleError, find_schedule

TASK_ID_PATTERN = r"^[A-Za-z0-9_()\-]{1,64}$"
MAX_IMAGES_PER_REQUEST = 16
# "Use same sampler" / "Use same scheduler": AUTOMATIC1111's hires choices that mean "none given".
_SAME_AS_FIRST_PASS = {"use same sampler", "use same scheduler", ""}


def _accepts_none(annotation) -> bool:
    if annotation is None or annotation is type(None) or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_none(arg) for arg in typing.get_args(annotation))
    return False


def _without_nulls(model: type[BaseModel], data):
    """AUTOMATIC1111's fields are all optional: null means "not given", so the default applies."""
    if not isinstance(data, dict):
        return data
    fields = model.model_fields
    return {k: v for k, v in data.items() if v is not None or k not in fields or _accepts_none(fields[k].annotation)}


def _resolve_sampler(name: object, scheduler: object, field: str) -> tuple[str, str]:
    try:
        spec, schedule = split_sampler_and_schedule(str(name), str(scheduler) if scheduler else None)
    except UnknownSamplerError as e:
        raise ValueError(f"{field}: {e}") from None
    except UnknownScheduleError as e:
        raise ValueError(f"{field.replace('sampler_name', 'scheduler')}: {e}") from None
    return spec.name, schedule


class Txt2ImgApiRequest(Txt2ImgRequest):
    """`StableDiffusionTxt2ImgProcessingAPI`."""

    model_config = ConfigDict(extra="ignore")

    steps: int = Field(50, ge=1, le=150)  # the API's default; the UI's is 20
    sampler_name: str = ""
    sampler_index: str = "Euler"  # used when sampler_name is empty
    save_images: bool = False
    send_images: bool = True
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    force_task_id: str | None = Field(None, pattern=TASK_ID_PATTERN)
    # Accepted for compatibility; they change nothing here.
    tiling: bool | None = None
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_checkpoint_name: str | None = None
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    s_min_uncond: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data):
        return _without_nulls(cls, data)

    @model_validator(mode="before")
    @classmethod
    def _split_combined_sampler_name(cls, data):
        """sampler_name, else sampler_index; legacy names like `DPM++ 2M Karras` carry the schedule.
        Errors name the field, since a whole-request validator has no field location."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        name = data.get("sampler_name") or data.get("sampler_index") or "Euler"
        data["sampler_name"], data["scheduler"] = _resolve_sampler(name, data.get("scheduler"), "sampler_name")
        for field in ("hr_sampler_name", "hr_scheduler"):
            if isinstance(data.get(field), str) and data[field].strip().lower() in _SAME_AS_FIRST_PASS:
                data[field] = None
        if data.get("hr_sampler_name"):
            data["hr_sampler_name"], data["hr_scheduler"] = _resolve_sampler(
                data["hr_sampler_name"], data.get("hr_scheduler"), "hr_sampler_name")
        elif data.get("hr_scheduler"):
            try:
                data["hr_scheduler"] = find_schedule(str(data["hr_scheduler"])).label
            except UnknownScheduleError as e:
                raise ValueError(f"hr_scheduler: {e}") from None
        return data


class Img2ImgApiRequest(Txt2ImgApiRequest):
    """`StableDiffusionImg2ImgProcessingAPI`: images are base64 PNG/JPEG/WEBP (data URIs too)."""

    init_images: list[str] = Field(min_length=1, max_length=MAX_IMAGES_PER_REQUEST)
    resize_mode: int = Field(0, ge=0, le=3)
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur: int | None = Field(None, ge=0, le=64)
    mask_blur_x: int = Field(4, ge=0, le=64)
    mask_blur_y: int = Field(4, ge=0, le=64)
    mask_round: bool = True
    inpainting_fill: int = Field(0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(0, ge=0, le=256)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = Field(None, ge=0.0, le=1.5)
    latent_mask: str | None = None
    include_init_images: bool = False


class GenerationResponse(BaseModel):
    """`TextToImageResponse` / `ImageToImageResponse`."""

    images: list[str] | None = Field(None, description="base64 PNGs with the infotext in their `parameters` chunk")
    parameters: dict[str, Any]
    info: str = Field(description="JSON: seeds, infotexts and the other facts of the generation")


class ExtrasSingleImageRequest(ExtrasRequest):
    """`ExtrasSingleImageRequest`: the shared extras request and a base64 image."""

    image: str = Field(description="base64 image")
    show_extras_results: bool = True  # accepted for compatibility: the API always answers with the images


class FileData(StrictInput):
    data: str = Field(description="base64 image")
    name: str = Field("", max_length=255)


class ExtrasBatchImagesRequest(ExtrasRequest):
    """`ExtrasBatchImagesRequest`: the shared extras request and base64 images."""

    imageList: list[FileData] = Field(min_length=1, max_length=MAX_IMAGES_PER_REQUEST)
    show_extras_results: bool = True  # accepted for compatibility: the API always answers with the images


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class PNGInfoRequest(StrictInput):
    image: str = Field(description="base64 image")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None
    queued: int = Field(0, description="jobs waiting behind the running one")
    job_id: str | None = None
    warmup: str | None = Field(None, description="what --compile is compiling in the background, if anything")


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem | str]


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)
