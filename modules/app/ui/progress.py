"""Progress of a queued job on the page: a bar with step count and ETA, a live preview, Interrupt/Skip.

The handler that submitted a job follows it here until it is done, showing each new live preview
the worker has made (how and how often is the settings' business, frozen into the job); nothing here
decodes anything. Interrupt and Skip act on the job of the browser session that pressed them, so
one person cannot stop another's generation.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr
from PIL import Image

from modules.service.jobs import Job, JobInterrupted, JobState, QueueView

POLL_SECONDS = 0.3


@dataclass
class ProgressView:
    html: str
    previews: list[Image.Image] | None  # one per image of the batch; None: keep what is shown


@dataclass
class ProgressArea:
    bar: gr.HTML
    # The results gallery: previews show in the tiles the images will fill, at their size, so
    # nothing moves when the result replaces them.
    preview: gr.Gallery


class ActiveJobs:
    """The job each browser session is running, per tab (a session may run txt2img and extras at once)."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], Job] = {}
        self._lock = threading.Lock()

    def start(self, session: str, tab: str, job: Job) -> None:
        with self._lock:
            self._jobs = {key: j for key, j in self._jobs.items() if not j.done}  # forget finished ones
            self._jobs[(session, tab)] = job

    def get(self, session: str, tab: str) -> Job | None:
        with self._lock:
            job = self._jobs.get((session, tab))
        return job if job is not None and not job.done else None


def build_progress_bar(tab: str) -> gr.HTML:
    return gr.HTML("", elem_id=f"{tab}_progress", elem_classes=["progress-area"], js_on_load=None)


def _seconds(value: float) -> str:
    value = int(round(value))
    return f"{value // 60}m {value % 60:02d}s" if value >= 60 else f"{value}s"


def bar_html(fraction: float, text: str, state: str = "running") -> str:
    percent = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="progress-bar {state}" role="progressbar" aria-valuenow="{percent:.0f}" '
            f'aria-valuemin="0" aria-valuemax="100"><div class="progress-fill" style="width:{percent:.1f}%"></div>'
            f'<span class="progress-text">{html.escape(text)}</span></div>')


def progress_text(job: Job, queue: QueueView, note: str | None = None) -> tuple[float, str]:
    """The bar's fraction and text; `note` (e.g. a compilation running in the background) is appended."""
    fraction, text = _progress_text(job, queue)
    return fraction, f"{text} · {note}" if note else text


def _progress_text(job: Job, queue: QueueView) -> tuple[float, str]:
    if job.state == JobState.QUEUED:
        return 0.0, f"In queue: {queue.position(job)}/{len(queue.pending())}"
    progress = job.progress
    if progress.step == 0:
        return 0.0, "Starting…"
    parts = []
    if progress.job_count > 1:
        parts.append(f"Batch {progress.job_no + 1}/{progress.job_count}")
    parts.append(f"Step {progress.step}/{progress.steps}")
    parts.append(f"ETA {_seconds(progress.eta())}")
    if job.interrupted:
        parts.append("interrupting…")
    return progress.fraction, " · ".join(parts)


def follow(job: Job, queue: QueueView, note: Callable[[], str | None] = lambda: None) -> Iterator[ProgressView]:
    """Views of the job's progress until it is done, with each new preview the worker made."""
    shown = 0
    done = threading.Event()
    job.add_done_callback(lambda _job: done.set())
    while not job.done:
        fraction, text = progress_text(job, queue, note())
        preview = job.progress.preview
        previews = None
        if preview is not None and preview.number != shown:
            previews, shown = list(preview.images), preview.number
        yield ProgressView(bar_html(fraction, text), previews)
        done.wait(POLL_SECONDS)


def finished_html(job: Job, seconds: float, note: str = "") -> str:
    if job.error is not None:
        return bar_html(1.0, f"Failed after {_seconds(seconds)}", "failed")
    text = f"{'Interrupted' if job.interrupted else 'Done'} in {seconds:.1f}s"
    return bar_html(1.0, f"{text}{' · ' + note if note else ''}", "interrupted" if job.interrupted else "done")


def cleared_on(listener, area: ProgressArea):
    """The bar emptied as soon as a new run is asked for (`listener`: an event such as `button.click`),
    before the inputs are checked: an old "Done in 1.1s" beside a refusal would read as the new run's
    outcome. Chain the run on the returned event with `.then`."""
    return listener(lambda: "", outputs=[area.bar], show_progress="hidden", queue=False)


def wire_controls(active: ActiveJobs, tab: str, interrupt: gr.Button, skip: gr.Button | None = None) -> None:
    def press(action: str, request: gr.Request) -> None:
        job = active.get(request.session_hash or "", tab)
        if job is None:
            return
        job.interrupt() if action == "interrupt" else job.skip()

    def on_interrupt(request: gr.Request) -> None:
        press("interrupt", request)

    def on_skip(request: gr.Request) -> None:
        press("skip", request)

    # No limit: a press must never wait behind the generation it is meant to stop.
    interrupt.click(on_interrupt, show_progress="hidden", concurrency_limit=None)
    if skip is not None:
        skip.click(on_skip, show_progress="hidden", concurrency_limit=None)


def preview_gallery(images: list[Image.Image]) -> gr.Gallery:
    from modules.app.ui.results import gallery_columns

    return gr.Gallery(value=[(image, None) for image in images], selected_index=None,
                      columns=gallery_columns(len(images)))


def stream_job(ctx, active: ActiveJobs, tab: str, session: str, area: ProgressArea, submit, finish):
    """Submit a job (`submit() -> Job`), show its progress, then the outputs `finish(result)` gives.

    A generator for a Gradio handler: every item is a dict of component updates. Interrupted
    sampling still returns the images made so far, as AUTOMATIC1111 does.
    """
    from modules.app.short_errors import short_message
    from modules.app.ui.common import USER_ERRORS, user_error
    from modules.service.failures import SELF_EXPLAINING_FAILURES

    try:
        job = submit()
    except USER_ERRORS as e:
        raise user_error(e) from None
    active.start(session, tab, job)
    started = time.monotonic()
    yield {area.bar: bar_html(0.0, "Queued…")}
    previewed = False
    try:
        for view in follow(job, ctx.service.queue, ctx.service.warmup_note):
            update = {area.bar: view.html}
            if view.previews:
                update[area.preview] = preview_gallery(view.previews)
                previewed = True
            yield update
    except GeneratorExit:  # Gradio stops a handler whose page went away (closed, reloaded)
        if not getattr(ctx.args, "keep_abandoned_jobs", False):
            ctx.service.queue.abandon(job, "its page was closed")
        raise
    seconds = time.monotonic() - started
    # Previews of images that never came must not stay on show as if they were results.
    unfinished = {area.preview: gr.Gallery(value=None)} if previewed else {}
    try:
        result = job.wait(0)
    except JobInterrupted:
        yield {area.bar: bar_html(1.0, "Interrupted before any image was made", "interrupted"), **unfinished}
        return
    except USER_ERRORS as e:
        yield {area.bar: finished_html(job, seconds), **unfinished}
        raise user_error(e) from None
    except SELF_EXPLAINING_FAILURES as e:  # the server's failure, whose message says what failed (logged there)
        yield {area.bar: finished_html(job, seconds), **unfinished}
        raise gr.Error(short_message(str(e)), print_exception=False) from None
    outputs, note = finish(result)
    yield {**outputs, area.bar: finished_html(job, seconds, note)}
