"""Command-line flags shared by `launch.py` and `webui.py`.

`COMMANDLINE_ARGS` from the environment (set in webui-user.sh / webui-user.bat) is split like a
shell would and placed before the real arguments, so both mean exactly the same and a flag given
on the command line wins where a flag takes a value.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Sequence

DEFAULT_PORT = 7860
DEFAULT_API_ONLY_PORT = 7861
# Megapixel-steps (images x steps x megapixels; one 1024x1024 image at one step is 1) one request may
# ask for: room for any everyday use (batch 8 x 100 batches x 150 steps at 1024x1024 is 120,000), none
# for a request that would hold the one device for days.
DEFAULT_MAX_REQUEST_WORK = 250_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webui",
        description="Self-hosted text-to-image web application.",
        allow_abbrev=False,
    )
    server = parser.add_argument_group("server")
    server.add_argument("--listen", action="store_true",
                        help="serve on all network interfaces (0.0.0.0) instead of 127.0.0.1")
    server.add_argument("--server-name", default=None, metavar="HOST",
                        help="interface to bind to (overrides --listen)")
    server.add_argument("--port", type=int, default=None,
                        help=f"port to serve on (default {DEFAULT_PORT}, or {DEFAULT_API_ONLY_PORT} with --nowebui)")
    server.add_argument("--api", action="store_true", help="serve the /sdapi/v1 HTTP API beside the UI")
    server.add_argument("--nowebui", action="store_true", help="serve the HTTP API only, without the UI")
    server.add_argument("--gradio-auth", default=None, metavar="USER:PASS[,USER:PASS]",
                        help="require a login for the UI")
    server.add_argument("--api-auth", default=None, metavar="USER:PASS[,USER:PASS]",
                        help="require HTTP basic auth for the API")
    server.add_argument("--allowed-hosts", default="", metavar="NAME[,NAME]",
                        help="extra Host header names to answer (DNS-rebinding guard); loopback names, IP "
                             "addresses and the --server-name are always allowed; '*' allows any")
    server.add_argument("--cors-allow-origins", default="", metavar="ORIGIN[,ORIGIN]",
                        help="origins (e.g. https://app.example) that may call the server from a browser; "
                             "none by default")
    server.add_argument("--queue-size", type=int, default=64, metavar="N",
                        help="jobs that may wait for the device; more are refused with HTTP 429 (default 64)")
    server.add_argument("--keep-abandoned-jobs", action="store_true",
                        help="finish an API job whose client has disconnected (AUTOMATIC1111's behaviour); by "
                             "default a queued one is dropped and a running one interrupted")
    server.add_argument("--max-request-work", type=float, default=DEFAULT_MAX_REQUEST_WORK, metavar="MP_STEPS",
                        help="most work one generation may ask for, in megapixel-steps: images x steps x "
                             "megapixels, hires pass included (one 1024x1024 image at one step is 1); larger "
                             f"requests are refused with HTTP 422 (default {DEFAULT_MAX_REQUEST_WORK}; 0: no limit)")
    server.add_argument("--max-body-size", type=int, default=None, metavar="MIB",
                        help="largest request body in MiB; larger ones are refused with HTTP 413 (default: "
                             "enough for img2img's 16 largest images and a mask, about 1.4 GiB)")
    server.add_argument("--autolaunch", action="store_true", help="open the UI in the system browser at start")
    server.add_argument("--theme", choices=("light", "dark"), default=None, help="UI colour theme")

    paths = parser.add_argument_group("paths")
    paths.add_argument("--data-dir", default=None, metavar="DIR",
                       help="base folder for models, outputs, settings and caches (default: the install folder)")
    paths.add_argument("--models-dir", default=None, metavar="DIR", help="base folder for models (default DATA_DIR/models)")
    paths.add_argument("--no-shipped-models", action="store_true",
                       help="list only the models in the model folders: without it, the ones that ship with the "
                            "install (the embedded default checkpoint, R-ESRGAN 4x+) are listed whatever --data-dir "
                            "or --models-dir says")
    paths.add_argument("--ckpt", default=None, metavar="FILE", help="checkpoint to load at start and list first")
    paths.add_argument("--ckpt-dir", default=None, metavar="DIR", help="extra folder searched for checkpoints")
    paths.add_argument("--vae-dir", default=None, metavar="DIR", help="extra folder searched for VAE files")
    paths.add_argument("--vae-path", default=None, metavar="FILE", help="VAE to use for every checkpoint")
    paths.add_argument("--lora-dir", default=None, metavar="DIR", help="folder of LoRA files (default models/Lora)")
    paths.add_argument("--embeddings-dir", default=None, metavar="DIR",
                       help="folder of textual-inversion embeddings (default DATA_DIR/embeddings)")
    paths.add_argument("--esrgan-models-path", default=None, metavar="DIR", help="extra folder of ESRGAN models")
    paths.add_argument("--realesrgan-models-path", default=None, metavar="DIR", help="extra folder of Real-ESRGAN models")
    paths.add_argument("--swinir-models-path", default=None, metavar="DIR", help="extra folder of SwinIR models")
    paths.add_argument("--dat-models-path", default=None, metavar="DIR", help="extra folder of DAT models")
    paths.add_argument("--gfpgan-models-path", default=None, metavar="DIR", help="extra folder of GFPGAN models")
    paths.add_argument("--codeformer-models-path", default=None, metavar="DIR", help="extra folder of CodeFormer models")
    paths.add_argument("--outdir", default=None, metavar="DIR", help="folder for generated images (default DATA_DIR/outputs)")

    device = parser.add_argument_group("device and precision")
    device.add_argument("--device-id", type=int, default=None, metavar="N", help="CUDA device index to use")
    device.add_argument("--use-cpu", action="store_true", help="run on the CPU even when a GPU is present")
    device.add_argument("--no-half", action="store_true", help="keep model weights in float32 on the GPU")
    device.add_argument("--no-half-vae", action="store_true", help="keep the VAE in float32 on the GPU")
    device.add_argument("--precision", choices=("full", "half", "autocast"), default="autocast",
                        help="compute precision (full = float32 everywhere)")
    device.add_argument("--medvram", action="store_true",
                        help="keep only the model part in use (text encoder, UNet or VAE) on the GPU")
    device.add_argument("--lowvram", action="store_true",
                        help="stream the UNet's layers to the GPU as they run (SDXL in under 4 GiB; slower)")
    device.add_argument("--cuda-graphs", action="store_true",
                        help="replay the UNet, VAE decoder and text encoders from captured CUDA graphs "
                             "(faster at small batches; about 1 s per new shape)")
    device.add_argument("--compile", action="store_true",
                        help="compile the UNet and VAE decoder with torch.compile for each new image size, in the "
                             "background, with helper processes (under a minute the first time on a 16-core host, "
                             "SD1.5 or SDXL; under 10 s from the cache); implies --cuda-graphs")
    device.add_argument("--compile-helpers", type=int, default=None, metavar="N",
                        help="with --compile: processes that share a model's first compilation (default: a quarter "
                             "of the CPU cores, at most 4; 0 compiles in the server process alone)")
    device.add_argument("--skip-torch-cuda-test", action="store_true",
                        help="start even when torch cannot use a GPU (runs on the CPU)")

    launcher = parser.add_argument_group("launcher")
    launcher.add_argument("--skip-prepare-environment", action="store_true",
                          help="launch.py: do not check or install requirements")
    launcher.add_argument("--skip-install", action="store_true", help="launch.py: do not install anything")
    launcher.add_argument("--reinstall-torch", action="store_true", help="launch.py: reinstall torch")
    launcher.add_argument("--skip-python-version-check", action="store_true",
                          help="launch.py: accept any Python version")
    launcher.add_argument("--no-hashing", action="store_true",
                          help="do not compute checkpoint sha256 hashes (titles show no hash)")
    return parser


def commandline_args_from_env(environ: os._Environ | dict | None = None) -> list[str]:
    environ = os.environ if environ is None else environ
    return shlex.split(environ.get("COMMANDLINE_ARGS", ""))


def parse_args(argv: Sequence[str] | None = None, environ=None) -> argparse.Namespace:
    """Parse COMMANDLINE_ARGS plus `argv` (default sys.argv[1:]); unknown flags exit with a clear error."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(commandline_args_from_env(environ) + argv)
    if args.port is None:
        args.port = DEFAULT_API_ONLY_PORT if args.nowebui else DEFAULT_PORT
    return args
