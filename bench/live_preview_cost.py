"""What live previews cost a generation: txt2img with the worker's step reporter, previews off, the cheap
latent map every step, and the full VAE every step (and every 5), on one model, in one process.

    python bench/live_preview_cost.py --out bench/results/gpu [--family sd1] [--runs 5]
    python bench/live_preview_cost.py --tiny --out /tmp/preview-smoke     # tiny model on the CPU

Previews are started on the device and copied to the host without waiting, so the cheap ones should
cost the sampling loop nothing it waits for; the full ones cost a VAE decode each.
Writes <out>/live_preview_cost-<family>[-graphs].json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from gpu_speed import Case, environment, load_ours, ours_request, sync, write_checkpoint  # noqa: E402
from modules.accel.runner import ModelRunner, RunnerSettings  # noqa: E402

SCHEDULES = {"off": ("Approx cheap", 0), "cheap every step": ("Approx cheap", 1),
             "full every 5 steps": ("Full", 5), "full every step": ("Full", 1)}


def generate(runner, case: Case, schedule, seed: int) -> tuple[float, int]:
    """Seconds for one image with previews on `schedule`, and how many previews were published."""
    from modules.pipeline.job import Resources
    from modules.pipeline.processing import txt2img
    from modules.service.jobs import Job
    from modules.service.step_reporting import JobStepReporter

    job = Job("bench", "txt2img", lambda job: None)
    reporter = JobStepReporter(job, runner.model, schedule, runner)
    sync()
    started = time.perf_counter()
    txt2img(runner.model, ours_request(case, seed), None, reporter, Resources(runner=runner))
    sync()
    return time.perf_counter() - started, job.progress.preview.number if job.progress.preview else 0


def main(argv: list[str] | None = None) -> int:
    from modules.service.step_reporting import PreviewSchedule

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    parser.add_argument("--family", default="sd1", choices=("sd1", "sdxl"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay the UNet and VAE from CUDA graphs")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    case = Case(args.family, args.family, 64 if args.tiny else (1024 if args.family == "sdxl" else 512),
                4 if args.tiny else (30 if args.family == "sdxl" else 20))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        policy = None
        if args.cuda_graphs:
            from modules.models.devices import DevicePolicy

            policy = DevicePolicy(device, torch.float16, torch.float16, torch.float16, cuda_graphs=True)
        model = load_ours(write_checkpoint(args.family, Path(work), str(device), args.tiny), device, policy)
        runner = ModelRunner(model, RunnerSettings.from_policy(model.policy))  # as the model manager makes it
        schedules = {name: PreviewSchedule(method, every) for name, (method, every) in SCHEDULES.items()}
        for schedule in schedules.values():
            generate(runner, case, schedule, 0)  # warm-up: graphs captured, allocator filled
        # Interleaved, so that a drift of the machine's speed during the run falls on every schedule alike.
        runs = {name: [] for name in schedules}
        for i in range(args.runs):
            for name, schedule in schedules.items():
                runs[name].append(generate(runner, case, schedule, 1 + i))
        for name, timed in runs.items():
            seconds = statistics.median(s for s, _ in timed)
            rows.append({"previews": name, "median_s": round(seconds, 4), "runs_s": [round(s, 4) for s, _ in timed],
                         "published": [n for _, n in timed]})
            print(f"{name:>20}: {seconds * 1000:8.1f} ms  previews published per image: {rows[-1]['published']}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(), "case": case.__dict__, "device": str(device),
              "cuda_graphs": args.cuda_graphs, "rows": rows}
    name = f"live_preview_cost-{args.family}{'-graphs' if args.cuda_graphs else ''}.json"
    (args.out / name).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
