"""AUTOMATIC1111's `/sdapi/v1/progress` answer for one job (the running one by default).

`current_image` is the live preview the worker made last (the first image of the batch); this
route only encodes that image, it never decodes latents.
"""

from __future__ import annotations

import time

from modules.app.api.images import encode_png
from modules.app.api.models import ProgressResponse, ProgressState
from modules.service.jobs import Job, JobState, QueueView


def _timestamp(job: Job) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.localtime(job.created_at))


def _current_image(job: Job) -> str | None:
    preview = job.progress.preview
    return encode_png(preview.images[0]) if preview is not None and preview.images else None


def progress_of(job: Job | None, queue: QueueView, with_preview: bool) -> ProgressResponse:
    queued = len(queue.pending())
    if job is None:
        return ProgressResponse(progress=0, eta_relative=0, state=ProgressState(), queued=queued,
                                textinfo="Waiting...")
    state = ProgressState(skipped=job.skipped, interrupted=job.interrupted, job=job.id,
                          job_count=job.progress.job_count, job_timestamp=_timestamp(job),
                          job_no=job.progress.job_no, sampling_step=job.progress.step,
                          sampling_steps=job.progress.steps)
    if job.state == JobState.QUEUED:
        return ProgressResponse(progress=0, eta_relative=0, state=state, queued=queued, job_id=job.id,
                                textinfo=f"In queue: {queue.position(job)}/{queued}")
    if job.done:
        return ProgressResponse(progress=1, eta_relative=0, state=state, queued=queued, job_id=job.id,
                                textinfo=job.state.value)
    return ProgressResponse(progress=job.progress.fraction, eta_relative=job.progress.eta(), state=state,
                            current_image=_current_image(job) if with_preview else None,
                            queued=queued, job_id=job.id, textinfo=f"{job.kind}: step {job.progress.step}")
