"""What a generation job takes besides the model and the request, and what it gives back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from modules.accel.runner import ModelRunner
from modules.io.generation_request import Txt2ImgRequest
from modules.models import lora
from modules.models.embeddings import EmbeddingDatabase


@dataclass
class Resources:
    """What a generation may use besides the checkpoint: model upscalers, face restorers, LoRA files."""

    upscalers: object | None = None  # UpscalerRegistry
    face_restorers: object | None = None  # FaceRestorers
    face_restoration_model: str = "CodeFormer"  # AUTOMATIC1111's setting of that name and its default
    code_former_weight: float = 0.5
    is_interrupted: Callable[[], bool] = lambda: False  # the job was interrupted: start no further batch
    lora_files: list = field(default_factory=list)  # lora.LoraFile
    lora_cache: lora.LoraCache = field(default_factory=lora.LoraCache)
    embeddings: EmbeddingDatabase | None = None  # the textual inversions that fit the loaded model
    styles_file: Path | None = None  # styles.csv
    runner: ModelRunner | None = None  # runs the model's parts fast (accel/runner.py); None: a plain one per job


@dataclass
class GenerationResult:
    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    grid_path: Path | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. LoRA names that were not found
    pngs: list[bytes] = field(default_factory=list)  # the saved PNG files' bytes, one per image, when saved as PNG
    # The request as it ran: styles applied, comments and Midjourney parameters turned into fields, seeds resolved.
    request: Txt2ImgRequest | None = None
