"""The one typed request shared by the UI, the HTTP API, the queue and the infotext writer.

Field names are AUTOMATIC1111's API names, so its clients' JSON validates as it is.
"""

from __future__ import annotations

from typing import Literal

from PIL import Image
from pydantic import ConfigDict, Field, field_validator, model_validator

from modules.sampling.rng import NoiseSource
from modules.sampling.registry import split_sampler_and_schedule
from modules.sampling.schedules import find_schedule
from modules.io.strict_input import StrictInput

UINT32_MAX = 2**32 - 1
# Far beyond any useful prompt (the text encoder reads 75-token chunks), small enough that parsing
# and tokenising a hostile one costs nothing. The UI and the API share it.
MAX_PROMPT_CHARS = 20_000
MIN_SIDE, MAX_SIDE = 64, 2048


class Txt2ImgRequest(StrictInput):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    steps: int = Field(20, ge=1, le=150)
    sampler_name: str = "Euler"
    scheduler: str = "Automatic"
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    # Any size in range is accepted and rounded down to a multiple of 8 (the latent is 1/8 of it), as
    # AUTOMATIC1111 does; the infotext and `info` report the size that was made.
    width: int = Field(512, ge=MIN_SIDE, le=MAX_SIDE)
    height: int = Field(512, ge=MIN_SIDE, le=MAX_SIDE)
    seed: int = Field(-1, ge=-1, le=UINT32_MAX)
    subseed: int = Field(-1, ge=-1, le=UINT32_MAX)
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_h: int = Field(-1, ge=-1, le=2048)
    seed_resize_from_w: int = Field(-1, ge=-1, le=2048)
    batch_size: int = Field(1, ge=1, le=64)  # the UI slider stops at 8, as in AUTOMATIC1111; the API goes further
    n_iter: int = Field(1, ge=1, le=100)
    clip_skip: int = Field(1, ge=1, le=12)
    # Sampler options; None keeps each sampler's own default.
    s_churn: float | None = Field(None, ge=0.0)
    s_tmin: float | None = Field(None, ge=0.0)
    s_tmax: float | None = Field(None, ge=0.0)
    s_noise: float | None = Field(None, ge=0.0)
    eta: float | None = Field(None, ge=0.0, le=1.0)
    randn_source: NoiseSource = "CPU"
    eta_noise_seed_delta: int = Field(0, ge=0, le=UINT32_MAX)
    # Imagen-style thresholding of the guided x0, so high CFG scales do not burn the image.
    thresholding: Literal["none", "static", "dynamic", "mimic"] = "none"
    threshold_percentile: float = Field(0.995, gt=0.0, le=1.0)
    mimic_scale: float = Field(7.0, ge=0.0, le=30.0)
    # Hires fix: a first pass at width x height, an upscale, and a second img2img pass.
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1.0, le=4.0)
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = Field(0, ge=0, le=150)
    hr_resize_x: int = Field(0, ge=0, le=4096)
    hr_resize_y: int = Field(0, ge=0, le=4096)
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    denoising_strength: float = Field(0.7, ge=0.0, le=1.0)
    styles: list[str] = Field(default_factory=list)
    emphasis: Literal["Original", "No norm", "Ignore", "None"] = "Original"
    stop_at_fraction: float = Field(1.0, gt=0.0, le=1.0)  # `--stop N`: stop sampling at N% and decode
    restore_faces: bool = False  # with the face restorer the settings pick (face_restoration_model)
    save_images: bool = True
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    # Pasted AUTOMATIC1111 parameters: every field the request leaves unset is taken from them.
    infotext: str | None = None

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, side: int) -> int:
        return side // 8 * 8

    @model_validator(mode="before")
    @classmethod
    def _fill_from_infotext(cls, data):
        if isinstance(data, dict) and data.get("infotext"):
            from modules.io.infotext import request_fields_from_infotext

            pasted = request_fields_from_infotext(str(data["infotext"]), set(cls.model_fields))
            data = {**pasted, **{k: v for k, v in data.items() if v is not None or k not in pasted}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _split_combined_sampler_name(cls, data):
        """`DPM++ 2M Karras` means sampler `DPM++ 2M` with schedule type `Karras`, as in AUTOMATIC1111."""
        if isinstance(data, dict) and data.get("sampler_name"):
            spec, schedule = split_sampler_and_schedule(str(data["sampler_name"]), data.get("scheduler") or None)
            data = {**data, "sampler_name": spec.name, "scheduler": schedule}
        elif isinstance(data, dict) and data.get("scheduler"):
            data = {**data, "scheduler": find_schedule(str(data["scheduler"])).label}
        return data


class Img2ImgRequest(Txt2ImgRequest):
    """img2img and inpainting: the txt2img fields plus the init image, mask and how to use them."""

    model_config = ConfigDict(extra="ignore", arbitrary_types_allowed=True)

    init_images: list[Image.Image] = Field(default_factory=list)
    resize_mode: int = Field(0, ge=0, le=3)  # Just resize, Crop and resize, Resize and fill, latent upscale
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    mask: Image.Image | None = None
    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)  # 1: "Inpaint not masked"
    inpainting_fill: int = Field(1, ge=0, le=3)  # fill, original, latent noise, latent nothing
    inpaint_full_res: bool = False  # "Only masked"
    inpaint_full_res_padding: int = Field(32, ge=0, le=256)
    initial_noise_multiplier: float = Field(1.0, ge=0.0, le=1.5)

    @field_validator("init_images")
    @classmethod
    def _one_image_at_least(cls, images: list[Image.Image]) -> list[Image.Image]:
        if not images:
            raise ValueError("img2img needs at least one init image")
        return images
