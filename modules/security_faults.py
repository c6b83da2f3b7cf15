"""Fault injection for the test suite: makes chosen jobs fail the way real hardware does.

Only installed when the environment variable SD_WEBUI_TEST_FAULTS is set (webui.create_app); the
normal start-up path never imports this module. Supported value:

    oom   a generation whose prompt contains OOM_MARKER raises torch.cuda.OutOfMemoryError at
          sampler step OOM_AT_STEP, as a GPU that runs out of memory mid-job does.
"""

from __future__ import annotations

import threading

import torch

OOM_MARKER = "__inject_cuda_oom__"
OOM_AT_STEP = 3


class _Arming(threading.local):
    armed: bool = False


def _oom_at_step(job) -> None:
    original = job.step_callback

    def step_callback(info: dict) -> None:
        if info.get("i", 0) + 1 >= OOM_AT_STEP:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected fault)")
        original(info)

    job.step_callback = step_callback


def install(service, spec: str) -> None:
    if spec != "oom":
        raise ValueError(f"unknown SD_WEBUI_TEST_FAULTS value {spec!r}")
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
