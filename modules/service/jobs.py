"""What a queued job is to those who submit it and watch it: a handle with an id, a state, progress
(with the latest live preview, made by the worker) and the job's own interrupt/skip flags.

The UI and the API hold these; the queue that runs them lives in job_queue.py.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

log = logging.getLogger(__name__)


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


class JobInterrupted(RuntimeError):
    """What the waiters of a job get when it was interrupted before its work had any result
    (work without sampler steps, such as upscaling tiles; interrupted sampling returns what it has)."""


@dataclass(frozen=True)
class LivePreview:
    """A finished live preview of the running job, one image per image of the batch being made.
    `number` counts the job's previews from 1, so a reader can tell a new one from the one it shows."""

    images: tuple[Image.Image, ...]
    number: int


@dataclass
class JobProgress:
    """Where a running job is: batch `job_no` of `job_count`, step `step` of `steps` in it."""

    job_no: int = 0
    job_count: int = 1
    step: int = 0
    steps: int = 0
    started_at: float | None = None
    # Set whole by the worker (one assignment), so a reader on another thread sees one preview entire.
    preview: LivePreview | None = None
    _last_i: int = -1

    def on_step(self, i: int) -> None:
        """A sampler reports step `i` (0-based); a lower index than before means the next batch or pass."""
        if i <= self._last_i:
            self.job_no = min(self.job_no + 1, max(self.job_count - 1, 0))
        self._last_i = i
        self.step = i + 1
        self.steps = max(self.steps, self.step)

    @property
    def steps_done(self) -> int:
        """Steps counted over the whole job, the way AUTOMATIC1111 spaces live previews."""
        return self.step + self.job_no * self.steps

    def show_preview(self, images: list[Image.Image]) -> None:
        number = self.preview.number + 1 if self.preview is not None else 1
        self.preview = LivePreview(tuple(images), number)

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
            raise JobInterrupted(f"job {self.id} was interrupted")

    def take_skip(self) -> bool:
        """Whether a skip was asked for since the last call: a skip ends one batch, not the job."""
        skipped, self.skipped = self.skipped, False
        return skipped


class QueueView(Protocol):
    """What the UI and the API may ask of the queue: the jobs in it and where they stand, and to let go
    of one nobody waits for."""

    @property
    def current(self) -> Job | None:
        """The running job."""

    def get(self, job_id: str) -> Job | None:
        """A queued or running job, or one of the last few finished ones."""

    def position(self, job: Job) -> int:
        """1 for the next job to run, 0 when running or finished."""

    def pending(self) -> list[Job]:
        """The jobs waiting, in the order they will run."""

    def abandon(self, job: Job, why: str) -> None:
        """Drop `job` when queued, interrupt it when running."""
