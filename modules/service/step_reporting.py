"""What each sampling step of a job does to that job, on the worker thread: its progress moves on,
a live preview is made every N steps with the job's own model, and an interrupt or a skip stops the
sampling there.

The UI and the API only read what lands in the job's progress; they never decode anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.accel.runner import ModelRunner
from modules.models.sd_model import StableDiffusionModel
from modules.pipeline.live_preview import PendingPreview, PreviewMaker, PreviewMethod
from modules.pipeline.progress import SamplingInterrupted, SamplingStep
from modules.service.jobs import Job, JobProgress
from modules.service.settings_store import Settings

ONLY_AT_THE_END = -1  # `show_progress_every_n_steps`: a preview at the last step of each sampling pass


@dataclass(frozen=True)
class PreviewSchedule:
    """When and how a job's live previews are made, from the settings frozen into the job."""

    method: PreviewMethod
    every: int  # steps between previews, ONLY_AT_THE_END, or 0: none

    @classmethod
    def from_settings(cls, settings: Settings) -> PreviewSchedule:
        every = settings.show_progress_every_n_steps if settings.live_previews_enable else 0
        return cls(settings.show_progress_type, every)

    def due(self, progress: JobProgress, step: SamplingStep) -> bool:
        if self.every == ONLY_AT_THE_END:
            return step.is_last
        return self.every > 0 and progress.steps_done % self.every == 0


class JobStepReporter:
    """The pipeline's step reporter for one job that runs on `model`."""

    def __init__(self, job: Job, model: StableDiffusionModel, schedule: PreviewSchedule,
                 runner: ModelRunner | None = None):
        self.job = job
        self.previews = PreviewMaker(model, schedule.method, runner)
        self.schedule = schedule
        self._pending: PendingPreview | None = None  # at most one preview on its way, so none pile up

    def __call__(self, step: SamplingStep) -> None:
        progress = self.job.progress
        progress.on_step(step.index)
        self._publish_when_ready()
        if self.job.interrupted or self.job.take_skip():
            raise SamplingInterrupted()
        if self._pending is None and self.schedule.due(progress, step):
            self._pending = self.previews.start(step.denoised)
            self._publish_when_ready()

    def _publish_when_ready(self) -> None:
        if self._pending is None or not self._pending.ready():
            return
        images, self._pending = self._pending.images(), None
        if images:  # a decode that was not finite shows nothing new
            self.job.progress.show_preview(images)
