"""Builds and serves the application (without the setup step that launch.py runs first)."""

from __future__ import annotations

import logging
import os
import sys
import threading


def create_app(args, manager, paths):
    import gradio as gr
    from fastapi import FastAPI

    from modules.generation_service import GenerationService
    from modules.ui import build_ui

    service = GenerationService(manager, paths.outputs_dir)
    app = FastAPI(title="Stable Diffusion web UI", docs_url="/docs" if args.api or args.nowebui else None)
    app.state.service = service
    if not args.nowebui:
        app = gr.mount_gradio_app(app, build_ui(service), path="/")
    return app


def _remove_partial_saves(temp_dir) -> None:
    """Files a killed process was writing when it died; they never reached outputs/."""
    for leftover in temp_dir.glob(".saving-*") if temp_dir.is_dir() else ():
        leftover.unlink(missing_ok=True)


def _preload(manager) -> None:
    from modules.model_manager import NoCheckpointError
    from modules.safe_load import ModelFileError

    try:
        model = manager.get()
        logging.getLogger("webui").info("Model loaded: %s (%s)", model.checkpoint.title, model.family)
    except NoCheckpointError as e:
        logging.getLogger("webui").warning("%s", e)
    except (ModelFileError, ValueError) as e:
        logging.getLogger("webui").error("Could not load the default checkpoint: %s", e)


def main(argv: list[str] | None = None) -> None:
    from modules.cmd_args import parse_args
    from modules.launch_utils import set_offline_environment

    set_offline_environment(os.environ)  # no code path may reach a model hub or send telemetry

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from modules.devices import DevicePolicy
    from modules.model_manager import ModelManager
    from modules.paths import Paths

    paths = Paths.from_args(args)
    _remove_partial_saves(paths.data_dir / "tmp")
    policy = DevicePolicy.from_args(args)
    logging.getLogger("webui").info("Device: %s", policy.describe())
    manager = ModelManager(paths, policy, preferred_checkpoint=args.ckpt, hash_files=not args.no_hashing)
    app = create_app(args, manager, paths)
    threading.Thread(target=_preload, args=(manager,), daemon=True, name="preload").start()
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    print(f"Running on local URL:  http://{host}:{args.port}", flush=True)
    uvicorn.run(app, host=host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
