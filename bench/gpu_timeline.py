"""Where one image's time goes on the GPU: a profiler timeline of one txt2img call, summarised.

Runs one image the way the application does (no synchronisation added between stages) under
torch.profiler and reports, from the trace:

- the host's wall time and the GPU's span, busy time (union of kernels and copies) and idle time, with
  the longest idle gaps and the host stage that was running when each began;
- per stage (prompts, sampling, VAE decode, PNG + save), the kernels launched in it and their GPU time;
- the kernels that take the most time, and totals by kind (convolution, GEMM, attention, Inductor's
  fused Triton kernels, other).

    python bench/gpu_timeline.py --family sd1 --path compile --out bench/results/gpu
    python bench/gpu_timeline.py --tiny --out /tmp/timeline      # tiny model on the CPU: checks the script
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from gpu_speed import (Case, Report, load_ours, run_ours, runner_settings, wait_for_warmups,  # noqa: E402
                       write_checkpoint)
from modules.accel.runner import ModelRunner  # noqa: E402
from stage_marks import STAGES, StageMarks  # noqa: E402

RUNNER_PATHS = {"eager": "eager", "graphs": "cuda-graphs", "compile": "compiled"}  # gpu_speed.runner_settings's
KINDS = [("attention", re.compile(r"flash|fmha|attention|sdpa|cudnn_.*mha", re.I)),
         ("convolution", re.compile(r"conv|fprop|dgrad|implicit_gemm|xmma_fprop|winograd", re.I)),
         ("GEMM", re.compile(r"gemm|nvjet|cutlass|sm90_xmma|ampere_.*h[0-9]+|cublas", re.I)),
         ("Inductor fused (Triton)", re.compile(r"^triton_", re.I)),
         ("copy / fill", re.compile(r"memcpy|memset|copy|fill", re.I))]
GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def union_length(intervals: list[tuple[float, float]]) -> tuple[float, list[tuple[float, float]]]:
    """Total covered length of [start, end) intervals and the gaps between the covered stretches."""
    covered, gaps, current = 0.0, [], None
    for start, end in sorted(intervals):
        if current is None or start > current[1]:
            if current is not None:
                covered += current[1] - current[0]
                gaps.append((current[1], start))
            current = [start, end]
        else:
            current[1] = max(current[1], end)
    if current is not None:
        covered += current[1] - current[0]
    return covered, gaps


def summarise(trace: dict) -> dict:
    """The report's numbers from a Chrome trace written by torch.profiler (times in microseconds)."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    stages = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                    if e.get("cat") == "user_annotation" and e["name"] in STAGES)
    [image] = [e for e in events if e.get("cat") == "user_annotation" and e["name"] == "image"]
    launches = {e["args"]["correlation"]: e["ts"] for e in events
                if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    gpu = [e for e in events if e.get("cat") in GPU_CATEGORIES]

    def stage_at(ts: float | None) -> str:
        return next((name for start, end, name in stages if ts is not None and start <= ts <= end), "between stages")

    per_stage: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    per_kind: dict[str, float] = defaultdict(float)
    for e in gpu:
        stage = stage_at(launches.get(e.get("args", {}).get("correlation")))
        per_stage[stage][0] += 1
        per_stage[stage][1] += e["dur"]
        per_kernel[e["name"]][0] += 1
        per_kernel[e["name"]][1] += e["dur"]
        per_kind[kind_of(e["name"])] += e["dur"]
    # Which kernels the memsets are for: the kernel that runs next after each one.
    ordered = sorted(gpu, key=lambda e: e["ts"])
    after_memset: dict[str, int] = defaultdict(int)
    for memset, following in zip(ordered, ordered[1:]):
        if memset.get("cat") == "gpu_memset":
            after_memset[following["name"][:120]] += 1
    busy, gaps = union_length([(e["ts"], e["ts"] + e["dur"]) for e in gpu])
    span = (max(e["ts"] + e["dur"] for e in gpu) - min(e["ts"] for e in gpu)) if gpu else 0.0
    ms = 1e-3
    return {
        "host_wall_ms": round(image["dur"] * ms, 2),
        "gpu_span_ms": round(span * ms, 2), "gpu_busy_ms": round(busy * ms, 2),
        "gpu_idle_ms": round((span - busy) * ms, 2), "kernels": len(gpu),
        "host_stage_ms": {name: round((end - start) * ms, 2) for start, end, name in stages},
        "gpu_by_stage": {name: {"kernels": n, "gpu_ms": round(t * ms, 2)} for name, (n, t) in per_stage.items()},
        "gpu_by_kind_ms": {k: round(t * ms, 2) for k, t in sorted(per_kind.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": name[:120], "calls": n, "gpu_ms": round(t * ms, 3)}
                        for name, (n, t) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:30]],
        "kernels_after_a_memset": dict(sorted(after_memset.items(), key=lambda kv: -kv[1])[:10]),
        "longest_idle_gaps": [{"ms": round((end - start) * ms, 3), "host_stage": stage_at(start)}
                              for start, end in sorted(gaps, key=lambda g: g[0] - g[1])[:12]],
        "idle_by_host_stage_ms": {name: round(sum(end - start for start, end in gaps if stage_at(start) == name) * ms, 2)
                                  for name in [*STAGES, "between stages"]},
    }


def profiled_image(runner, case: Case, outputs: Path) -> dict:
    """One image under the profiler, each stage marked (stage_marks.py); the summary of its trace."""
    from torch.profiler import ProfilerActivity, profile, record_function

    open_ranges: dict[str, record_function] = {}

    def begin(name: str) -> None:
        open_ranges[name] = record_function(name)
        open_ranges[name].__enter__()

    def end(name: str) -> None:
        open_ranges.pop(name).__exit__(None, None, None)

    call = run_ours(runner, case, outputs, hooks=StageMarks(begin, end).hooks())
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        with record_function("image"):
            call(0)
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        prof.export_chrome_trace(handle.name)
        return summarise(json.loads(Path(handle.name).read_text()))


def cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / tick, sum(fields) / tick


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    parser.add_argument("--family", choices=["sd1", "sdxl"], default="sd1")
    parser.add_argument("--paths", default="graphs,compile", help="comma-separated: eager, graphs, compile")
    parser.add_argument("--helpers", type=int, default=None, help="compile helper processes (--compile-helpers)")
    parser.add_argument("--compile-settings", default=None,
                        help="compile settings for --compile, e.g. compile=layers+quick (acceleration_variants.py)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its convolution algorithms")
    parser.add_argument("--helpers-at-load", action="store_true",
                        help="start the compile helpers as the load starts, as the application does")
    parser.add_argument("--warm-up-only", action="store_true", help="time the compile warm-up, profile no image")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    case = Case("SDXL 1024x1024 30 steps", "sdxl", 1024, 30) if args.family == "sdxl" else \
        Case("SD1.5 512x512 20 steps", "sd1", 512, 20)
    if args.tiny:
        case = Case("tiny 64x64 4 steps", args.family, 64, 4)
    device = torch.device("cpu" if args.tiny else "cuda")
    report = Report(args.out, f"gpu_timeline-{args.family}.json")
    with tempfile.TemporaryDirectory() as work:
        checkpoint = write_checkpoint(case.family, Path(work), device.type, args.tiny)
        pool = None
        if args.helpers_at_load and "compile" in args.paths:  # as the application's model manager does
            from modules.accel import compile_helpers

            pool = compile_helpers.pool_for_load(device, args.helpers, checkpoint.stat().st_size)
        started = time.perf_counter()
        model = load_ours(checkpoint, device)
        report.add(case=case.name, what="load", seconds=round(time.perf_counter() - started, 1),
                   helpers_started_at_load=pool is not None)
        outputs = Path(work) / "outputs"
        runner = None
        for path in args.paths.split(","):
            if runner is not None:
                runner.close()
            runner = ModelRunner(model, runner_settings(RUNNER_PATHS[path], args),
                                 helper_pool=pool if path == "compile" else None)
            started = time.perf_counter()
            if path == "compile":
                from modules.service.generation_service import start_warm_up

                cpu_before = cpu_seconds()
                start_warm_up(runner)
                parts = wait_for_warmups(runner, timeout=400)
                cpu_busy = [after - before for after, before in zip(cpu_seconds(), cpu_before)]
                from gpu_variants import compile_phases

                report.add(case=case.name, path=path, warm_up_parts_s=parts, seconds=round(time.perf_counter() - started, 1),
                           cpu_busy_fraction=round(cpu_busy[0] / max(cpu_busy[1], 1e-9), 2), cpus=os.cpu_count(),
                           compile_phases_s=compile_phases(), helpers=args.helpers,
                           compile_settings=args.compile_settings, cudnn_benchmark=args.cudnn_benchmark)
                if args.warm_up_only:
                    continue
            call = run_ours(runner, case, outputs)
            for i in range(3):  # captures, then steady state
                call(i)
            warm = time.perf_counter() - started
            summary = profiled_image(runner, case, outputs)
            report.add(case=case.name, path=path, warm_up_s=round(warm, 1), helpers=args.helpers,
                       compile_settings=args.compile_settings, cudnn_benchmark=args.cudnn_benchmark, **summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
