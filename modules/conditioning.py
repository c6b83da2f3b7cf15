"""Prompt text -> the UNet's conditioning tensors, per model family.

SD 1.x uses CLIP ViT-L's last layer; SD 2.x OpenCLIP's penultimate layer with the final norm;
SDXL concatenates both encoders' penultimate layers and adds the pooled, projected OpenCLIP
output plus size/crop "time ids". The result is a flat dict of tensors
(`context`, and for SDXL `pooled` and `time_ids`) that guidance can batch without knowing what
the keys mean.
"""

from __future__ import annotations

import torch

from modules.sd_model import StableDiffusionModel, TextEncoder

MAX_TOKENS = 77


def _tokenize(encoder: TextEncoder, prompts: list[str], device: torch.device) -> torch.Tensor:
    ids = encoder.tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                            return_tensors="pt").input_ids
    return ids.to(device)


def _text_model(encoder: torch.nn.Module) -> torch.nn.Module:
    # transformers >= 5.6 flattened CLIPTextModel; older releases nest it under .text_model
    return getattr(encoder, "text_model", encoder)


@torch.no_grad()
def _hidden_states(encoder: TextEncoder, prompts: list[str], device: torch.device):
    ids = _tokenize(encoder, prompts, device)
    return encoder.model(input_ids=ids, output_hidden_states=True)


@torch.no_grad()
def encode_prompts(model: StableDiffusionModel, prompts: list[str], width: int, height: int,
                   clip_skip: int = 1, aesthetic_score: float = 6.0) -> dict[str, torch.Tensor]:
    device = model.policy.device
    if model.family.startswith("sd1"):
        (clip_l,) = model.text_encoders
        out = _hidden_states(clip_l, prompts, device)
        hidden = out.hidden_states[-clip_skip] if clip_skip > 1 else out.last_hidden_state
        if clip_skip > 1:
            hidden = _text_model(clip_l.model).final_layer_norm(hidden)
        return {"context": hidden.float()}
    if model.family.startswith("sd2"):
        (open_clip,) = model.text_encoders
        out = _hidden_states(open_clip, prompts, device)
        hidden = _text_model(open_clip.model).final_layer_norm(out.hidden_states[-1 - max(clip_skip, 1)])
        return {"context": hidden.float()}
    return _encode_sdxl(model, prompts, width, height, aesthetic_score)


def _encode_sdxl(model: StableDiffusionModel, prompts: list[str], width: int, height: int,
                 aesthetic_score: float) -> dict[str, torch.Tensor]:
    device = model.policy.device
    contexts, pooled = [], None
    for encoder in model.text_encoders:
        out = _hidden_states(encoder, prompts, device)
        contexts.append(out.hidden_states[-2].float())
        if encoder.kind == "open_clip":
            pooled = out.text_embeds.float()
    batch = len(prompts)
    if model.family == "sdxl_refiner":
        ids = [height, width, 0, 0, aesthetic_score]
    else:
        ids = [height, width, 0, 0, height, width]
    time_ids = torch.tensor([ids] * batch, dtype=torch.float32, device=device)
    return {"context": torch.cat(contexts, dim=-1), "pooled": pooled, "time_ids": time_ids}
