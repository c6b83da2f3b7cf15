"""Runs generations one at a time on the model manager's device.

A single lock serialises work on the device; the UI and the CLI call the same entry point.
"""

from __future__ import annotations

import threading
from pathlib import Path

from modules.generation_request import Txt2ImgRequest
from modules.model_manager import ModelManager
from modules.processing import GenerationResult, StepCallback, txt2img


class GenerationService:
    def __init__(self, manager: ModelManager, outputs_dir: Path):
        self.manager = manager
        self.outputs_dir = outputs_dir
        self._device_lock = threading.Lock()

    def txt2img(self, request: Txt2ImgRequest, checkpoint: str | None = None,
                callback: StepCallback | None = None) -> GenerationResult:
        with self._device_lock:
            model = self.manager.get(checkpoint)
            return txt2img(model, request, self.outputs_dir, callback, self.manager.resources(model))
