"""Builds and serves the application (without the setup step that launch.py runs first)."""

from __future__ import annotations

import logging
import os
import sys

MIB = 1024 * 1024


def create_app(args, manager, paths, settings=None):
    """The FastAPI app: the UI at /, and with --api or --nowebui the /sdapi/v1 API and /docs.
    UI and API submit to one job queue, which owns the device."""
    from fastapi import FastAPI

    from modules.app.http_guard import HttpGuard
    from modules.service.assembly import build_service

    service = build_service(args, paths, manager, settings)
    with_api = args.api or args.nowebui
    app = FastAPI(title="Stable Diffusion web UI", docs_url="/docs" if with_api else None,
                  openapi_url="/openapi.json" if with_api else None, redoc_url=None)
    app.state.service = service
    if with_api:
        from modules.app.api.auth import parse_credentials
        from modules.app.api.routes import ApiContext, create_api_router

        app.include_router(create_api_router(ApiContext(service, args, parse_credentials(args.api_auth))))
    if not args.nowebui:
        import gradio as gr

        from modules.app.ui.page import build_ui

        app = gr.mount_gradio_app(app, build_ui(service, args), path="/")
    install_short_validation_errors(app)
    app.add_middleware(HttpGuard, config=guard_config(args), routes=app.router.routes)
    return app


def _open_browser_soon(url: str) -> None:
    """--autolaunch: the system browser, a moment after the server has started listening."""
    import threading
    import webbrowser

    threading.Timer(1.5, webbrowser.open, [url]).start()


def _split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def guard_config(args):
    """The checks every request passes (modules/app/http_guard.py), from the command line."""
    from modules.app.api.auth import parse_credentials
    from modules.app.http_guard import GuardConfig, host_names_for

    return GuardConfig(
        allowed_hosts=host_names_for(args.server_name, args.listen, _split_list(args.allowed_hosts)),
        ui_credentials=tuple(parse_credentials(args.gradio_auth, "--gradio-auth")),
        api_credentials=tuple(parse_credentials(args.api_auth)),
        cors_origins=frozenset(_split_list(args.cors_allow_origins)),
        max_body_bytes=max_body_bytes(args))


def max_body_bytes(args) -> int | None:
    """--max-body-size, else room for the largest request the API takes: img2img's most init images and
    a mask, each at the per-image byte cap in base64, and the other fields. None: no cap."""
    if args.max_body_size is not None:
        return args.max_body_size * MIB or None
    from modules.app.api.images import MAX_IMAGE_BYTES
    from modules.app.api.models import MAX_IMAGES_PER_REQUEST

    base64_image = (MAX_IMAGE_BYTES + 2) // 3 * 4
    return (MAX_IMAGES_PER_REQUEST + 1) * base64_image + 16 * MIB


def install_short_validation_errors(app) -> None:
    """Our 422 answers, and those of the UI app mounted inside, with short echoes (see above)."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.routing import Mount

    from modules.app.short_errors import short_validation_errors

    async def answer(request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": jsonable_encoder(short_validation_errors(error.errors()))}, status_code=422)

    for target in [app, *(route.app for route in app.routes if isinstance(route, Mount))]:
        if hasattr(target, "add_exception_handler"):
            target.add_exception_handler(RequestValidationError, answer)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def exposure_error(args) -> str | None:
    """Why the server must not start: reachable from other machines with no login at all."""
    exposed = args.listen or (args.server_name is not None and args.server_name not in LOOPBACK_HOSTS)
    if exposed and not (args.gradio_auth or args.api_auth):
        where = "--listen" if args.listen else f"--server-name {args.server_name}"
        return (f"{where} makes the server reachable from other machines, and anyone who can reach it "
                "could run jobs and read images; refusing to start without a login. "
                "Add --gradio-auth USER:PASS and/or --api-auth USER:PASS.")
    return None


def _remove_partial_saves(temp_dir) -> None:
    """Files a killed process was writing when it died; they never reached outputs/."""
    for leftover in temp_dir.glob(".saving-*") if temp_dir.is_dir() else ():
        leftover.unlink(missing_ok=True)


def _preload(service) -> None:
    """Load the start-up model as the queue's first job, so it never races a generation."""
    from modules.service.failures import ModelFileError, NoCheckpointError, UnknownCheckpointError

    log = logging.getLogger("webui")
    try:
        job = service.load_model()
    except NoCheckpointError as e:
        log.warning("%s", e)
        return
    except UnknownCheckpointError as e:
        log.warning("Saved checkpoint not found (%s); using the default", e)
        service.settings.update({"sd_model_checkpoint": None})
        job = service.load_model()

    def report(finished) -> None:
        if isinstance(finished.error, (ModelFileError, ValueError)):
            log.error("Could not load the default checkpoint: %s", finished.error)
        elif finished.error is None:
            log.info("Model loaded: %s", finished.result.title)

    job.add_done_callback(report)


def main(argv: list[str] | None = None) -> None:
    from modules.app.cmd_args import parse_args
    from modules.app.launch_utils import set_offline_environment

    set_offline_environment(os.environ)  # no code path may reach a model hub or send telemetry

    args = parse_args(argv)
    if (why := exposure_error(args)) is not None:  # before any slow import: the answer is immediate
        sys.exit(f"error: {why}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from modules.app.api.auth import parse_credentials
    from modules.io.image_saving import temp_dir_for
    from modules.io.paths import Paths
    from modules.service.assembly import build_model_manager
    from modules.service.settings_store import SettingsStore

    try:
        parse_credentials(args.api_auth)
        parse_credentials(args.gradio_auth, "--gradio-auth")
    except ValueError as e:
        sys.exit(f"error: {e}")
    paths = Paths.from_args(args)
    _remove_partial_saves(temp_dir_for(paths.outputs_dir))  # where saves write before the rename
    if args.compile:  # compiled graphs are kept with the other caches, so a restart compiles from them
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(paths.data_dir / "cache" / "torchinductor"))
    settings = SettingsStore(paths.config_file, paths.data_dir / "tmp")
    manager = build_model_manager(args, paths)
    logging.getLogger("webui").info("Device: %s", manager.policy.describe())
    if args.ckpt and settings.current.sd_model_checkpoint:
        settings.update({"sd_model_checkpoint": None})  # --ckpt wins over the saved choice, as in AUTOMATIC1111
    app = create_app(args, manager, paths, settings)
    _preload(app.state.service)
    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    print(f"Running on local URL:  http://{host}:{args.port}", flush=True)
    if args.autolaunch and not args.nowebui:
        _open_browser_soon(f"http://127.0.0.1:{args.port}")
    uvicorn.run(app, host=host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
