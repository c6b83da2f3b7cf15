"""Train the embedded default model: a tiny SD 1.x text-to-image model of coloured shapes, from scratch.

Real run (one H200, about 9 minutes in all):

    PYTHONUNBUFFERED=1 python tools/train_embedded_model.py --out models/Stable-diffusion --device cuda

Smoke run (toy sizes, a few steps, CPU, seconds):

    python tools/train_embedded_model.py --smoke --out /tmp/embedded-smoke

It writes `<name>.safetensors` (SD 1.x original keys, fp16), `<name>.yaml` (original LDM config),
`<name>.train-log.json`, `<name>.train-log.md` and `<name>.samples.png` into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Nothing here may reach a model hub; the tokenizer and every config come from the repository.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tools.embedded_model.config import TrainConfig, smoke_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "Stable-diffusion",
                        help="output folder (default: models/Stable-diffusion)")
    parser.add_argument("--name", help="file name stem (default: embedded-shapes-v1)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda, or cpu with --smoke)")
    parser.add_argument("--vae-seconds", type=float, help="time budget of the VAE stage")
    parser.add_argument("--unet-seconds", type=float, help="time budget of the UNet stage (latent pool included)")
    parser.add_argument("--vae-steps", type=int, help="also stop the VAE stage after this many steps")
    parser.add_argument("--unet-steps", type=int, help="also stop the UNet stage after this many steps")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--tokenizer", help="CLIP tokenizer folder (default: configs/tokenizers/clip)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes and a few steps, for checking the pipeline")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = smoke_config() if args.smoke else TrainConfig()
    top = {}
    if args.name:
        top["name"] = args.name
    if args.device:
        top["device"] = args.device
    if args.seed is not None:
        top["seed"] = args.seed
    if args.tokenizer:
        top["tokenizer_dir"] = args.tokenizer
    vae, unet = {}, {}
    if args.vae_seconds is not None:
        vae["seconds"] = args.vae_seconds
    if args.vae_steps is not None:
        vae["max_steps"] = args.vae_steps
    if args.unet_seconds is not None:
        unet["seconds"] = args.unet_seconds
    if args.unet_steps is not None:
        unet["max_steps"] = args.unet_steps
    return dataclasses.replace(config, **top, vae=dataclasses.replace(config.vae, **vae),
                               unet=dataclasses.replace(config.unet, **unet))


def echo(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = config_from_args(args)
    from tools.embedded_model.pipeline import run  # heavy imports (torch, diffusers) after argument errors

    result = run(config, args.out, echo)
    echo(f"done: {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
