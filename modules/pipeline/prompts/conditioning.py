"""A prompt's conditioning for every sampling step: prompt editing, alternation and AND.

Each distinct text along the schedule is encoded once (text_encoding) and turned into the flat dict
of tensors the UNet takes: `context` (batch, 77 * chunks, width), and for SDXL `pooled` and
`time_ids` (the size/crop or aesthetic-score ids); guidance batches them without knowing what the
keys mean. `at_step(step)` gives the AND parts with their weights and the negative conditioning in
force at a 1-based sampling step.

Each text encoder says which layer the UNet was trained on (SD 1.x: the last, normed; SD 2.x: the
penultimate, normed; SDXL: both encoders' penultimate, raw); clip skip N moves N-1 layers further
back, for SD 1.x only, as AUTOMATIC1111 applies it by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modules.accel.runner import ModelRunner
from modules.models.embeddings import EmbeddingDatabase
from modules.models.sd_model import StableDiffusionModel
from modules.pipeline.prompts import parser
from modules.pipeline.prompts.text_encoding import TextConditioning, encode_model_texts

Cond = dict[str, torch.Tensor]


@dataclass
class PromptConditioning:
    positive: parser.ConditioningSchedule
    negative: parser.ConditioningSchedule
    encoded: dict[str, Cond]
    negative_encoded: dict[str, Cond]
    used_embeddings: dict = field(default_factory=dict)

    def at_step(self, step: int) -> tuple[list[tuple[Cond, float]], Cond]:
        parts = [(self.encoded[text], weight) for text, weight in self.positive.at_step(step).parts]
        ((negative_text, _),) = self.negative.at_step(step).parts
        return parts, self.negative_encoded[negative_text]

    @property
    def is_constant(self) -> bool:
        return len(self.positive.steps) == 1 and len(self.negative.steps) == 1


def conditioning_dict(model: StableDiffusionModel, text: TextConditioning, batch: int, width: int, height: int,
                      aesthetic_score: float = 6.0, zero_text: bool = False) -> Cond:
    """The UNet's keyword tensors for encoded texts; `zero_text` puts zeros where the text states go."""
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


def conditions_on_zeros(model: StableDiffusionModel, text: str, is_negative: bool) -> bool:
    """SDXL, like AUTOMATIC1111, conditions an empty negative prompt on zeros (text states and pooled
    output) rather than on the encoding of ""."""
    return is_negative and model.is_sdxl and text == ""


def _with_image_cond(cond: Cond, image_cond: torch.Tensor | None) -> Cond:
    return cond if image_cond is None else {**cond, "image_cond": image_cond}


def build_prompt_conditioning(model: StableDiffusionModel, prompt: str, negative: str, steps: int, width: int,
                              height: int, clip_skip: int = 1, emphasis: str = "Original",
                              embeddings: EmbeddingDatabase | None = None,
                              image_cond: torch.Tensor | None = None,
                              runner: ModelRunner | None = None) -> PromptConditioning:
    if not model.family.startswith("sd1"):
        # AUTOMATIC1111 applies clip skip to SD 1.x only (SD 2.x and SDXL ignore the setting by default).
        clip_skip = 1
    positive = parser.schedule_for(prompt, steps)
    negative_schedule = parser.schedule_for(negative, steps, negative=True)

    used: dict = {}

    def encode(texts: list[str], is_negative: bool) -> dict[str, Cond]:
        encoded = {}
        for text in texts:
            conditioning = encode_model_texts(model, [text], clip_skip, emphasis, embeddings, runner=runner)
            used.update(conditioning.used_embeddings)
            zero = conditions_on_zeros(model, text, is_negative)
            encoded[text] = _with_image_cond(conditioning_dict(model, conditioning, 1, width, height,
                                                               zero_text=zero), image_cond)
        return encoded

    encoded = encode(positive.distinct_texts(), False)
    negative_encoded = encode(negative_schedule.distinct_texts(), True)
    return PromptConditioning(positive, negative_schedule, encoded, negative_encoded, used)
