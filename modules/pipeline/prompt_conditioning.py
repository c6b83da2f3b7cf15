"""A prompt's conditioning for every sampling step: prompt editing, alternation and AND.

Each distinct text along the schedule is encoded once. `at_step(step)` gives the AND parts with
their weights and the negative conditioning in force at a 1-based sampling step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modules.pipeline import prompt_parser
from modules.pipeline.conditioning import conditioning_dict
from modules.pipeline.text_encoding import encode_model_texts
from modules.models.embeddings import EmbeddingDatabase
from modules.models.sd_model import StableDiffusionModel

Cond = dict[str, torch.Tensor]


@dataclass
class PromptConditioning:
    positive: prompt_parser.ConditioningSchedule
    negative: prompt_parser.ConditioningSchedule
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


def _with_image_cond(cond: Cond, image_cond: torch.Tensor | None) -> Cond:
    return cond if image_cond is None else {**cond, "image_cond": image_cond}


def build_prompt_conditioning(model: StableDiffusionModel, prompt: str, negative: str, steps: int, width: int,
                              height: int, clip_skip: int = 1, emphasis: str = "Original",
                              embeddings: EmbeddingDatabase | None = None,
                              image_cond: torch.Tensor | None = None) -> PromptConditioning:
    if not model.family.startswith("sd1"):
        # AUTOMATIC1111 applies clip skip to SD 1.x only (SD 2.x and SDXL ignore the setting by default).
        clip_skip = 1
    positive = prompt_parser.schedule_for(prompt, steps)
    negative_schedule = prompt_parser.schedule_for(negative, steps, negative=True)

    used: dict = {}

    def encode(texts: list[str], is_negative: bool) -> dict[str, Cond]:
        encoded = {}
        for text in texts:
            conditioning = encode_model_texts(model, [text], clip_skip, emphasis, embeddings)
            used.update(conditioning.used_embeddings)
            zero = is_negative and model.is_sdxl and text == ""  # as encode_prompts does for SDXL
            encoded[text] = _with_image_cond(conditioning_dict(model, conditioning, 1, width, height,
                                                               zero_text=zero), image_cond)
        return encoded

    encoded = encode(positive.distinct_texts(), False)
    negative_encoded = encode(negative_schedule.distinct_texts(), True)
    return PromptConditioning(positive, negative_schedule, encoded, negative_encoded, used)
