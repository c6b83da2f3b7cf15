"""CPU speed of one image from the shipped model: native size, 20 steps, CFG 7, through txt2img.

    venv/bin/python bench/cpu_txt2img.py [--runs 5]

Appends a row to bench/RESULTS-cpu.md and writes bench/results/cpu_txt2img.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--checkpoint", default="embedded-shapes-v1.safetensors")
    args = parser.parse_args()

    import torch

    from modules.app.cmd_args import parse_args
    from modules.models.devices import DevicePolicy
    from modules.io.generation_request import Txt2ImgRequest
    from modules.service.model_manager import ModelManager
    from modules.io.paths import Paths
    from modules.pipeline.processing import txt2img

    paths = Paths.from_args(parse_args(["--data-dir", str(ROOT)], environ={}))
    manager = ModelManager(paths, DevicePolicy.cpu(), hash_files=False)
    started = time.perf_counter()
    model = manager.get(args.checkpoint)
    load_seconds = time.perf_counter() - started
    request = Txt2ImgRequest(prompt="a red circle on a blue background", steps=20, cfg_scale=7,
                             width=model.native_size, height=model.native_size, seed=1, save_images=False)
    txt2img(model, request, None)  # warm-up
    times = []
    for run in range(args.runs):
        started = time.perf_counter()
        txt2img(model, request.model_copy(update={"seed": run}), None)
        times.append(time.perf_counter() - started)

    result = {
        "date": dt.date.today().isoformat(), "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "checkpoint": args.checkpoint, "size": model.native_size,
        "steps": 20, "cfg_scale": 7, "sampler": request.sampler_name, "runs": args.runs,
        "load_seconds": round(load_seconds, 3), "median_seconds": round(statistics.median(times), 3),
        "min_seconds": round(min(times), 3), "max_seconds": round(max(times), 3),
    }
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cpu_txt2img.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ROOT / "bench" / "RESULTS-cpu.md"
    if not table.exists():
        table.write_text("# CPU: one image from the shipped model\n\n"
                         "| date | CPU | threads | torch | size | steps | CFG | sampler | median s | min s | load s |\n"
                         "|---|---|---|---|---|---|---|---|---|---|---|\n")
    with table.open("a") as f:
        f.write(f"| {result['date']} | {result['cpu']} | {result['threads']} | {result['torch']} | "
                f"{result['size']} | 20 | 7 | {result['sampler']} | {result['median_seconds']} | "
                f"{result['min_seconds']} | {result['load_seconds']} |\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
