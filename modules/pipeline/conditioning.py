"""Prompt text -> the UNet's conditioning tensors.

Each text encoder says which layer the UNet was trained on (SD 1.x: the last, normed; SD 2.x: the
penultimate, normed; SDXL: both encoders' penultimate, raw). Clip skip N moves N-1 layers further
back. Prompts go through AUTOMATIC1111's prompt language (emphasis, BREAK, long prompts in 77-token
chunks, textual inversion embeddings: see text_encoding). SDXL concatenates its two encoders' outputs
and adds the pooled, projected OpenCLIP output plus size/crop "time ids". The result is a flat dict
of tensors (`context`, and for SDXL `pooled` and `time_ids`) that guidance can batch without knowing
what the keys mean; `context` is (batch, 77 * chunks, width).
"""

from __future__ import annotations

import torch

from modules.models.embeddings import EmbeddingDatabase
from modules.models.sd_model import StableDiffusionModel
from modules.pipeline.text_encoding import DEFAULT_EMPHASIS, TextConditioning, encode_model_texts


@torch.no_grad()
def encode_prompts(model: StableDiffusionModel, prompts: list[str], width: int, height: int,
                   clip_skip: int = 1, aesthetic_score: float = 6.0, *, emphasis: str = DEFAULT_EMPHASIS,
                   embeddings: EmbeddingDatabase | None = None, is_negative: bool = False) -> dict[str, torch.Tensor]:
    """Conditioning dict of a batch of prompts.

    `is_negative`: SDXL, like AUTOMATIC1111, conditions an all-empty negative prompt on zeros (text
    states and pooled output) rather than on the encoding of "".
    """
    return conditioning_dict(model, encode_model_texts(model, prompts, clip_skip, emphasis, embeddings),
                             len(prompts), width, height, aesthetic_score,
                             zero_text=is_negative and model.is_sdxl and all(p == "" for p in prompts))


def conditioning_dict(model: StableDiffusionModel, text: TextConditioning, batch: int, width: int, height: int,
                      aesthetic_score: float = 6.0, zero_text: bool = False) -> dict[str, torch.Tensor]:
    device = model.policy.device
    context = text.context.to(device)
    cond = {"context": torch.zeros_like(context) if zero_text else context}
    if model.is_sdxl:
        pooled = text.pooled.to(device)
        cond["pooled"] = torch.zeros_like(pooled) if zero_text else pooled
        cond["time_ids"] = sdxl_time_ids(model.family, batch, width, height, aesthetic_score, device)
    return cond


def sdxl_time_ids(family: str, batch: int, width: int, height: int, aesthetic_score: float,
                  device: torch.device) -> torch.Tensor:
    """Original size, crop offset and target size (base) or aesthetic score (refiner)."""
    if family == "sdxl_refiner":
        ids = [height, width, 0, 0, aesthetic_score]
    else:
        ids = [height, width, 0, 0, height, width]
    return torch.tensor([ids] * batch, dtype=torch.float32, device=device)
