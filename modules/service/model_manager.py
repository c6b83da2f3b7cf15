"""The one owner of loaded models. Built once at start-up and passed to whoever needs it.

It lists checkpoints and VAEs, loads one checkpoint at a time (switching frees the previous one
first, so peak memory is one model), and holds the device/dtype policy. Loading is serialised by
a lock; callers get the loaded model object and never reach into the manager's state.
"""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path
import torch

from modules.accel.compile_helpers import HelperPool, pool_for_load
from modules.accel.runner import ModelRunner, RunnerSettings
from modules.models import lora
from modules.models.embeddings import EmbeddingDatabase, discover_embedding_files, load_embeddings
from modules.models import vae as vae_files
from modules.models.checkpoints import CheckpointInfo, find_checkpoint, list_checkpoints
from modules.models.devices import DevicePolicy
from modules.models.hashes import HashCache
from modules.io.paths import SHIPPED_CHECKPOINTS, Paths
from modules.models.safe_load import ModelFileError
from modules.models.sd_loader import inspect_checkpoint, load_checkpoint
from modules.models.sd_model import StableDiffusionModel
from modules.pipeline.job import Resources
from modules.postprocess.face_restoration import FaceRestorers
from modules.postprocess.upscaler_models import UpscalerRegistry

log = logging.getLogger(__name__)

# The small model the project trains and ships: the default only when no other checkpoint is present.
EMBEDDED_CHECKPOINT_NAMES = frozenset(path.name for path in SHIPPED_CHECKPOINTS)


def _upscaler_sources(paths: Paths) -> dict[str, list[Path]]:
    """Per kind, the user's upscaler folders and then the shipped upscaler files."""
    kinds = dict.fromkeys([*paths.upscaler_dirs, *paths.shipped_upscalers])
    return {kind: [*paths.upscaler_dirs.get(kind, ()), *paths.shipped_upscalers.get(kind, ())] for kind in kinds}


class NoCheckpointError(RuntimeError):
    pass


class UnknownCheckpointError(ValueError):
    pass


class ModelManager:
    def __init__(self, paths: Paths, policy: DevicePolicy, *, preferred_checkpoint: str | None = None,
                 hash_files: bool = True, vae_choice: str = vae_files.AUTOMATIC):
        self.paths = paths
        self.policy = policy
        self.preferred_checkpoint = preferred_checkpoint
        self.vae_choice = vae_choice
        self._hashes = HashCache(paths.cache_file) if hash_files else None
        self._lock = threading.RLock()
        self._loaded: StableDiffusionModel | None = None
        self._runner: ModelRunner | None = None  # runs the loaded model's parts fast (accel/runner.py)
        self._checkpoints: list[CheckpointInfo] = []
        self._vaes: list[vae_files.VaeInfo] = []
        self._embeddings: tuple[object, EmbeddingDatabase] | None = None
        self.lora_cache = lora.LoraCache()
        self.lora_files: list[lora.LoraFile] = []
        self.upscalers = UpscalerRegistry(_upscaler_sources(paths), policy.device,
                                          half=policy.unet_dtype == torch.float16)
        self.face_restorers = FaceRestorers(paths.face_restorer_dirs, policy.device,
                                            half=policy.unet_dtype == torch.float16)
        self.refresh()

    # ---- listing -------------------------------------------------------------------------
    def refresh(self) -> list[CheckpointInfo]:
        extra = (Path(self.preferred_checkpoint),) if self.preferred_checkpoint and \
            Path(self.preferred_checkpoint).is_file() else ()
        with self._lock:
            self._checkpoints = list_checkpoints(self.paths.checkpoint_dirs, self._hashes, extra,
                                                 fallback_files=self.paths.shipped_checkpoints)
            self._vaes = vae_files.list_vaes(self.paths.vae_dirs, self.paths.checkpoint_dirs)
            self.upscalers.refresh()
            self.face_restorers.refresh()
            self.lora_files = lora.list_lora_files(self.paths.lora_dirs)
            return list(self._checkpoints)

    @property
    def checkpoints(self) -> list[CheckpointInfo]:
        return list(self._checkpoints)

    @property
    def vaes(self) -> list[vae_files.VaeInfo]:
        return list(self._vaes)

    def default_checkpoint(self) -> CheckpointInfo:
        if not self._checkpoints:
            folders = ", ".join(str(p) for p in self.paths.checkpoint_dirs)
            raise NoCheckpointError(f"no checkpoint found: put a .safetensors or .ckpt file in {folders}")
        if self.preferred_checkpoint:
            preferred = find_checkpoint(self._checkpoints, self.preferred_checkpoint) or \
                next((c for c in self._checkpoints if c.path.resolve() == Path(self.preferred_checkpoint).resolve()),
                     None)
            if preferred:
                return preferred
        user_checkpoints = [c for c in self._checkpoints if c.name not in EMBEDDED_CHECKPOINT_NAMES]
        return (user_checkpoints or self._checkpoints)[0]

    def find(self, query: str) -> CheckpointInfo:
        info = find_checkpoint(self._checkpoints, query)
        if info is None:
            raise UnknownCheckpointError(f"unknown checkpoint {query!r}; available: "
                                         f"{', '.join(c.title for c in self._checkpoints) or '(none)'}")
        return info

    def native_size(self, info: CheckpointInfo) -> int | None:
        """The size the checkpoint was trained at, without loading it; None if it cannot be read."""
        try:
            return inspect_checkpoint(info.path).image_size
        except (ModelFileError, ValueError):
            return None

    def resources(self, model: StableDiffusionModel | None = None) -> Resources:
        """Upscalers, LoRA files, styles, and the embeddings and runner that fit `model`, for one generation."""
        return Resources(upscalers=self.upscalers, face_restorers=self.face_restorers,
                         lora_files=list(self.lora_files), lora_cache=self.lora_cache,
                         embeddings=self.embeddings_for(model) if model is not None else None,
                         runner=self.runner_for(model),
                         styles_file=self.paths.styles_file)

    def embeddings_for(self, model: StableDiffusionModel) -> EmbeddingDatabase:
        """Textual inversions of the embeddings folder that fit the model, reloaded when the folder changes."""
        folder = self.paths.embeddings_dir
        files = discover_embedding_files(folder) if folder.is_dir() else []
        key = (model.checkpoint.path, tuple((f, f.stat().st_mtime_ns) for f in files))
        with self._lock:
            if self._embeddings is None or self._embeddings[0] != key:
                database = load_embeddings(folder, model) if files else EmbeddingDatabase()
                for name, reason in database.skipped.items():
                    log.info("Embedding %s skipped: %s", name, reason)
                self._embeddings = (key, database)
            return self._embeddings[1]

    # ---- loading -------------------------------------------------------------------------
    @property
    def loaded(self) -> StableDiffusionModel | None:
        return self._loaded

    @property
    def runner(self) -> ModelRunner | None:
        """The loaded model's runner (None when no model is loaded)."""
        return self._runner

    def runner_for(self, model: StableDiffusionModel | None) -> ModelRunner | None:
        """The runner of `model` while it is the loaded one; None for any other (it was unloaded)."""
        with self._lock:
            return self._runner if model is not None and model is self._loaded else None

    def get(self, query: str | None = None) -> StableDiffusionModel:
        """The model for `query` (a title, name or hash), or the current/default one, loading it if needed."""
        with self._lock:
            info = self.find(query) if query else (self._loaded.checkpoint if self._loaded else
                                                   self.default_checkpoint())
            vae = vae_files.resolve_vae(self.vae_choice, info.path, self._vaes)
            current = self._loaded
            if current is not None and current.checkpoint.path == info.path and \
                    current.vae_name == (vae.path.name if vae else None):
                return current
            del current  # a reference held here would keep the old model's memory through the load
            self.unload()
            log.info("Loading %s", info.title)
            helpers = self._compile_helpers_for(info)
            try:
                model = load_checkpoint(info, self.policy, vae.path if vae else None)
            except BaseException:
                if helpers is not None:
                    helpers.close()
                raise
            self._runner = ModelRunner(model, RunnerSettings.from_policy(self.policy), helper_pool=helpers)
            self._loaded = model
            return model

    def _compile_helpers_for(self, info: CheckpointInfo) -> HelperPool | None:
        """With --compile, the warm-up after the load compiles in helper processes; they start now, so
        their start-up (imports, CUDA) overlaps the load (compile_helpers.HelperPool)."""
        if not (self.policy.compile and self.policy.replays_graphs):
            return None
        return pool_for_load(self.policy.device, self.policy.compile_helpers, Path(info.path).stat().st_size)

    def set_vae(self, choice: str) -> None:
        with self._lock:
            if choice not in (vae_files.AUTOMATIC, vae_files.NONE):
                vae_files.resolve_vae(choice, Path("."), self._vaes)  # raises for an unknown name
            self.vae_choice = choice

    def unload(self) -> None:
        with self._lock:
            if self._loaded is None:
                return
            model, self._loaded = self._loaded, None
            runner, self._runner = self._runner, None
            # Graph runners call back into the runner (a reference cycle): closing it lets the model
            # go as soon as the last reference does, not at some later garbage collection.
            runner.close()
            del model, runner
            gc.collect()
            if torch.cuda.is_available():
                # cuBLAS keeps a workspace per stream it ran on, graph-capture streams included.
                torch._C._cuda_clearCublasWorkspaces()
                torch.cuda.empty_cache()
