"""One FIFO job queue per device, shared by the UI and the HTTP API.

A job is a typed object with an id, a state, progress and its own interrupt/skip flags; one worker
thread runs the jobs in order, so the device does one thing at a time and anything that changes
what the device holds (a model switch, a setting) happens between two jobs, never inside one.
The queue is bounded: a submission past the bound is refused with an estimate of when to retry,
instead of piling up work nobody will wait for.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modules.models.devices import free_device_memory, is_out_of_memory
from modules.sampling.samplers import SamplingInterrupted

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUED = 64  # Gradio's and AUTOMATIC1111's queue size


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # dropped before it started; it never ran


class QueueFullError(RuntimeError):
    def __init__(self, queued: int, retry_after: int):
        super().__init__(f"the job queue is full ({queued} waiting); retry in {retry_after} s")
        self.queued = queued
        self.retry_after = retry_after


class JobIdInUseError(ValueError):
    pass


class JobCancelled(RuntimeError):
    """What the waiters of a job dropped from the queue get: it never ran."""


@dataclass
class JobProgress:
    """Where a running job is: batch `job_no` of `job_count`, step `step` of `steps` in it."""

    job_no: int = 0
    job_count: int = 1
    step: int = 0
    steps: int = 0
    started_at: float | None = None
    latest_latent: Any = None  # the last denoised latent, for a live preview
    _last_i: int = -1

    def on_step(self, i: int) -> None:
        """A sampler reports step `i` (0-based); a lower index than before means the next batch or pass."""
        if i <= self._last_i:
            self.job_no = min(self.job_no + 1, max(self.job_count - 1, 0))
        self._last_i = i
        self.step = i + 1
        self.steps = max(self.steps, self.step)

    @property
    def fraction(self) -> float:
        if self.job_count <= 0:
            return 0.0
        within = self.step / self.steps if self.steps else 0.0
        return min(1.0, (self.job_no + within) / self.job_count)

    def eta(self, now: float | None = None) -> float:
        """Seconds left, from the time taken so far (AUTOMATIC1111's `eta_relative`)."""
        if self.started_at is None or self.fraction <= 0:
            return 0.0
        elapsed = (now or time.monotonic()) - self.started_at
        return max(0.0, elapsed / self.fraction - elapsed)


@dataclass(eq=False)
class Job:
    id: str
    kind: str  # "txt2img", "img2img", "extras", "load-model", ...
    work: Callable[["Job"], Any]
    owner: str | None = None  # the API user who submitted it, when logins are on
    state: JobState = JobState.QUEUED
    progress: JobProgress = field(default_factory=JobProgress)
    result: Any = None
    error: BaseException | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    interrupted: bool = False
    skipped: bool = False
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _callbacks: list = field(default_factory=list, repr=False)
    _callback_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ---- control, from any thread -----------------------------------------------------------
    def interrupt(self) -> None:
        """Stop at the next step; batches not started yet are not run."""
        self.interrupted = True

    def skip(self) -> None:
        """Abandon the current batch at the next step and go on with the next one."""
        self.skipped = True

    def wait(self, timeout: float | None = None) -> Any:
        """The work's result; re-raises its exception."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def add_done_callback(self, callback: Callable[["Job"], None]) -> None:
        """Call `callback(job)` once the job has finished (now, if it has); lets an event loop wait
        without holding a thread."""
        with self._callback_lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def _finish(self) -> None:
        with self._callback_lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # a waiter that went away must not stop the worker
                log.exception("Job %s: done callback failed", self.id)

    # ---- called by the work, on the worker thread --------------------------------------------
    def check_interrupt(self) -> None:
        """For work without sampler steps (upscaling tiles): stop if interrupted."""
        if self.interrupted:
            raise SamplingInterrupted()

    def step_callback(self, info: dict) -> None:
        """The sampler step callback: records progress and stops sampling on interrupt or skip."""
        self.progress.on_step(int(info.get("i", 0)))
        self.progress.latest_latent = info.get("denoised")
        if self.interrupted:
            raise SamplingInterrupted()
        if self.skipped:
            self.skipped = False
            raise SamplingInterrupted()


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
                elif not isinstance(e, SamplingInterrupted):
                    log.exception("Job %s (%s) failed", job.id, job.kind)
                job.error = e
                job.state = JobState.FAILED
                if is_out_of_memory(e):
                    free_device_memory()  # whoever submitted it, the next job starts with the memory back
            finally:
                job.progress.latest_latent = None
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
