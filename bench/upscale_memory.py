"""Peak memory and time of a large model upscale on the CPU (tiled), e.g. 1024x1024 -> 4096x4096.

    venv/bin/python bench/upscale_memory.py [--upscaler "R-ESRGAN 4x+"] [--source 1024] [--target 4096]

Runs in a fresh process per size so each peak RSS is its own. Appends rows to bench/RESULTS-upscale.md
and writes bench/results/upscale_memory.json. The image is scikit-image's astronaut photograph.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(upscaler: str, source: int, target: int) -> dict:
    """One upscale in this process: model load, then source x source -> target x target."""
    import skimage.data
    import torch
    from PIL import Image

    from modules.postprocess.upscaler_models import UpscalerRegistry

    models_dir = ROOT / "models"
    registry = UpscalerRegistry({"ESRGAN": [models_dir / "ESRGAN"], "RealESRGAN": [models_dir / "RealESRGAN"]})
    if registry.find(upscaler) is None:
        raise SystemExit(f"{upscaler!r} not found; run tools/convert_realesrgan_ncnn.py first")
    image = Image.fromarray(skimage.data.astronaut()).resize((source, source), Image.Resampling.LANCZOS)
    before = peak_rss_mib()
    started = time.perf_counter()
    result = registry.upscale(image, upscaler, target, target)
    seconds = time.perf_counter() - started
    assert result.size == (target, target)
    return {"upscaler": upscaler, "source": source, "target": target, "seconds": round(seconds, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1), "rss_before_mib": round(before, 1),
            "tile": registry.tiles.tile, "overlap": registry.tiles.overlap, "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upscaler", default="R-ESRGAN 4x+")
    parser.add_argument("--sizes", default="256:1024,512:2048,1024:4096", help="source:target pairs")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: "source:target"
    args = parser.parse_args(argv)
    if args.one:
        source, target = map(int, args.one.split(":"))
        print(json.dumps(measure(args.upscaler, source, target)))
        return 0
    rows = []
    for pair in args.sizes.split(","):
        out = subprocess.run([sys.executable, __file__, "--upscaler", args.upscaler, "--one", pair],
                             check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["date"] = dt.date.today().isoformat()
        rows.append(row)
        print(row, flush=True)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "upscale_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = ROOT / "bench" / "RESULTS-upscale.md"
    if not table.exists():
        table.write_text("# CPU: tiled model upscale, peak memory\n\nOne process per row; peak RSS includes "
                         "torch and the model.\n\n| date | upscaler | source | target | tile/overlap | threads "
                         "| torch | seconds | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n")
    with table.open("a") as handle:
        for r in rows:
            handle.write(f"| {r['date']} | {r['upscaler']} | {r['source']}² | {r['target']}² | {r['tile']}/"
                         f"{r['overlap']} | {r['threads']} | {r['torch']} | {r['seconds']} | {r['peak_rss_mib']} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
