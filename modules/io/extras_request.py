"""The one typed extras request (upscale and restore faces of finished images), shared by the Extras
tab, the Midjourney grid's U1-U4 and /sdapi/v1/extra-single-image and extra-batch-images.

Field names are AUTOMATIC1111's API names, so its clients' JSON validates as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image
from pydantic import ConfigDict, Field, model_validator

from modules.io.image_saving import read_parameters
from modules.io.strict_input import StrictInput

RESIZE_BY, RESIZE_TO = 0, 1


class ExtrasRequest(StrictInput):
    model_config = ConfigDict(extra="ignore")

    resize_mode: Literal[0, 1] = RESIZE_BY  # 0: scale by upscaling_resize, 1: to upscaling_resize_w x _h
    upscaling_resize: float = Field(2.0, ge=1.0, le=8.0)
    upscaling_resize_w: int = Field(512, ge=1, le=8192)
    upscaling_resize_h: int = Field(512, ge=1, le=8192)
    upscaling_crop: bool = True
    upscaler_1: str = "None"  # as in AUTOMATIC1111: no first upscaler, no resize
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)
    gfpgan_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_weight: float = Field(0.0, ge=0.0, le=1.0)
    upscale_first: bool = False

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data):
        """AUTOMATIC1111's fields are all optional: null (or a number box left empty) means "not given"."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class ExtrasFieldError(ValueError):
    """A request value that is valid on its own but not for these images or this server (an unknown
    upscaler, a result too large); `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ExtrasSource:
    """One image to post-process and what its result keeps of it."""

    image: Image.Image
    field: str = "image"  # where it came from (a request field, a batch position), for messages
    parameters: str | None = None  # its infotext, carried on into the result's
    seed: int | None = None  # its seed, for the saved file's name

    @classmethod
    def of(cls, image: Image.Image, field: str = "image") -> ExtrasSource:
        """An uploaded image, with the infotext its file carries (PNG text chunk or EXIF)."""
        return cls(image, field, read_parameters(image))
