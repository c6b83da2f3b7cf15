"""What a user can choose from: checkpoints, VAEs, upscalers, face restorers, LoRAs, embeddings and styles.

The UI and the API read their dropdowns and listings here. Everything is read from disk or from the
registries; nothing here runs a model or touches the device (that is the queue's worker's job).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.io import styles
from modules.io.generation_request import Txt2ImgRequest
from modules.models import lora
from modules.models import vae as vae_files
from modules.pipeline.prompts import parser as prompt_parser
from modules.pipeline.hires import hires_size
from modules.pipeline.prompts.text_encoding import count_tokens
from modules.postprocess import upscalers
from modules.service.model_manager import ModelManager, NoCheckpointError

DEFAULT_SIZE = 512


@dataclass(frozen=True)
class LoadedModel:
    """The checkpoint in memory now, as the page's status line names it."""

    title: str
    family: str
    native_size: int


@dataclass
class Catalog:
    manager: ModelManager

    # -- checkpoints and VAEs
    def refresh(self) -> None:
        """Read the model folders again (new or removed files)."""
        self.manager.refresh()

    @property
    def checkpoints(self) -> list:
        return self.manager.checkpoints

    def checkpoint_titles(self) -> list[str]:
        return [c.title for c in self.manager.checkpoints]

    @property
    def checkpoint_dirs(self) -> list[Path]:
        return self.manager.paths.checkpoint_dirs

    def checkpoint_title(self, query: str) -> str:
        """The full title of the checkpoint a name, title or hash means (ValueError if none)."""
        return self.manager.find(query).title

    def default_size(self) -> int:
        """The default checkpoint's native size: a 512 default would tile a small model."""
        try:
            return self.manager.native_size(self.manager.default_checkpoint()) or DEFAULT_SIZE
        except NoCheckpointError:
            return DEFAULT_SIZE

    def loaded(self) -> LoadedModel | None:
        model = self.manager.loaded
        if model is None:
            return None
        return LoadedModel(model.checkpoint.title, model.family, model.native_size)

    @property
    def compiles(self) -> bool:
        """--compile: graphs are compiled in the background after a load."""
        return self.manager.policy.compile

    @property
    def vaes(self) -> list:
        return self.manager.vaes

    def vae_choices(self) -> list[str]:
        return [vae_files.AUTOMATIC, vae_files.NONE, *(v.name for v in self.manager.vaes)]

    # -- upscalers and face restorers
    @property
    def upscaler_files(self) -> list:
        return self.manager.upscalers.files

    def upscaler_model_names(self) -> list[str]:
        return self.manager.upscalers.names()

    latent_modes = tuple(upscalers.LATENT_MODES)
    pixel_resamplers = tuple(upscalers.PIXEL_RESAMPLERS)

    def hires_upscalers(self) -> list[str]:
        """The hires fix's choices, as AUTOMATIC1111 orders them: latent modes, resamplers, models."""
        return [*upscalers.LATENT_MODES, "Lanczos", "Nearest", *self.upscaler_model_names()]

    def extras_upscalers(self) -> list[str]:
        return [*upscalers.PIXEL_RESAMPLERS, *self.upscaler_model_names()]

    def face_restorer_names(self) -> list[str]:
        return self.manager.face_restorers.names()

    def face_restorer_listing(self) -> list[dict[str, Any]]:
        restorers = self.manager.face_restorers
        return [{"name": name, "cmd_dir": str(file.path.parent) if (file := restorers.file(name)) else None}
                for name in restorers.names()]

    # -- LoRAs, embeddings, styles
    def lora_listing(self) -> list[dict[str, Any]]:
        def metadata(path: Path) -> dict[str, Any]:
            try:
                return lora.lora_metadata(path)
            except Exception:  # an unreadable file still shows up, without metadata
                return {}

        return [{"name": f.name, "alias": f.alias, "path": str(f.path), "metadata": metadata(f.path)}
                for f in self.manager.lora_files]

    def embedding_listing(self) -> dict[str, Any]:
        """AUTOMATIC1111's /embeddings answer for the loaded model (empty with none loaded)."""
        model = self.manager.loaded
        if model is None:
            return {"loaded": {}, "skipped": {}}
        database = self.manager.embeddings_for(model)

        def item(embedding) -> dict[str, Any]:
            widths = embedding.widths
            shape = widths if isinstance(widths, int) else next(iter(widths.values()), 0)
            return {"step": embedding.step, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": shape,
                    "vectors": embedding.vector_count}

        return {"loaded": {name: item(e) for name, e in database.loaded.items()},
                "skipped": dict(database.skipped)}

    @property
    def styles_file(self) -> Path:
        return self.manager.paths.styles_file

    def styles(self) -> dict[str, styles.PromptStyle]:
        return styles.load_styles(self.styles_file)

    def style_names(self) -> list[str]:
        return list(self.styles())

    # -- what a request will do
    def prompt_tokens(self, text: str) -> tuple[int, int] | None:
        """(tokens, limit) of the longest text the prompt schedules, as AUTOMATIC1111's counter shows
        them; None before a model is loaded (its tokenizer counts). The tokenizer runs on the CPU."""
        model = self.manager.loaded
        if model is None or not text:
            return None
        text, _ = lora.parse_lora_tags(prompt_parser.strip_comments(text))
        texts = [t for t, _ in prompt_parser.parse_and(text)] or [text]
        counts = [count_tokens(model, scheduled) for part in texts
                  for scheduled in prompt_parser.schedule_for(part, 20, negative=True).distinct_texts()]
        return max(counts, key=lambda c: c[0])

    @staticmethod
    def hires_size(request: Txt2ImgRequest) -> tuple[int, int]:
        return hires_size(request)
