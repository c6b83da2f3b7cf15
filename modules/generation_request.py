"""The one typed request shared by the UI, the HTTP API, the queue and the infotext writer."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modules.sampling.registry import find_sampler


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = Field(20, ge=1, le=150)
    sampler_name: str = "Euler"
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    width: int = Field(512, ge=64, le=2048, multiple_of=8)
    height: int = Field(512, ge=64, le=2048, multiple_of=8)
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    batch_size: int = Field(1, ge=1, le=8)
    n_iter: int = Field(1, ge=1, le=100)
    clip_skip: int = Field(1, ge=1, le=12)
    save_images: bool = True

    @field_validator("sampler_name")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        return find_sampler(value).name
