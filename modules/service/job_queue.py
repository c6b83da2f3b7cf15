"""One FIFO job queue per device, shared by the UI and the HTTP API.

A job (jobs.py) is a typed object with an id, a state, progress and its own interrupt/skip flags; one worker
thread runs the jobs in order, so the device does one thing at a time and anything that changes
what the device holds (a model switch, a setting) happens between two jobs, never inside one.
The queue is bounded: a submission past the bound is refused with an estimate of when to retry,
instead of piling up work nobody will wait for.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from modules.models.devices import free_device_memory, is_out_of_memory
from modules.service.jobs import (Job, JobCancelled, JobIdInUseError, JobInterrupted, JobProgress, JobState,
                                  QueueFullError)

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUED = 64  # Gradio's and AUTOMATIC1111's queue size


class JobQueue:
    """FIFO of jobs run one at a time by one worker thread (one device)."""

    def __init__(self, max_queued: int = DEFAULT_MAX_QUEUED, name: str = "device"):
        self.max_queued = max_queued
        self.name = name
        self._pending: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}  # queued and running jobs, and the last few finished ones
        self._finished: deque[str] = deque(maxlen=32)
        self._current: Job | None = None
        self._condition = threading.Condition()
        self._stopping = False
        self._durations: deque[float] = deque(maxlen=20)
        self._counter = itertools.count(1)
        self._worker = threading.Thread(target=self._run, name=f"job-worker-{name}", daemon=True)
        self._worker.start()

    # ---- submitting ----------------------------------------------------------------------------
    def new_id(self) -> str:
        return f"task({secrets.token_hex(4)}{next(self._counter)})"

    def submit(self, kind: str, work: Callable[[Job], Any], *, job_id: str | None = None,
               owner: str | None = None, job_count: int = 1, steps: int = 0, bounded: bool = True) -> Job:
        """Queue `work(job)`. Raises QueueFullError past the bound (unless `bounded` is False, for
        the server's own housekeeping) and JobIdInUseError for an id still in use."""
        with self._condition:
            if self._stopping:
                raise RuntimeError("the job queue is shutting down")
            if bounded and len(self._pending) >= self.max_queued:
                raise QueueFullError(len(self._pending), self._retry_after())
            job_id = job_id or self.new_id()
            existing = self._jobs.get(job_id)
            if existing is not None and not existing.done:
                raise JobIdInUseError(f"job id {job_id!r} is already queued or running")
            job = Job(job_id, kind, work, owner=owner, progress=JobProgress(job_count=job_count, steps=steps))
            self._jobs[job_id] = job
            self._pending.append(job)
            self._condition.notify_all()
            return job

    def run(self, kind: str, work: Callable[[Job], Any], **options) -> Any:
        """Submit and wait: the result, or the work's exception."""
        return self.submit(kind, work, **options).wait()

    def _retry_after(self) -> int:
        average = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(average * max(1, len(self._pending) - self.max_queued + 1)))

    # ---- looking ---------------------------------------------------------------------------------
    @property
    def current(self) -> Job | None:
        return self._current

    def pending(self) -> list[Job]:
        with self._condition:
            return list(self._pending)

    def get(self, job_id: str) -> Job | None:
        with self._condition:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """1 for the next job to run, 0 when running or finished."""
        with self._condition:
            return next((index + 1 for index, queued in enumerate(self._pending) if queued is job), 0)

    # ---- worker ----------------------------------------------------------------------------------
    def _next(self) -> Job | None:
        with self._condition:
            while not self._pending and not self._stopping:
                self._condition.wait()
            if self._stopping:
                return None
            job = self._pending.popleft()
            job.state = JobState.RUNNING
            self._current = job
            return job

    def _run(self) -> None:
        while (job := self._next()) is not None:
            started = time.monotonic()
            job.progress.started_at = started
            try:
                job.result = job.work(job)
                job.state = JobState.DONE
            except BaseException as e:  # the job fails, the worker keeps serving
                if isinstance(e, ValueError):  # the request asked for something refused: the user's to fix
                    log.info("Job %s (%s) refused: %s", job.id, job.kind, e)
                elif not isinstance(e, JobInterrupted):
                    log.exception("Job %s (%s) failed", job.id, job.kind)
                job.error = e
                job.state = JobState.FAILED
                if is_out_of_memory(e):
                    free_device_memory()  # whoever submitted it, the next job starts with the memory back
            finally:
                job.progress.preview = None  # the result replaces it; a finished job keeps no images
                job.finished_at = time.time()
                with self._condition:
                    self._current = None
                    self._durations.append(time.monotonic() - started)
                    self._remember_finished(job)
                job._finish()

    def _remember_finished(self, job: Job) -> None:
        if len(self._finished) == self._finished.maxlen:
            oldest = self._finished[0]
            if self._jobs.get(oldest) is not None and self._jobs[oldest].done:
                del self._jobs[oldest]
        self._finished.append(job.id)

    def cancel(self, job: Job, reason: str) -> bool:
        """Drop a job that has not started: it never runs and its waiters get JobCancelled(reason).
        False when it is running or finished already (interrupt it instead)."""
        with self._condition:
            try:
                self._pending.remove(job)
            except ValueError:
                return False
            self._drop(job, JobCancelled(reason))
        job._finish()
        return True

    def abandon(self, job: Job, why: str) -> None:
        """Nobody waits for `job` any more (its client went away): drop it when queued, interrupt it
        when running, so the device goes on to work someone still wants."""
        if self.cancel(job, why):
            log.info("Job %s (%s) dropped before it started: %s", job.id, job.kind, why)
        elif not job.done:
            job.interrupt()
            log.info("Job %s (%s) interrupted: %s", job.id, job.kind, why)

    def _drop(self, job: Job, error: BaseException) -> None:
        """With the lock held: `job` leaves the queue unrun, kept a while for progress queries."""
        job.error = error
        job.state = JobState.CANCELLED
        job.finished_at = time.time()
        self._remember_finished(job)

    def stop(self) -> None:
        """Finish the running job, drop the queued ones (their waiters get an error)."""
        with self._condition:
            self._stopping = True
            dropped = list(self._pending)
            self._pending.clear()
            for job in dropped:
                self._drop(job, JobCancelled("the server is shutting down"))
            self._condition.notify_all()
        for job in dropped:
            job._finish()
