"""Saved settings: a small typed set of AUTOMATIC1111's `config.json` keys.

Values are validated on every change, written atomically (temporary file, fsync, rename), and a
damaged file is moved aside at start-up instead of stopping the server. Only settings that are
safe to change over the network live here: no output folders or file name patterns, so a client
can never point writes at code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from modules.sampling.rng import NoiseSource
from modules.io.strict_input import StrictInput

log = logging.getLogger(__name__)


class Settings(StrictInput):
    """AUTOMATIC1111's setting names, so its clients' `/sdapi/v1/options` payloads mean the same."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True, frozen=True)

    sd_model_checkpoint: str | None = None  # a title, name or hash; None: the default checkpoint
    sd_vae: str = "Automatic"
    CLIP_stop_at_last_layers: int = Field(1, ge=1, le=12)
    eta_noise_seed_delta: int = Field(0, ge=0, le=2**32 - 1)
    randn_source: NoiseSource = "CPU"
    samples_format: Literal["png"] = "png"  # API images are PNGs carrying their infotext
    return_grid: bool = True  # a grid of a multi-image batch comes first in API `images`
    live_previews_enable: bool = True
    show_progress_every_n_steps: int = Field(1, ge=-1, le=1000)
    # "Approx cheap" maps latents to RGB linearly (no VAE call); "Full" decodes with the model's VAE.
    show_progress_type: Literal["Approx cheap", "Full"] = "Approx cheap"
    face_restoration_model: str = "CodeFormer"
    code_former_weight: float = Field(0.5, ge=0.0, le=1.0)
    interrupt_after_current: bool = False


# AUTOMATIC1111 settings that name folders, files or file name patterns. None of them is a setting
# here, and a request that tries to set one is refused rather than ignored: over the network they
# would let a client point writes at code (AUTOMATIC1111 issue 2571).
_PATH_VALUED_KEY = re.compile(r"^(outdir_|directories_|save_to_dirs|ckpt_dir|vae_dir|temp_dir|"
                              r"filename_pattern)|(_dir|_dirs|_path|_paths|_filename|_filename_pattern)$")


def path_valued_keys(changes: dict[str, Any]) -> list[str]:
    return [key for key in changes if isinstance(key, str) and _PATH_VALUED_KEY.search(key)]


def known_keys() -> set[str]:
    return set(Settings.model_fields)


# Checks that values naming things (a checkpoint, a VAE, a face restorer) name something that exists:
# (settings, keys to check) -> {key: why it is refused}. Only the owner of the models can tell.
NameCheck = Callable[[Settings, set[str]], dict[str, str]]


def _unknown_names_error(problems: dict[str, str], settings: Settings) -> ValidationError:
    details = [InitErrorDetails(type=PydanticCustomError("unknown_name", "{why}", {"why": why}), loc=(key,),
                                input=getattr(settings, key, None)) for key, why in problems.items()]
    return ValidationError.from_exception_data("Settings", details)


class SettingsStore:
    """Thread-safe holder of the current Settings, persisted to one JSON file."""

    def __init__(self, path: Path, quarantine_dir: Path | None = None):
        self.path = Path(path)
        self.quarantine_dir = Path(quarantine_dir) if quarantine_dir else self.path.parent / "tmp"
        self._lock = threading.Lock()
        self._settings = self._load()
        self._name_check: NameCheck | None = None

    def check_names_with(self, check: NameCheck) -> None:
        """From now on, changes must name things that exist; saved names that no longer do (a VAE file
        deleted since) fall back to their defaults now, with a warning, instead of failing every job."""
        self._name_check = check
        with self._lock:
            problems = check(self._settings, set(known_keys()))
            if problems:
                for key, why in problems.items():
                    log.warning("Saved setting %s no longer resolves (%s); using %r", key, why,
                                Settings.model_fields[key].default)
                self._settings = self._settings.model_copy(
                    update={key: Settings.model_fields[key].default for key in problems})

    @property
    def current(self) -> Settings:
        return self._settings

    def _load(self) -> Settings:
        if not self.path.is_file():
            return Settings()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            self._quarantine(f"unreadable ({e})")
            return Settings()
        return self._valid_values(data)

    def _valid_values(self, data: dict) -> Settings:
        """Keep each value that validates; a wrong-typed one falls back to its default with a warning."""
        good: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known_keys():
                continue
            try:
                Settings.model_validate({key: value})
                good[key] = value
            except ValidationError:
                log.warning("Setting %s in %s has an invalid value %r; using the default", key, self.path, value)
        return Settings.model_validate(good)

    def _quarantine(self, why: str) -> None:
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self.quarantine_dir / f"{self.path.name}.{time.strftime('%Y%m%d-%H%M%S')}.bad"
        os.replace(self.path, target)
        log.warning("Settings file %s was %s; moved to %s and started with defaults", self.path, why, target)

    def validate_changes(self, changes: dict[str, Any]) -> tuple[Settings, list[str]]:
        """The settings with `changes` applied (raises ValidationError) and the keys that were ignored."""
        ignored = [key for key in changes if key not in known_keys()]
        merged = {**self._settings.model_dump(), **{k: v for k, v in changes.items() if k not in ignored}}
        settings = Settings.model_validate(merged)
        if self._name_check is not None and (problems := self._name_check(settings, set(changes) - set(ignored))):
            raise _unknown_names_error(problems, settings)
        return settings, ignored

    def update(self, changes: dict[str, Any]) -> list[str]:
        """Validate, apply and save; returns the keys that are not settings here (ignored)."""
        with self._lock:
            settings, ignored = self.validate_changes(changes)
            self._write(settings)
            self._settings = settings
        return ignored

    def _write(self, settings: Settings) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(settings.model_dump(), handle, indent=4)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, self.path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
