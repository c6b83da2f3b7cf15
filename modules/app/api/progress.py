"""AUTOMATIC1111's `/sdapi/v1/progress` answer for one job (the running one by default)."""

from __future__ import annotations

import time

from modules.app.api.images import encode_png
from modules.app.api.models import ProgressResponse, ProgressState
from modules.service.job_queue import Job, JobQueue, JobState
from modules.pipeline.live_preview import latent_preview


def _timestamp(job: Job) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.localtime(job.created_at))


def progress_of(job: Job | None, queue: JobQueue, with_preview: bool) -> ProgressResponse:
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
    preview = latent_preview(job.progress.latest_latent) if with_preview else None
    return ProgressResponse(progress=job.progress.fraction, eta_relative=job.progress.eta(), state=state,
                            current_image=encode_png(preview) if preview is not None else None,
                            queued=queued, job_id=job.id, textinfo=f"{job.kind}: step {job.progress.step}")
