"""Generation work for the job queue: what the UI and the HTTP API submit.

A generation's settings are resolved when it is submitted (defaults <- saved settings <- the
request's overrides) and frozen into its job; the model and VAE it names are loaded by the worker
when the job starts, so a switch happens between two jobs, never inside one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.models import vae as vae_files
from modules.models.checkpoints import CheckpointInfo
from modules.accel.cuda_graphs import warmup_note
from modules.accel.runner import ModelRunner
from modules.postprocess.face_restoration import RESTORER_NAMES
from modules.io.generation_request import Img2ImgRequest, Txt2ImgRequest
from modules.io.extras_request import ExtrasRequest, ExtrasSource
from modules.io.image_saving import SaveOptions
from modules.service.catalog import Catalog
from modules.postprocess.extras import check_extras
from modules.service.extras import extras_work
from modules.service.job_queue import Job, JobQueue
from modules.service.model_manager import ModelManager, UnknownCheckpointError
from modules.pipeline.builtin_hooks import builtin_hooks
from modules.pipeline.hires import hires_size
from modules.pipeline.hooks import Hooks
from modules.pipeline.latent_sampling import img2img_step_count
from modules.pipeline.job import GenerationResult, Resources
from modules.pipeline.processing import img2img, txt2img
from modules.pipeline.prompts.preparation import prepare_request
from modules.pipeline.vae_codec import decode_latents
from modules.service.settings_store import Settings, SettingsStore
from modules.service.step_reporting import JobStepReporter, PreviewSchedule

log = logging.getLogger(__name__)

# Request fields that AUTOMATIC1111 takes from settings rather than from the request.
SETTING_FIELDS = {"clip_skip": "CLIP_stop_at_last_layers", "eta_noise_seed_delta": "eta_noise_seed_delta",
                  "randn_source": "randn_source"}


@dataclass
class Generated:
    """A finished generation and the facts an API response reports about it."""

    result: GenerationResult
    request: Txt2ImgRequest  # as submitted, settings applied (result.request: as it ran, seeds resolved)
    checkpoint: CheckpointInfo
    vae_name: str | None
    interrupted: bool
    job_timestamp: str
    settings: Settings


def apply_settings(request: Txt2ImgRequest, settings: Settings) -> Txt2ImgRequest:
    """Fill the fields the request left unset from the settings (random seeds are drawn by the job,
    after its prompt parameters are read)."""
    update: dict[str, Any] = {field: getattr(settings, key) for field, key in SETTING_FIELDS.items()
                              if field not in request.model_fields_set}
    return request.model_copy(update=update)


def sized_for(request: Txt2ImgRequest, native_size: int | None) -> Txt2ImgRequest:
    """A side the request leaves out is the checkpoint's native size (512 for SD 1.x, 1024 for SDXL,
    128 for the embedded model), as a client that sends no size expects of whatever model runs."""
    unset = {"width", "height"} - request.model_fields_set
    if not unset or native_size is None:
        return request
    return request.model_copy(update={side: native_size for side in unset})


def expected_progress(request: Txt2ImgRequest) -> tuple[int, int]:
    """(sampling passes, steps per pass) the job will report, for progress before its first step."""
    passes = request.n_iter * (2 if request.enable_hr else 1)
    steps = request.steps
    if isinstance(request, Img2ImgRequest):
        steps = img2img_step_count(request.steps, request.denoising_strength)
    return passes, steps


MEGAPIXEL = 1024 * 1024  # so that one 1024x1024 image at one step is one megapixel-step


class RequestTooLargeError(ValueError):
    """A request whose images x steps x pixels exceed the server's per-request bound (a 422)."""


def request_work(request: Txt2ImgRequest) -> float:
    """Megapixel-steps the request asks for: images x sampling steps x megapixels, hires pass included."""
    images = request.batch_size * request.n_iter
    _, steps = expected_progress(request)
    work = images * steps * request.width * request.height / MEGAPIXEL
    if request.enable_hr:
        width, height = hires_size(request)
        work += images * (request.hr_second_pass_steps or request.steps) * width * height / MEGAPIXEL
    return work


def check_work(request: Txt2ImgRequest, limit: float | None) -> None:
    """Refuse, before queueing, a request that would keep the one device busy far beyond any normal use."""
    work = request_work(request)
    if not limit or work <= limit:
        return
    hires = f", hires pass {'x'.join(map(str, hires_size(request)))}" if request.enable_hr else ""
    raise RequestTooLargeError(
        f"this request asks for {work:,.0f} megapixel-steps ({request.batch_size * request.n_iter} images x "
        f"{request.steps} steps at {request.width}x{request.height}{hires}); the server allows {limit:,.0f} "
        f"per request. Ask for fewer images, steps or pixels, or start the server with a larger "
        f"--max-request-work")


class GenerationService:
    def __init__(self, manager: ModelManager, queue: JobQueue, settings: SettingsStore, outputs_dir: Path,
                 max_request_work: float | None = None, hooks: Hooks | None = None):
        self.manager = manager
        self.queue = queue
        self.settings = settings
        self.outputs_dir = outputs_dir
        self.max_request_work = max_request_work  # megapixel-steps (--max-request-work); None or 0: no bound
        # The pipeline's hooks: the project's own features; scripts and extensions add theirs here.
        self.hooks = hooks if hooks is not None else builtin_hooks()
        self.catalog = Catalog(manager)
        settings.check_names_with(self.unknown_setting_names)

    # ---- settings and models -----------------------------------------------------------------
    def unknown_setting_names(self, settings: Settings, keys: set[str]) -> dict[str, str]:
        """{setting: why} for each of `keys` whose value names a checkpoint, VAE or face restorer that is
        not here; the settings store refuses such a change before writing anything."""
        problems: dict[str, str] = {}
        if "sd_vae" in keys and settings.sd_vae not in (vae_files.AUTOMATIC, vae_files.NONE):
            try:
                vae_files.resolve_vae(settings.sd_vae, Path("."), self.manager.vaes)
            except ValueError as e:
                problems["sd_vae"] = str(e)
        if "sd_model_checkpoint" in keys and settings.sd_model_checkpoint:
            try:
                self.manager.find(settings.sd_model_checkpoint)
            except UnknownCheckpointError as e:
                problems["sd_model_checkpoint"] = str(e)
        if "face_restoration_model" in keys and settings.face_restoration_model not in RESTORER_NAMES.values():
            problems["face_restoration_model"] = (f"unknown face restorer {settings.face_restoration_model!r}; "
                                                  f"choose one of: {', '.join(RESTORER_NAMES.values())}")
        return problems

    def job_settings(self, overrides: dict[str, Any] | None = None) -> Settings:
        """Saved settings with per-job overrides (raises pydantic.ValidationError for a bad value)."""
        return self.settings.validate_changes(overrides or {})[0]

    def checkpoint_for(self, settings: Settings, explicit: str | None = None) -> CheckpointInfo:
        """The checkpoint a job runs on; raises UnknownCheckpointError / NoCheckpointError."""
        query = explicit or settings.sd_model_checkpoint
        if query:
            return self.manager.find(query)
        loaded = self.manager.loaded
        return loaded.checkpoint if loaded is not None else self.manager.default_checkpoint()

    def _load(self, checkpoint: CheckpointInfo, vae: str):
        if self.manager.vae_choice != vae:
            try:
                self.manager.set_vae(vae)
            except ValueError as e:  # its file was removed after the choice was made
                log.warning("%s; using Automatic", e)
                self.manager.set_vae(vae_files.AUTOMATIC)
        model = self.manager.get(checkpoint.title)
        runner = self.manager.runner_for(model)
        if runner is not None:
            start_warm_up(runner)
        return model

    def warmup_note(self) -> str | None:
        """What is being compiled in the background (--compile), for progress displays."""
        runner = self.manager.runner
        return None if runner is None else warmup_note(runner.warmups())

    def load_model(self, checkpoint: str | None = None, **submit_options) -> Job:
        """A queue job that loads `checkpoint` (or the one the settings name) between generations."""
        settings = self.settings.current
        info = self.checkpoint_for(settings, checkpoint)
        return self.queue.submit("load-model", lambda job: self._load(info, settings.sd_vae).checkpoint,
                                 bounded=False, **submit_options)

    def unload_model(self) -> Job:
        return self.queue.submit("unload-model", lambda job: self.manager.unload(), bounded=False)

    def set_checkpoint(self, checkpoint: str) -> CheckpointInfo:
        """Save the choice and load it (after the jobs already queued)."""
        info = self.manager.find(checkpoint)
        self.settings.update({"sd_model_checkpoint": info.title})
        return self.load_model(info.title).wait()

    # ---- generations ---------------------------------------------------------------------------
    def submit(self, request: Txt2ImgRequest, *, overrides: dict[str, Any] | None = None,
               persist_overrides: bool = False, checkpoint: str | None = None, job_id: str | None = None,
               owner: str | None = None, save: bool = True) -> Job:
        """Queue a txt2img or img2img job (by the request's type). Bad overrides, an unknown checkpoint
        or too much work (RequestTooLargeError) raise here, before anything is queued."""
        settings = self.job_settings(overrides)
        info = self.checkpoint_for(settings, checkpoint)
        native = self.manager.native_size(info)  # read from the file's header; None if it cannot be read
        request = apply_settings(sized_for(request, native), settings)
        # As it will run: `--w 2048 --ar 1:1` in a prompt changes the size; bad parameters are refused now.
        check_work(prepare_request(request, native or request.width, self.manager.paths.styles_file),
                   self.max_request_work)
        kind = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
        outputs = SaveOptions(self.outputs_dir) if save else None
        passes, steps = expected_progress(request)

        def work(job: Job) -> Generated:
            model = self._load(info, settings.sd_vae)
            run = img2img if kind == "img2img" else txt2img
            timestamp = _dt.datetime.now().strftime("%Y%m%d%H%M%S")
            resources = dataclasses.replace(self.manager.resources(model),
                                            face_restoration_model=settings.face_restoration_model,
                                            code_former_weight=settings.code_former_weight,
                                            is_interrupted=lambda: job.interrupted)
            # Previews on this model, through its runner.
            reporter = JobStepReporter(job, model, PreviewSchedule.from_settings(settings), resources.runner)
            result = run(model, request, outputs, reporter, resources, self.hooks)
            if persist_overrides and overrides:
                self.settings.update(overrides)
            return Generated(result, request, model.checkpoint, model.vae_name, job.interrupted, timestamp, settings)

        return self.queue.submit(kind, work, job_id=job_id, owner=owner, job_count=passes, steps=steps)

    def submit_variations(self, request: Txt2ImgRequest, seed: int, strength: float) -> Job:
        """Variations of one image of an earlier job: its seed, with a fresh variation seed at `strength`.
        The prompt's styles and Midjourney parameters are applied first and taken out, so a `--seed` in the
        prompt cannot override the seed of the chosen image."""
        native = self.manager.native_size(self.checkpoint_for(self.settings.current))
        prepared = prepare_request(request, native or request.width, self.manager.paths.styles_file)
        return self.submit(prepared.model_copy(update={"styles": [], "seed": seed, "subseed": -1,
                                                       "subseed_strength": strength}))

    # ---- extras --------------------------------------------------------------------------------
    def submit_extras(self, request: ExtrasRequest, sources: list[ExtrasSource], *, save: bool,
                      job_id: str | None = None, owner: str | None = None) -> Job:
        """Queue upscaling / face restoration of finished images (a list of ExtrasOutput when done), saved
        to outputs/extras-images as generations are saved when `save`. A name this server does not know or
        a result too large raises ExtrasFieldError here, before anything is queued."""
        check_extras(request, sources, self.manager.upscalers)
        work = extras_work(request, sources, self.manager, SaveOptions(self.outputs_dir) if save else None)
        return self.queue.submit("extras", work, job_id=job_id, owner=owner)

    def txt2img(self, request: Txt2ImgRequest, checkpoint: str | None = None) -> GenerationResult:
        """Queue and wait (the command line's path)."""
        return self.submit(request, checkpoint=checkpoint).wait().result

    def close(self) -> None:
        """Finish the running job and stop taking new ones."""
        self.queue.stop()


def start_warm_up(runner: ModelRunner) -> None:
    """With --compile, a 1-step image at the model's native size starts compiling the UNet, VAE decoder
    and text encoder graphs for the size most images use, before the first request asks for it."""
    if not runner.compiles or runner.warmups():
        return
    model, size = runner.model, runner.model.native_size
    # The VAE decoder first, as an image's decode would call it: its compile helper then runs alongside
    # the UNet's instead of starting when the image reaches its decode.
    decode_latents(model, torch.zeros(1, model.latent_channels, size // 8, size // 8, device=model.policy.device),
                   runner)
    txt2img(model, Txt2ImgRequest(prompt="", steps=1, width=size, height=size, save_images=False), None,
            resources=Resources(runner=runner))
    # Each part's compile helpers were taken from the pool at its first call, above (none when the cache
    # already holds its graphs); the ones left would only wait for jobs that will not come.
    runner.release_helpers()
