"""Live previews are made on the worker, with the running job's own model; the UI and the API only read
the finished preview from the job's progress and never decode anything themselves.

Two tiny checkpoints whose VAEs decode visibly differently (one decoder's output bias shifted up: every
pixel white; the other's down: every pixel black) show whose VAE made a "Full" preview.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from modules.app.api.progress import progress_of
from modules.app.cmd_args import parse_args
from modules.io.generation_request import Txt2ImgRequest
from modules.io.paths import Paths
from modules.models.devices import DevicePolicy
from modules.service.generation_service import GenerationService
from modules.service.job_queue import JobQueue
from modules.service.jobs import Job, JobState
from modules.service.model_manager import ModelManager
from modules.service.settings_store import SettingsStore
from server_process import ServerProcess
from tiny_models import save_checkpoint, tiny_ldm_yaml, tiny_original_state_dict

DECODER_OUTPUT_BIAS = "first_stage_model.decoder.conv_out.bias"
SHADES = {"bright": 4.0, "dark": -4.0}  # far past [-1, 1]: every decoded pixel clamps to 255 or to 0
FULL_EVERY_STEP = {"show_progress_type": "Full", "show_progress_every_n_steps": 1, "live_previews_enable": True}
LONG = {"prompt": "a long one", "width": 64, "height": 64, "steps": 150, "n_iter": 4, "seed": 3,
        "sampler_name": "Euler"}
WORKER_THREAD = "job-worker-device"


def _write_checkpoints(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = tiny_original_state_dict("sd1")
    for name, shift in SHADES.items():
        save_checkpoint({**state, DECODER_OUTPUT_BIAS: state[DECODER_OUTPUT_BIAS] + shift},
                        folder / f"{name}.safetensors")
        (folder / f"{name}.yaml").write_text(tiny_ldm_yaml("sd1"))
    return folder


def _shade(image: Image.Image) -> str:
    mean = float(np.asarray(image.convert("L")).mean())
    return "bright" if mean > 250 else "dark" if mean < 5 else f"neither (mean {mean:.0f})"


def _wait_for(condition, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.01)
    raise AssertionError(f"not within {seconds} s")


# ---- in process: which thread and which model decode the previews -------------------------------------

@pytest.fixture
def service(tmp_path):
    _write_checkpoints(tmp_path / "models" / "Stable-diffusion")
    paths = Paths.from_args(parse_args(["--data-dir", str(tmp_path), "--no-shipped-models"], environ={}))
    service = GenerationService(ModelManager(paths, DevicePolicy.cpu()), JobQueue(), SettingsStore(paths.config_file),
                                paths.outputs_dir)
    yield service
    service.queue.stop()


class DecoderCalls:
    """Who runs a model's VAE decoder: (checkpoint name, thread name) per call, by a forward hook."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._handles = []

    def watch(self, model) -> None:
        name = model.checkpoint.model_name
        self._handles.append(model.vae.decoder.register_forward_hook(
            lambda *_: self.calls.append((name, threading.current_thread().name))))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _watch_running(service: GenerationService, job: Job, checkpoint: str, decoders: DecoderCalls,
                   previews_wanted: int = 3) -> list[tuple[int, str]]:
    """(preview number, shade) of each preview the job shows, read as the API reads them, until a few came;
    the job is interrupted then."""
    _wait_for(lambda: job.state == JobState.RUNNING and job.progress.step > 0)
    model = service.manager.loaded  # the job has loaded its model before its first step
    assert model.checkpoint.model_name == checkpoint
    decoders.watch(model)
    seen: dict[int, str] = {}
    while len(seen) < previews_wanted and not job.done:
        answer = progress_of(job, service.queue, with_preview=True)  # what GET /sdapi/v1/progress answers
        preview = job.progress.preview
        if answer.current_image and preview is not None and preview.number not in seen:
            seen[preview.number] = _shade(Image.open(io.BytesIO(base64.b64decode(answer.current_image))))
        time.sleep(0.005)
    job.interrupt()
    job.wait(60)
    return sorted(seen.items())


def test_each_jobs_previews_are_decoded_on_the_worker_by_that_jobs_own_vae(service):
    """Two jobs back to back on different checkpoints, the second queued while the first runs (when a
    preview decoder taken from the loaded model at submission would be the first job's)."""
    decoders = DecoderCalls()
    try:
        bright = service.submit(Txt2ImgRequest(**LONG), overrides=FULL_EVERY_STEP, checkpoint="bright", save=False)
        dark = service.submit(Txt2ImgRequest(**LONG), overrides=FULL_EVERY_STEP, checkpoint="dark", save=False)
        bright_previews = _watch_running(service, bright, "bright", decoders)
        dark_previews = _watch_running(service, dark, "dark", decoders)
    finally:
        decoders.close()
    assert len(bright_previews) >= 3 and {shade for _, shade in bright_previews} == {"bright"}
    assert len(dark_previews) >= 3 and {shade for _, shade in dark_previews} == {"dark"}
    # Every decode, by either model, ran on the worker; reading progress decoded nothing.
    assert {thread for _, thread in decoders.calls} == {WORKER_THREAD}
    assert {name for name, _ in decoders.calls} == {"bright", "dark"}
    assert bright.wait(0).interrupted and dark.wait(0).interrupted


def test_cheap_previews_need_no_vae_and_previews_off_make_none(service):
    decoders = DecoderCalls()
    cheap = service.submit(Txt2ImgRequest(**LONG), checkpoint="bright", save=False,
                           overrides={**FULL_EVERY_STEP, "show_progress_type": "Approx cheap"})
    try:
        previews = _watch_running(service, cheap, "bright", decoders)
    finally:
        decoders.close()
    assert len(previews) >= 3 and len(decoders.calls) == 1  # the linear latent map; the one decode is the image's
    assert {shade for _, shade in previews} != {"bright"}  # not the VAE's all-white picture

    off = service.submit(Txt2ImgRequest(**{**LONG, "steps": 20}), checkpoint="bright", save=False,
                         overrides={**FULL_EVERY_STEP, "live_previews_enable": False})
    shown = []
    while not off.done:
        shown.append(off.progress.preview)
        time.sleep(0.005)
    assert off.wait(0).result.images and all(preview is None for preview in shown)


@pytest.mark.parametrize("every, previews", [(-1, 3), (2, 9), (4, 4)])
def test_previews_come_every_n_steps_of_the_job_or_at_each_batchs_end(service, every, previews):
    """Three batches of 6 steps: every 2 steps is 9 previews, every 4 steps (counted over the job) 4,
    and -1 ("only at the end") one per batch, when its sampling ends."""
    service.submit(Txt2ImgRequest(**{**LONG, "steps": 1}), checkpoint="dark", save=False).wait(60)  # loaded
    decoders = DecoderCalls()
    decoders.watch(service.manager.loaded)
    try:
        job = service.submit(Txt2ImgRequest(**{**LONG, "steps": 6, "n_iter": 3}), checkpoint="dark", save=False,
                             overrides={**FULL_EVERY_STEP, "show_progress_every_n_steps": every})
        assert len(job.wait(60).result.images) == 3
    finally:
        decoders.close()
    assert len(decoders.calls) == previews + 3  # the previews, and each batch's image


# ---- over HTTP: the real server answers with the preview its worker made --------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoints = _write_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    with ServerProcess("--api", "--ckpt-dir", str(checkpoints), "--no-shipped-models",
                       data_dir=tmp_path_factory.mktemp("previews")) as running:
        yield running


def _progress(server, task: str) -> dict:
    return requests.get(f"{server.url}/sdapi/v1/progress", params={"id_task": task}, timeout=10).json()


def _preview_over_http(server, checkpoint: str, task: str) -> str:
    """The shade of the live preview `/sdapi/v1/progress` shows while a long job runs on `checkpoint`."""
    body = {**LONG, "force_task_id": task, "override_settings": {**FULL_EVERY_STEP, "sd_model_checkpoint": checkpoint}}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(requests.post, f"{server.url}/sdapi/v1/txt2img", json=body, timeout=300)
        image = _wait_for(lambda: _progress(server, task).get("current_image"), 120)
        requests.post(f"{server.url}/sdapi/v1/interrupt", params={"id_task": task}, timeout=10)
        assert answer.result().status_code == 200
    return _shade(Image.open(io.BytesIO(base64.b64decode(image))))


def test_progress_over_http_shows_the_running_jobs_own_full_preview(server):
    assert _preview_over_http(server, "bright", "task(bright1)") == "bright"
    assert _preview_over_http(server, "dark", "task(dark1)") == "dark"  # not the VAE loaded before it
    assert "Traceback" not in server.log()


def test_progress_over_http_has_no_image_when_previews_are_off_or_skipped(server):
    task = "task(nopreview)"
    body = {**LONG, "force_task_id": task, "override_settings": {"live_previews_enable": False}}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(requests.post, f"{server.url}/sdapi/v1/txt2img", json=body, timeout=300)
        _wait_for(lambda: _progress(server, task)["state"]["sampling_step"] >= 5, 120)
        assert _progress(server, task)["current_image"] is None
        requests.post(f"{server.url}/sdapi/v1/interrupt", params={"id_task": task}, timeout=10)
        assert answer.result().status_code == 200
    task = "task(skipimage)"
    body = {**LONG, "force_task_id": task}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(requests.post, f"{server.url}/sdapi/v1/txt2img", json=body, timeout=300)
        _wait_for(lambda: _progress(server, task).get("current_image"), 120)
        skipped = requests.get(f"{server.url}/sdapi/v1/progress",
                               params={"id_task": task, "skip_current_image": True}, timeout=10).json()
        assert skipped["current_image"] is None and skipped["state"]["sampling_step"] > 0
        requests.post(f"{server.url}/sdapi/v1/interrupt", params={"id_task": task}, timeout=10)
        assert answer.result().status_code == 200


def test_pixel_bias_really_shifts_the_decoder(tmp_path):
    """The premise of the tests above: the two checkpoints' VAEs decode the same latents white and black."""
    from modules.models.checkpoints import CheckpointInfo
    from modules.models.sd_loader import load_checkpoint
    from modules.pipeline.live_preview import PreviewMaker

    folder = _write_checkpoints(tmp_path)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in SHADES:
        path = folder / f"{name}.safetensors"
        model = load_checkpoint(CheckpointInfo(path, path.name, None), DevicePolicy.cpu())
        [image] = PreviewMaker(model, "Full").start(latents).images()
        assert image.size == (64, 64) and _shade(image) == name


def test_a_full_preview_that_is_not_finite_is_left_out_and_the_model_stays_as_it_was(tmp_path):
    """An image's decode that gives NaN in half precision switches the VAE to float32 for good; a preview
    must never change the model under the job, so a non-finite one is simply not shown."""
    import dataclasses

    from modules.models.checkpoints import CheckpointInfo
    from modules.models.sd_loader import load_checkpoint
    from modules.pipeline.progress import SamplingStep
    from modules.service.step_reporting import JobStepReporter, PreviewSchedule

    state = tiny_original_state_dict("sd1")
    path = save_checkpoint({**state, DECODER_OUTPUT_BIAS: torch.full_like(state[DECODER_OUTPUT_BIAS], float("nan"))},
                           tmp_path / "nan.safetensors")
    (tmp_path / "nan.yaml").write_text(tiny_ldm_yaml("sd1"))
    model = load_checkpoint(CheckpointInfo(path, path.name, None),
                            dataclasses.replace(DevicePolicy.cpu(), vae_dtype=torch.float16))
    policy = model.policy
    job = Job("task(nan)", "txt2img", lambda job: None)
    report = JobStepReporter(job, model, PreviewSchedule("Full", 1))
    for i in range(3):
        report(SamplingStep(i, 3, torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(i))))
    assert job.progress.preview is None and job.progress.step == 3
    assert model.policy is policy and {p.dtype for p in model.vae.parameters()} == {torch.float16}
