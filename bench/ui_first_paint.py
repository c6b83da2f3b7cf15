"""First paint of the web UI in Chromium, from a warm server.

Starts the server the README's way on the shipped model (or uses --url), loads the page once to
warm it (Python imports, Gradio's config, the browser's own start), then loads it N times in
fresh browser contexts (no cache) and reads `first-contentful-paint` and the time until the
prompt box is usable. Writes a table to bench/RESULTS-ui.md.

    venv/bin/python bench/ui_first_paint.py [--runs 5] [--url http://127.0.0.1:7860]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import CHROMIUM, CHROMIUM_ARGS, data_dir_with_embedded_model  # noqa: E402
from server_process import ServerProcess  # noqa: E402

TARGET_SECONDS = 3.0
PAINT_JS = "() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null"


def measure(browser, url: str) -> tuple[float, float]:
    """(first contentful paint, prompt box usable), in seconds from navigation start."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        started = time.perf_counter()
        page.goto(url, wait_until="commit")
        page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
        usable = time.perf_counter() - started
        page.wait_for_function(f"({PAINT_JS})() !== null")
        return page.evaluate(PAINT_JS) / 1000, usable
    finally:
        context.close()


def run(url: str, runs: int) -> list[tuple[float, float]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        measure(browser, url)  # warm-up, not counted
        results = [measure(browser, url) for _ in range(runs)]
        browser.close()
    return results


def report(results: list[tuple[float, float]]) -> str:
    paints = [p for p, _ in results]
    usable = [u for _, u in results]
    worst = max(paints)
    rows = "\n".join(f"| {i + 1} | {p:.3f} | {u:.3f} |" for i, (p, u) in enumerate(results))
    return f"""# Web UI first paint

`venv/bin/python bench/ui_first_paint.py --runs {len(results)}`, {dt.date.today()}, on {platform.machine()} with
{os.cpu_count()} cores, Debian Chromium headless, 1280x800, a fresh browser context per load
(nothing cached), against a warm server on the shipped model. Target: first paint under {TARGET_SECONDS:.0f} s.

| load | first-contentful-paint (s) | prompt box usable (s) |
| ---: | ---: | ---: |
{rows}

Median first paint {statistics.median(paints):.3f} s, worst {worst:.3f} s
({'under' if worst < TARGET_SECONDS else 'OVER'} the {TARGET_SECONDS:.0f} s target);
median until the prompt box is usable {statistics.median(usable):.3f} s.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--url", default=None, help="a running server; default: start one")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS-ui.md")
    args = parser.parse_args()
    if args.url:
        results = run(args.url, args.runs)
    else:
        with tempfile.TemporaryDirectory() as folder, \
                ServerProcess(data_dir=data_dir_with_embedded_model(Path(folder))) as server:
            results = run(server.url, args.runs)
    text = report(results)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
