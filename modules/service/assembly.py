"""The service built from the command line: the one place that wires the model manager, the job
queue and the saved settings together (for the server, webui.py; for the command-line tool)."""

from __future__ import annotations

import argparse

from modules.io.paths import Paths
from modules.models.devices import DevicePolicy
from modules.service.generation_service import GenerationService
from modules.service.job_queue import JobQueue
from modules.service.model_manager import ModelManager
from modules.service.settings_store import SettingsStore


def build_model_manager(args: argparse.Namespace, paths: Paths) -> ModelManager:
    return ModelManager(paths, DevicePolicy.from_args(args), preferred_checkpoint=args.ckpt,
                        hash_files=not args.no_hashing)


def build_service(args: argparse.Namespace, paths: Paths, manager: ModelManager | None = None,
                  settings: SettingsStore | None = None) -> GenerationService:
    settings = settings or SettingsStore(paths.config_file, paths.data_dir / "tmp")
    queue = JobQueue(max_queued=max(1, args.queue_size))
    return GenerationService(manager or build_model_manager(args, paths), queue, settings, paths.outputs_dir,
                             max_request_work=args.max_request_work)
