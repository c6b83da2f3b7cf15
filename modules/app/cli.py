"""Command-line txt2img: `python -m modules.app.cli --prompt "a red circle" --steps 20 --seed 1`."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build_parser() -> argparse.ArgumentParser:
    from modules.app.cmd_args import build_parser as server_parser

    parser = argparse.ArgumentParser(prog="python -m modules.app.cli", parents=[server_parser()], add_help=False,
                                     description="Generate images from text without starting the server.")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--sampler", default="Euler")
    gen.add_argument("--cfg-scale", type=float, default=7.0)
    gen.add_argument("--width", type=int, default=None, help="default: the model's native size")
    gen.add_argument("--height", type=int, default=None, help="default: the model's native size")
    gen.add_argument("--seed", type=int, default=-1)
    gen.add_argument("--batch-size", type=int, default=1)
    gen.add_argument("--n-iter", type=int, default=1)
    gen.add_argument("--clip-skip", type=int, default=1)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from modules.io.generation_request import Txt2ImgRequest
    from modules.io.paths import Paths
    from modules.service.assembly import build_service
    from modules.service.failures import MODEL_FILE_ERRORS

    args = build_parser().parse_args(argv)
    service = build_service(args, Paths.from_args(args))
    try:
        # Width and height left unset take the checkpoint's native size, as in the UI.
        request = Txt2ImgRequest(prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                                 sampler_name=args.sampler, cfg_scale=args.cfg_scale, seed=args.seed,
                                 batch_size=args.batch_size, n_iter=args.n_iter, clip_skip=args.clip_skip,
                                 **{k: v for k, v in (("width", args.width), ("height", args.height)) if v})
        result = service.txt2img(request, checkpoint=args.ckpt)
    except (*MODEL_FILE_ERRORS, ValidationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        service.close()
    for path in result.paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
