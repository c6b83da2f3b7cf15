"""The pipeline's hook points on a real tiny model: each point is called in order, as often as its batches,
images and steps say, with its typed context; what a hook changes is what the user gets; a hook that fails
fails its job, by name, and the next job runs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from modules.app.cmd_args import parse_args
from modules.io.generation_request import Img2ImgRequest, Txt2ImgRequest
from modules.io.image_saving import read_parameters
from modules.io.paths import Paths
from modules.models.devices import DevicePolicy
from modules.pipeline.builtin_hooks import builtin_hooks
from modules.pipeline.hooks import (CONTEXT_TYPES, AfterCFGContext, BatchContext, DenoiserContext, HookFailed,
                                    HookPoint, Hooks, ImageContext, JobInfo)
from modules.pipeline.processing import img2img, txt2img
from modules.pipeline.vae_codec import decode_latents
from modules.service.generation_service import GenerationService
from modules.service.job_queue import JobQueue
from modules.service.model_manager import ModelManager
from modules.service.settings_store import SettingsStore
from tiny_models import load_tiny_model, save_checkpoint, tiny_ldm_yaml, tiny_original_state_dict

SMALL = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 3, "seed": 21, "sampler_name": "Euler",
         "save_images": False}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_tiny_model(tmp_path_factory.mktemp("sd1"), "sd1")


class Recorder:
    """A hook at every point, recording (point, what its context says) in call order."""

    def __init__(self, hooks: Hooks):
        self.calls: list[tuple[HookPoint, object]] = []
        for point in HookPoint:
            hooks.add(point, self._recorder(point), name=f"record {point}")

    def _recorder(self, point: HookPoint):
        def record(ctx) -> None:
            assert isinstance(ctx, CONTEXT_TYPES[point])
            self.calls.append((point, ctx))
        return record

    def points(self) -> list[HookPoint]:
        return [point for point, _ in self.calls]

    def contexts(self, point: HookPoint) -> list:
        return [ctx for p, ctx in self.calls if p == point]

    def denoiser_steps(self) -> list[tuple[bool, int, int]]:
        """(hires pass, step, total steps) of each cfg_denoiser call."""
        return [(ctx.hires, ctx.step, ctx.total_steps) for ctx in self.contexts(HookPoint.CFG_DENOISER)]


def recorded(with_builtins: bool = True) -> tuple[Hooks, Recorder]:
    hooks = builtin_hooks() if with_builtins else Hooks()
    return hooks, Recorder(hooks)


def batch_points(steps: int, images: int, saved: bool) -> list[HookPoint]:
    """The points of one batch of a first-order sampler (one denoiser call per step)."""
    return ([HookPoint.BEFORE_BATCH] + [HookPoint.CFG_DENOISER, HookPoint.CFG_AFTER_CFG] * steps
            + [HookPoint.AFTER_BATCH] + [HookPoint.POSTPROCESS_IMAGE] * images
            + ([HookPoint.IMAGE_SAVED] * images if saved else []))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_txt2img_batches_call_every_point_in_order(model, tmp_path):
    hooks, recorder = recorded()
    request = Txt2ImgRequest(**{**SMALL, "batch_size": 2, "n_iter": 2, "save_images": True})
    result = txt2img(model, request, tmp_path, hooks=hooks)

    expected = ([HookPoint.BEFORE_PROCESS, HookPoint.PROCESS] + batch_points(3, 2, saved=True) * 2
                + [HookPoint.IMAGE_SAVED, HookPoint.POSTPROCESS])  # the grid is saved too
    assert recorder.points() == expected
    assert recorder.denoiser_steps() == [(False, step, 3) for step in (1, 2, 3)] * 2
    batches: list[BatchContext] = recorder.contexts(HookPoint.BEFORE_BATCH)
    assert [(b.batch_index, b.seeds) for b in batches] == [(0, [21, 22]), (1, [23, 24])]
    images: list[ImageContext] = recorder.contexts(HookPoint.POSTPROCESS_IMAGE)
    assert [(c.batch_index, c.index, c.seed) for c in images] == [(0, 0, 21), (0, 1, 22), (1, 0, 23), (1, 1, 24)]
    # Every later hook sees the job as it runs: seeds resolved, one JobInfo for the whole job.
    jobs = {id(ctx.job) for point, ctx in recorder.calls if hasattr(ctx, "job")}
    assert len(jobs) == 1 and recorder.contexts(HookPoint.PROCESS)[0].job.request.seed == 21
    saved = recorder.contexts(HookPoint.IMAGE_SAVED)
    assert [ctx.path for ctx in saved] == [*result.paths, result.grid_path]
    assert all(read_parameters(ctx.path) == ctx.infotext for ctx in saved)
    (done,) = recorder.contexts(HookPoint.POSTPROCESS)
    assert done.result is result and len(result.images) == 4


def test_img2img_and_inpainting_call_every_point(model):
    init = txt2img(model, Txt2ImgRequest(**SMALL), None).images[0]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    for extra in ({}, {"mask": mask}):
        hooks, recorder = recorded()
        request = Img2ImgRequest(**{**SMALL, "steps": 4, "denoising_strength": 0.5, "init_images": [init], **extra})
        result = img2img(model, request, None, hooks=hooks)
        assert recorder.points() == [HookPoint.BEFORE_PROCESS, HookPoint.PROCESS, *batch_points(3, 1, saved=False),
                                     HookPoint.POSTPROCESS]
        # strength 0.5 of 4 steps: the schedule's last int(0.5 * 4) + 1 steps, as AUTOMATIC1111 runs them
        assert recorder.denoiser_steps() == [(False, step, 3) for step in (1, 2, 3)]
        (decoded,) = recorder.contexts(HookPoint.AFTER_BATCH)
        assert decoded.images == result.images  # the images as the user gets them (put back into the init image)


def test_hires_fix_calls_the_denoiser_points_in_both_passes(model):
    hooks, recorder = recorded()
    request = Txt2ImgRequest(**{**SMALL, "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2,
                                "denoising_strength": 0.6, "n_iter": 2})
    result = txt2img(model, request, None, hooks=hooks)
    first, hires = [(False, step, 3) for step in (1, 2, 3)], [(True, step, 2) for step in (1, 2)]
    assert recorder.denoiser_steps() == (first + hires) * 2
    assert recorder.points() == [HookPoint.BEFORE_PROCESS, HookPoint.PROCESS, *batch_points(5, 1, saved=False) * 2,
                                 HookPoint.POSTPROCESS]
    assert {ctx.x.shape[-1] for ctx in recorder.contexts(HookPoint.CFG_DENOISER) if ctx.hires} == {96 // 8}
    assert result.images[0].size == (96, 96)


def test_a_hook_that_changes_the_image_changes_what_is_returned_and_saved(model, tmp_path):
    plain = txt2img(model, Txt2ImgRequest(**SMALL), None).images[0]
    hooks = builtin_hooks()

    def invert(ctx: ImageContext) -> None:
        ctx.image = ImageOps.invert(ctx.image)
        ctx.job.extra_params["Inverted"] = "yes"

    hooks.add(HookPoint.POSTPROCESS_IMAGE, invert, name="invert")
    result = txt2img(model, Txt2ImgRequest(**{**SMALL, "save_images": True}), tmp_path, hooks=hooks)
    assert np.array_equal(pixels(result.images[0]), 255 - pixels(plain))
    (path,) = result.paths
    assert np.array_equal(pixels(Image.open(path)), pixels(result.images[0]))
    assert result.infotexts[0].endswith(", Inverted: yes") and read_parameters(path) == result.infotexts[0]


def test_denoiser_hooks_may_replace_the_conditioning_and_the_result(model):
    blue = Txt2ImgRequest(**{**SMALL, "prompt": "a blue square"})
    captured: list[DenoiserContext] = []
    capture = Hooks()
    capture.add(HookPoint.CFG_DENOISER, captured.append, name="capture")
    blue_image = txt2img(model, blue, None, hooks=capture).images[0]

    def use_blue(ctx: DenoiserContext) -> None:
        ctx.conds = captured[0].conds

    swapped = Hooks()
    swapped.add(HookPoint.CFG_DENOISER, use_blue, name="use blue")
    red_request = Txt2ImgRequest(**SMALL)
    assert np.array_equal(pixels(txt2img(model, red_request, None, hooks=swapped).images[0]), pixels(blue_image))

    def flatten(ctx: AfterCFGContext) -> None:
        ctx.denoised = ctx.denoised * 0

    flat = Hooks()
    flat.add(HookPoint.CFG_AFTER_CFG, flatten, name="flatten")
    image = pixels(txt2img(model, red_request, None, hooks=flat).images[0])
    # Every step's x0 is the zero latent, so that is where sampling ends.
    assert np.array_equal(image, pixels(decode_latents(model, torch.zeros(1, 4, 8, 8))[0]))


def test_before_process_may_rewrite_the_request(model):
    hooks = Hooks()

    def two_steps(ctx) -> None:
        ctx.request = ctx.request.model_copy(update={"steps": 2, "seed": -1})

    hooks.add(HookPoint.BEFORE_PROCESS, two_steps, name="two steps")
    recorder = Recorder(hooks)
    result = txt2img(model, Txt2ImgRequest(**{**SMALL, "prompt": "a cat --seed 5"}), None, hooks=hooks)
    # Without the builtin hooks the prompt's parameters stay text; the seed is resolved after the hooks ran.
    assert result.request.steps == 2 and result.request.seed >= 0 and result.request.prompt == "a cat --seed 5"
    assert "Steps: 2," in result.infotexts[0] and f"Seed: {result.request.seed}," in result.infotexts[0]
    assert len(recorder.contexts(HookPoint.CFG_DENOISER)) == 2


def test_registry_keeps_order_and_jobs_run_on_a_snapshot():
    hooks = Hooks()
    order = []
    hooks.add("before_batch", lambda ctx: order.append("first"), name="first")
    hooks.add(HookPoint.BEFORE_BATCH, lambda ctx: order.append("second"), name="second")
    snapshot = hooks.snapshot()
    hooks.add(HookPoint.BEFORE_BATCH, lambda ctx: order.append("later"), name="later")
    ctx = BatchContext(JobInfo("txt2img", None, Txt2ImgRequest(), None), 0, [1], [1])
    snapshot.run(HookPoint.BEFORE_BATCH, ctx)
    assert order == ["first", "second"]
    assert [hook.name for hook in hooks.at(HookPoint.BEFORE_BATCH)] == ["first", "second", "later"]
    with pytest.raises(TypeError, match="before_batch hooks take a BatchContext"):
        hooks.run(HookPoint.BEFORE_BATCH, object())
    with pytest.raises(ValueError):
        hooks.add("after_everything", print)


# ---- through the service: a failing hook fails its job only --------------------------------------------

@pytest.fixture
def service(tmp_path):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    save_checkpoint(tiny_original_state_dict("sd1"), folder / "tiny.safetensors")
    (folder / "tiny.yaml").write_text(tiny_ldm_yaml("sd1"))
    paths = Paths.from_args(parse_args(["--data-dir", str(tmp_path), "--no-shipped-models"], environ={}))
    service = GenerationService(ModelManager(paths, DevicePolicy.cpu()), JobQueue(), SettingsStore(paths.config_file),
                                paths.outputs_dir)
    yield service
    service.queue.stop()


def test_a_failing_hook_fails_its_job_with_its_name_and_the_next_job_runs(service):
    batches = Counter()

    def explode_on_request(ctx: BatchContext) -> None:
        batches[ctx.job.request.prompt] += 1
        if "explode" in ctx.job.request.prompt:
            raise RuntimeError("the extension broke")

    service.hooks.add(HookPoint.BEFORE_BATCH, explode_on_request, name="exploding")
    failing = service.submit(Txt2ImgRequest(**{**SMALL, "prompt": "explode", "n_iter": 3}), save=False)
    message = "Hook 'exploding' failed at before_batch: RuntimeError: the extension broke"
    with pytest.raises(HookFailed) as failure:
        failing.wait()
    assert str(failure.value) == message
    assert batches["explode"] == 1  # the job stopped at its first batch
    generated = service.submit(Txt2ImgRequest(**{**SMALL, "prompt": "a cat --seed 8"}), save=False).wait()
    assert len(generated.result.images) == 1 and batches["a cat"] == 1
    assert generated.result.seeds == [8]  # the service's hooks include the project's own (prompt parameters)
