"""Where the peak GPU memory of one txt2img image goes: the allocations alive at the peak, with the code
that made them.

PyTorch's allocator records every allocation while `_record_memory_history` is on; replaying that
trace finds the moment of the highest allocated total (the figure torch.cuda.max_memory_allocated
reports) and the blocks alive then. One SD1.5 512x512 image (random weights of the real architecture)
per path: eager, CUDA graphs (the first call, which captures, and a later one).

    python bench/gpu_memory.py --out bench/results/gpu
    python bench/gpu_memory.py --vae-decode [--channels-last] --out DIR   # the VAE decode alone, 512x512

The second form measures the decoder's peak and time for one memory layout; run it in a fresh process
per cuDNN setting (CUDNN_CONV_WSCAP_DBG, read when cuDNN starts).

Writes <out>/gpu_memory.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from gpu_speed import VAE, Case, Report, load_ours, run_ours, sync, write_checkpoint  # noqa: E402
from modules.accel.runner import ModelRunner, RunnerSettings  # noqa: E402

MiB = 2**20


def _where(frames: list[dict]) -> str:
    """The innermost frames in this project or diffusers: enough to name the layer that allocated."""
    picked = [f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in frames
              if any(part in f["filename"] for part in ("/diffusers/", "/transformers/", str(ROOT / "modules")))]
    return " < ".join(picked[:4]) or (f"{frames[0]['filename']}:{frames[0]['line']}" if frames else "?")


def peak_from_trace(trace: list[dict], baseline: int, top: int = 12) -> dict:
    """Replays alloc/free events: the peak allocated bytes above `baseline` and the largest blocks
    alive at that moment, summed by the code that allocated them."""
    live: dict[int, dict] = {}
    total = peak = 0
    at_peak: list[dict] = []
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, list(live.values())
        elif event["action"] == "free_completed" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    by_site: dict[str, int] = {}
    for event in at_peak:
        site = _where(event.get("frames", []))
        by_site[site] = by_site.get(site, 0) + event["size"]
    largest = sorted(by_site.items(), key=lambda kv: -kv[1])[:top]
    return {"peak_gib": round((baseline + peak) / 2**30, 3), "transient_mib": round(peak / MiB, 1),
            "alive_at_peak_mib": [{"mib": round(size / MiB, 1), "where": site} for site, size in largest]}


def traced_image(call, i: int) -> dict:
    sync()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=500_000)
    try:
        call(i)
        sync()
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    trace = [e for device in snapshot["device_traces"] for e in device]
    row = peak_from_trace(trace, baseline)
    row["weights_and_resident_gib"] = round(baseline / 2**30, 3)
    row["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return row


def vae_decode_alone(report: Report, channels_last: bool) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE).to("cuda", torch.float16).eval()
    z = torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.float16)
    if channels_last:
        vae.to(memory_format=torch.channels_last)
        z = z.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.no_grad():
        for _ in range(12):
            sync()
            baseline = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            vae.decode(z, return_dict=False)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    report.add(case="VAE decode 512x512 batch 1, eager", channels_last=channels_last,
               cudnn_workspace_cap_mib=os.environ.get("CUDNN_CONV_WSCAP_DBG"),
               transient_mib=round((torch.cuda.max_memory_allocated() - baseline) / MiB, 1),
               ms=round(statistics.median(times[2:]), 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    parser.add_argument("--vae-decode", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args(argv)
    report = Report(args.out, "gpu_memory.json")
    if args.vae_decode:
        vae_decode_alone(report, args.channels_last)
        return 0
    case = Case("SD1.5 512x512 20 steps", "sd1", 512, 20)
    with tempfile.TemporaryDirectory() as work:
        model = load_ours(write_checkpoint("sd1", Path(work), "cuda", tiny=False), torch.device("cuda"))
        outputs = Path(work) / "outputs"
        outputs.mkdir()
        eager = ModelRunner(model)
        call = run_ours(eager, case, outputs)
        call(0)
        report.add(case=case.name, what="eager, second image", **traced_image(call, 1))
        eager.close()
        call = run_ours(ModelRunner(model, RunnerSettings(cuda_graphs=True)), case, outputs)
        report.add(case=case.name, what="cuda-graphs, first image (captures)", **traced_image(call, 2))
        report.add(case=case.name, what="cuda-graphs, later image", **traced_image(call, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
