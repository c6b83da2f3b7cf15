"""Prompt text -> the UNet's conditioning tensors.

Each text encoder says which layer the UNet was trained on (SD 1.x: the last, normed; SD 2.x: the
penultimate, normed; SDXL: both encoders' penultimate, raw). Clip skip N moves N-1 layers further
back. SDXL concatenates its two encoders' outputs and adds the pooled, projected OpenCLIP output
plus size/crop "time ids". The result is a flat dict of tensors (`context`, and for SDXL `pooled`
and `time_ids`) that guidance can batch without knowing what the keys mean.
"""

from __future__ import annotations

import torch

from modules.sd_model import StableDiffusionModel, TextEncoder

MAX_TOKENS = 77


def _text_model(encoder: torch.nn.Module) -> torch.nn.Module:
    # transformers >= 5.6 flattened CLIPTextModel; CLIPTextModelWithProjection still nests .text_model
    return getattr(encoder, "text_model", encoder)


@torch.no_grad()
def encode_with(encoder: TextEncoder, prompts: list[str], device: torch.device,
                clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states of the encoder's conditioning layer, pooled projection or None)."""
    ids = encoder.tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                            return_tensors="pt").input_ids.to(device)
    out = encoder.model(input_ids=ids, output_hidden_states=True)
    # hidden_states[-1] is the last layer's output before the final norm.
    depth = (1 if encoder.output_layer == "last" else 2) + max(clip_skip, 1) - 1
    depth = min(depth, len(out.hidden_states) - 1)
    hidden = out.hidden_states[-depth]
    if encoder.final_layer_norm:
        hidden = _text_model(encoder.model).final_layer_norm(hidden)
    pooled = getattr(out, "text_embeds", None)
    return hidden.float(), (pooled.float() if pooled is not None else None)


@torch.no_grad()
def encode_prompts(model: StableDiffusionModel, prompts: list[str], width: int, height: int,
                   clip_skip: int = 1, aesthetic_score: float = 6.0) -> dict[str, torch.Tensor]:
    device = model.policy.device
    contexts, pooled = [], None
    for encoder in model.text_encoders:
        hidden, encoder_pooled = encode_with(encoder, prompts, device, clip_skip)
        contexts.append(hidden)
        pooled = encoder_pooled if encoder_pooled is not None else pooled
    cond = {"context": torch.cat(contexts, dim=-1)}
    if model.is_sdxl:
        cond["pooled"] = pooled
        cond["time_ids"] = sdxl_time_ids(model.family, len(prompts), width, height, aesthetic_score, device)
    return cond


def sdxl_time_ids(family: str, batch: int, width: int, height: int, aesthetic_score: float,
                  device: torch.device) -> torch.Tensor:
    """Original size, crop offset and target size (base) or aesthetic score (refiner)."""
    if family == "sdxl_refiner":
        ids = [height, width, 0, 0, aesthetic_score]
    else:
        ids = [height, width, 0, 0, height, width]
    return torch.tensor([ids] * batch, dtype=torch.float32, device=device)
