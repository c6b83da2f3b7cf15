"""Fault injection for the test suite: makes chosen jobs fail the way real hardware does.

`python tests/security_faults.py <webui flags>` starts the server as webui.py does, with the faults
installed (tests/server_process.py, `script=FAULTY_SERVER`):

    a generation whose prompt contains OOM_MARKER raises torch.cuda.OutOfMemoryError at sampler
    step OOM_AT_STEP, as a GPU that runs out of memory mid-job does;
    a pipeline hook named FAILING_HOOK raises before the first batch of a generation whose prompt
    contains HOOK_FAILURE_MARKER, as a broken extension would.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FAULTY_SERVER = Path(__file__)

OOM_MARKER = "__inject_cuda_oom__"
OOM_AT_STEP = 3
HOOK_FAILURE_MARKER = "__inject_hook_failure__"
FAILING_HOOK = "injected-failure"


class _Arming(threading.local):
    armed: bool = False


def _oom_at_step(job) -> None:
    original = job.progress.on_step

    def on_step(i: int) -> None:
        if i + 1 >= OOM_AT_STEP:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected fault)")
        original(i)

    job.progress.on_step = on_step


def _fail_when_marked(ctx) -> None:
    if HOOK_FAILURE_MARKER in ctx.job.request.prompt:
        raise RuntimeError("the injected hook failure")


def install(service) -> None:
    service.hooks.add("before_batch", _fail_when_marked, name=FAILING_HOOK)
    arming = _Arming()
    submit_generation, submit_job = service.submit, service.queue.submit

    def submit(request, **options):
        arming.armed = OOM_MARKER in (getattr(request, "prompt", "") or "")
        try:
            return submit_generation(request, **options)
        finally:
            arming.armed = False

    def queue_submit(kind, work, **options):
        if arming.armed:
            def failing_work(job, work=work):
                _oom_at_step(job)
                return work(job)
            return submit_job(kind, failing_work, **options)
        return submit_job(kind, work, **options)

    service.submit = submit
    service.queue.submit = queue_submit


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    import webui

    build = webui.create_app

    def create_app(*args, **kwargs):
        app = build(*args, **kwargs)
        install(app.state.service)
        return app

    webui.create_app = create_app
    webui.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
