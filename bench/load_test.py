"""Load run against the real server: N clients x M txt2img requests (small images, embedded model).

Checks that there are no 5xx answers, that every answer carries the seed and prompt its request
asked for (no lost or mixed-up results), and that the server's memory stays flat; writes the
numbers to bench/RESULTS-load.md.

    venv/bin/python bench/load_test.py [--clients 20] [--requests 200]
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from server_process import ServerProcess  # noqa: E402
from modules.io.infotext import parse_generation_parameters  # noqa: E402

LOGIN = ("load", "load-test-password")
BODY = {"width": 64, "height": 64, "steps": 1, "sampler_name": "Euler", "cfg_scale": 5}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.mixed: list[str] = []
        self.errors: list[str] = []

    def record(self, status: int, seconds: float, problem: str | None = None) -> None:
        with self.lock:
            self.statuses[status] += 1
            self.latencies.append(seconds)
            if problem:
                self.mixed.append(problem)


def check_answer(response: requests.Response, seed: int, tag: str) -> str | None:
    images = response.json()["images"]
    if len(images) != 1:
        return f"{tag}: {len(images)} images"
    image = Image.open(io.BytesIO(base64.b64decode(images[0])))
    params = parse_generation_parameters(image.info.get("parameters", ""))
    if int(params.get("Seed", -1)) != seed or params.get("Prompt") != tag:
        return f"{tag}: got seed {params.get('Seed')} prompt {params.get('Prompt')!r}"
    return None


def client(url: str, index: int, count: int, tally: Tally) -> None:
    session = requests.Session()
    session.auth = LOGIN
    for i in range(count):
        seed, tag = index * 100_000 + i, f"client {index} request {i}"
        started = time.monotonic()
        try:
            response = session.post(f"{url}/sdapi/v1/txt2img", json={**BODY, "seed": seed, "prompt": tag}, timeout=600)
        except requests.RequestException as e:
            with tally.lock:
                tally.errors.append(f"{tag}: {e!r}")
            continue
        problem = check_answer(response, seed, tag) if response.status_code == 200 else None
        tally.record(response.status_code, time.monotonic() - started, problem)
        if response.status_code == 429:
            time.sleep(float(response.headers.get("Retry-After", "1")))


def run(clients: int, per_client: int) -> dict:
    with tempfile.TemporaryDirectory() as data_dir, \
            ServerProcess("--nowebui", "--api-auth", f"{LOGIN[0]}:{LOGIN[1]}", "--queue-size", str(clients * 2),
                          "--ckpt-dir", str(ROOT / "models" / "Stable-diffusion"), data_dir=Path(data_dir)) as server:
        session = requests.Session()
        session.auth = LOGIN
        for seed in range(3):  # warm-up: model load and first-call costs are not the steady state
            session.post(f"{server.url}/sdapi/v1/txt2img", json={**BODY, "seed": seed}, timeout=600)
        rss_start = rss_mib(server.process.pid)
        tally = Tally()
        samples: list[float] = []
        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(server.url, i, per_client, tally)) for i in range(clients)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            samples.append(rss_mib(server.process.pid))
            time.sleep(1)
        wall = time.monotonic() - started
        rss_end = rss_mib(server.process.pid)
    latencies = sorted(tally.latencies)
    return {"clients": clients, "per_client": per_client, "wall_s": wall, "statuses": dict(tally.statuses),
            "mixed": tally.mixed, "errors": tally.errors, "rss_start": rss_start, "rss_end": rss_end,
            "rss_peak": max(samples or [rss_end]),
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "p95": latencies[int(len(latencies) * 0.95) - 1] if latencies else float("nan"),
            "throughput": len(latencies) / wall}


def write_results(result: dict, path: Path) -> None:
    total = result["clients"] * result["per_client"]
    five_xx = sum(n for status, n in result["statuses"].items() if status >= 500)
    lost = total - sum(result["statuses"].values())
    lines = [
        "# Load run: concurrent API clients against the real server",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M:%S')} with `venv/bin/python bench/load_test.py --clients "
        f"{result['clients']} --requests {result['per_client']}` on this machine (CPU, embedded model, "
        "64x64, 1 Euler step, HTTP Basic login on every request, API-only server).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests | {total} ({result['clients']} clients x {result['per_client']}) |",
        f"| answers by status | {', '.join(f'{k}: {v}' for k, v in sorted(result['statuses'].items()))} |",
        f"| 5xx | {five_xx} |",
        f"| lost (no answer) | {lost} ({len(result['errors'])} client errors) |",
        f"| mixed-up results (wrong seed or prompt in a 200) | {len(result['mixed'])} |",
        f"| wall time | {result['wall_s']:.1f} s |",
        f"| throughput | {result['throughput']:.1f} requests/s |",
        f"| latency p50 / p95 | {result['p50']:.2f} s / {result['p95']:.2f} s |",
        f"| server RSS after warm-up / peak / end | {result['rss_start']:.0f} / {result['rss_peak']:.0f} / "
        f"{result['rss_end']:.0f} MiB |",
        "",
        "Pass criteria: zero 5xx, zero lost, zero mixed-up, end RSS within 10% (or 100 MiB) of the "
        f"warm-up RSS: **{'pass' if passed(result) else 'FAIL'}**.",
    ]
    if result["mixed"] or result["errors"]:
        lines += ["", "First problems:", *[f"- {p}" for p in (result["mixed"] + result["errors"])[:10]]]
    path.write_text("\n".join(lines) + "\n")


def passed(result: dict) -> bool:
    total = result["clients"] * result["per_client"]
    no_5xx = not any(status >= 500 for status in result["statuses"])
    growth = result["rss_end"] - result["rss_start"]
    return (no_5xx and sum(result["statuses"].values()) == total and not result["mixed"]
            and growth <= max(100, 0.1 * result["rss_start"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS-load.md")
    args = parser.parse_args()
    result = run(args.clients, args.requests)
    write_results(result, args.output)
    print(args.output.read_text())
    return 0 if passed(result) else 1


if __name__ == "__main__":
    sys.exit(main())
