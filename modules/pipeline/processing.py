"""txt2img and img2img as named stages over one request, with hook points between them (hooks.py).

    prepare prompts (styles, comments) -> [before_process] -> resolve seeds, look up samplers
      -> apply LoRA -> [process] -> conditioning
      -> each batch: [before_batch] -> sample ([cfg_denoiser], [cfg_after_cfg] at each call; hires pass)
           -> decode (img2img: put back into the init image) -> [after_batch]
           -> post-process each image [postprocess_image] -> infotexts -> save [image_saved]
      -> grid [image_saved] -> [postprocess]
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from modules.accel.runner import ModelRunner
from modules.io.generation_request import Img2ImgRequest, Txt2ImgRequest
from modules.io.image_saving import SaveOptions
from modules.io.infotext import format_number
from modules.models import lora
from modules.models.embeddings import ti_hashes
from modules.models.sd_model import StableDiffusionModel
from modules.pipeline.builtin_hooks import builtin_hooks
from modules.pipeline.hires import hires_image_cond, hires_infotext, hires_size, hires_start
from modules.pipeline.hooks import (BatchContext, BatchImagesContext, BeforeProcessContext, HookPoint, Hooks,
                                    ImageContext, ImageSavedContext, JobInfo, PostprocessContext, ProcessContext)
from modules.pipeline.img2img_init import InitImage, init_latent, mask_infotext, prepare_init_image, put_back
from modules.pipeline.job import GenerationResult, Resources
from modules.pipeline.latent_sampling import (InitLatent, NoiseSettings, SamplingHooks, SamplingSettings,
                                              sample_latents)
from modules.pipeline.outputs import build_infotext, save_batch, save_grid, save_options_for
from modules.pipeline.prompts.conditioning import PromptConditioning, build_prompt_conditioning
from modules.pipeline.prompts.preparation import written_request
from modules.pipeline.prompts.text_encoding import emphasis_infotext
from modules.pipeline.vae_codec import decode_latents, inpainting_conditioning
from modules.sampling.registry import SamplerSpec, find_sampler
from modules.sampling.rng import resolve_seed
from modules.pipeline.progress import StepReporter

__all__ = ["GenerationResult", "Resources", "generate", "img2img", "txt2img"]


# ---- request -> what the stages run with -------------------------------------------------------

def resolve_seeds(request: Txt2ImgRequest) -> Txt2ImgRequest:
    """The request with a random seed and variation seed drawn for -1: the one place seeds are resolved,
    after the before-process hooks (a prompt's `--chaos` asks for a random variation seed)."""
    return request.model_copy(update={"seed": resolve_seed(request.seed), "subseed": resolve_seed(request.subseed)})


def batch_seeds(request: Txt2ImgRequest, batch_index: int) -> tuple[list[int], list[int]]:
    """Seeds and variation seeds of one batch: seed + i per image, or, with a variation strength,
    one shared seed and subseed + i (AUTOMATIC1111's rule)."""
    start = batch_index * request.batch_size
    indices = range(start, start + request.batch_size)
    if request.subseed_strength > 0:
        return [request.seed] * request.batch_size, [request.subseed + i for i in indices]
    return [request.seed + i for i in indices], [request.subseed + i for i in indices]


def sampling_settings(request: Txt2ImgRequest, sampler: SamplerSpec, width: int, height: int,
                      steps: int | None = None, scheduler: str | None = None) -> SamplingSettings:
    return SamplingSettings(
        stop_at_fraction=request.stop_at_fraction, sampler=sampler, scheduler=scheduler or request.scheduler,
        steps=steps or request.steps, cfg_scale=request.cfg_scale, width=width, height=height,
        s_churn=request.s_churn, s_tmin=request.s_tmin, s_tmax=request.s_tmax, s_noise=request.s_noise,
        eta=request.eta)


def noise_settings(request: Txt2ImgRequest, seeds: list[int], subseeds: list[int]) -> NoiseSettings:
    return NoiseSettings(seeds=seeds, subseeds=subseeds, subseed_strength=request.subseed_strength,
                         seed_resize_from_h=max(request.seed_resize_from_h, 0),
                         seed_resize_from_w=max(request.seed_resize_from_w, 0), source=request.randn_source,
                         eta_noise_seed_delta=request.eta_noise_seed_delta,
                         initial_noise_multiplier=getattr(request, "initial_noise_multiplier", 1.0))


def encode_conditioning(model: StableDiffusionModel, prompt: str, negative: str, request: Txt2ImgRequest,
                        width: int, height: int, steps: int, resources: Resources,
                        image_cond: torch.Tensor | None = None) -> PromptConditioning:
    return build_prompt_conditioning(model, prompt, negative, steps, width, height, request.clip_skip,
                                     request.emphasis, resources.embeddings, image_cond, resources.runner)


def prompt_infotext(request: Txt2ImgRequest, conditioning: PromptConditioning) -> dict[str, object]:
    return {"Emphasis": emphasis_infotext([request.prompt, request.negative_prompt], request.emphasis),
            "TI hashes": ti_hashes(conditioning.used_embeddings)}


@contextmanager
def _loras_applied(model: StableDiffusionModel, request: Txt2ImgRequest, resources: Resources,
                   result: GenerationResult):
    """Apply the prompt's <lora:...> tags for the duration; yields the request without the tags
    and the infotext fields to add. The base weights come back exactly afterwards."""
    plan = lora.plan_loras(request.prompt, resources.lora_files, resources.lora_cache)
    if plan.not_found:  # AUTOMATIC1111's words, which its users look for
        result.warnings.append(f"Networks not found: {', '.join(plan.not_found)}")
    result.warnings += [f"LoRA {name} could not be read: {why}" for name, why in plan.failed.items()]
    stripped = request.model_copy(update={"prompt": plan.prompt})
    with lora.apply_loras(model, plan.loras):
        yield stripped, plan.infotext


# ---- one job --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Samplers:
    """The samplers of the job's passes, looked up once (the request has validated their names)."""

    first: SamplerSpec
    hires: SamplerSpec

    @classmethod
    def of(cls, request: Txt2ImgRequest) -> Samplers:
        first = find_sampler(request.sampler_name)
        hires = request.enable_hr and request.hr_sampler_name
        return cls(first, find_sampler(request.hr_sampler_name) if hires else first)


@dataclass
class Job:
    """What every stage of one job shares."""

    info: JobInfo
    hooks: Hooks
    stripped: Txt2ImgRequest  # the request without LoRA tags: what the text encoder sees
    lora_infotext: dict[str, object]
    samplers: Samplers
    callback: StepReporter | None
    save: SaveOptions | None
    result: GenerationResult

    @property
    def model(self) -> StableDiffusionModel:
        return self.info.model

    @property
    def request(self) -> Txt2ImgRequest:
        return self.info.request

    @property
    def runner(self) -> ModelRunner:
        return self.info.resources.runner

    def sampling_hooks(self, hires: bool = False) -> SamplingHooks:
        return SamplingHooks(self.hooks, self.info, hires)


@dataclass
class Batch:
    index: int
    seeds: list[int]
    subseeds: list[int]


class Txt2ImgStages:
    """Conditioning once for the job; each batch sampled from noise, then (hires fix) upscaled and sampled again."""

    def __init__(self, job: Job):
        model, request = job.model, job.request
        self.job = job
        self.settings = sampling_settings(request, job.samplers.first, request.width, request.height)
        image_cond = inpainting_conditioning(model, torch.zeros(1, 3, request.height, request.width), None,
                                             request.batch_size)
        self.conditioning = encode_conditioning(model, job.stripped.prompt, request.negative_prompt, request,
                                                request.width, request.height, self.settings.steps,
                                                job.info.resources, image_cond)

    def sample(self, batch: Batch) -> torch.Tensor:
        job = self.job
        latents = sample_latents(job.model, self.settings, noise_settings(job.request, batch.seeds, batch.subseeds),
                                 self.conditioning, callback=job.callback, hooks=job.sampling_hooks(),
                                 runner=job.runner)
        return self._hires_pass(latents, batch) if job.request.enable_hr else latents

    def _hires_pass(self, latents: torch.Tensor, batch: Batch) -> torch.Tensor:
        job, model, request = self.job, self.job.model, self.job.stripped
        width, height = hires_size(request)
        start = hires_start(model, request, latents, job.info.resources.upscalers, job.runner)
        settings = sampling_settings(request, job.samplers.hires, width, height,
                                     steps=request.hr_second_pass_steps or request.steps,
                                     scheduler=request.hr_scheduler)
        conditioning = encode_conditioning(model, request.hr_prompt or request.prompt,
                                           request.hr_negative_prompt or request.negative_prompt, request, width,
                                           height, settings.steps, job.info.resources,
                                           hires_image_cond(model, start, len(batch.seeds), job.runner))
        init = InitLatent(start, request.denoising_strength, fixed_steps=True)
        return sample_latents(model, settings, noise_settings(request, batch.seeds, batch.subseeds), conditioning,
                              init, job.callback, hooks=job.sampling_hooks(hires=True), runner=job.runner)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return decode_latents(self.job.model, latents, self.job.runner)

    def infotext_params(self) -> dict[str, object]:
        request = self.job.request
        hires = hires_infotext(self.job.stripped) if request.enable_hr else {}
        return {**prompt_infotext(request, self.conditioning), **self.job.lora_infotext, **hires}


class Img2ImgStages:
    """The init image prepared once; each batch encoded, noised to the strength's level and sampled, then put
    back into the init image."""

    def __init__(self, job: Job):
        request = job.request
        self.job = job
        self.init: InitImage = prepare_init_image(request)
        self.settings = sampling_settings(request, job.samplers.first, request.width, request.height)
        self.conditioning: PromptConditioning | None = None

    def sample(self, batch: Batch) -> torch.Tensor:
        job, model, request = self.job, self.job.model, self.job.request
        noise = noise_settings(request, batch.seeds, batch.subseeds)
        init, image_cond = init_latent(model, request, self.init, len(batch.seeds), noise)
        self.conditioning = encode_conditioning(model, job.stripped.prompt, request.negative_prompt, request,
                                                request.width, request.height, self.settings.steps,
                                                job.info.resources, image_cond)
        return sample_latents(model, self.settings, noise, self.conditioning, init, job.callback,
                              hooks=job.sampling_hooks(), runner=job.runner)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return [put_back(self.init, image) for image in decode_latents(self.job.model, latents, self.job.runner)]

    def infotext_params(self) -> dict[str, object]:
        request = self.job.request
        return {"Denoising strength": format_number(request.denoising_strength), **self.job.lora_infotext,
                **mask_infotext(request, self.init), **prompt_infotext(request, self.conditioning)}


STAGES = {"txt2img": Txt2ImgStages, "img2img": Img2ImgStages}


def txt2img(model: StableDiffusionModel, request: Txt2ImgRequest, outputs_dir: Path | SaveOptions | None,
            callback: StepReporter | None = None, resources: Resources | None = None,
            hooks: Hooks | None = None) -> GenerationResult:
    """`hooks`: the registry the service built at start-up; None gives the project's own (builtin_hooks)."""
    return generate("txt2img", model, request, outputs_dir, callback, resources, hooks)


def img2img(model: StableDiffusionModel, request: Img2ImgRequest, outputs_dir: Path | SaveOptions | None,
            callback: StepReporter | None = None, resources: Resources | None = None,
            hooks: Hooks | None = None) -> GenerationResult:
    return generate("img2img", model, request, outputs_dir, callback, resources, hooks)


def prepare(kind: str, model: StableDiffusionModel, request: Txt2ImgRequest, resources: Resources,
            hooks: Hooks) -> Txt2ImgRequest:
    """The request as the job runs it: styles and comments applied, the before-process hooks' changes, seeds."""
    ctx = BeforeProcessContext(kind, model, resources, written_request(request, resources.styles_file))
    hooks.run(HookPoint.BEFORE_PROCESS, ctx)
    return resolve_seeds(ctx.request)


def generate(kind: str, model: StableDiffusionModel, request: Txt2ImgRequest,
             outputs_dir: Path | SaveOptions | None, callback: StepReporter | None = None,
             resources: Resources | None = None, hooks: Hooks | None = None) -> GenerationResult:
    resources = resources or Resources()
    if resources.runner is None:  # a caller without the model manager's runner: the parts run plain
        resources = dataclasses.replace(resources, runner=ModelRunner(model))
    hooks = (builtin_hooks() if hooks is None else hooks).snapshot()
    request = prepare(kind, model, request, resources, hooks)
    result = GenerationResult(request=request)
    info = JobInfo(kind, model, request, resources, warnings=result.warnings)
    with _loras_applied(model, request, resources, result) as (stripped, lora_infotext):
        job = Job(info, hooks, stripped, lora_infotext, Samplers.of(request), callback,
                  save_options_for(outputs_dir, request), result)
        hooks.run(HookPoint.PROCESS, ProcessContext(info))
        stages = STAGES[kind](job)
        for batch_index in range(request.n_iter):
            if batch_index and resources.is_interrupted():
                break  # an interrupt stops the job: batches not started are not run (a skip ends one batch only)
            run_batch(job, stages, Batch(batch_index, *batch_seeds(request, batch_index)))
        grid = save_grid(result, model, request, kind, _unless_interrupted(job))
        if grid is not None:
            hooks.run(HookPoint.IMAGE_SAVED, ImageSavedContext(info, result.grid_path, grid, result.infotexts[0]))
    hooks.run(HookPoint.POSTPROCESS, PostprocessContext(info, result))
    return result


def run_batch(job: Job, stages: Txt2ImgStages | Img2ImgStages, batch: Batch) -> None:
    info, hooks = job.info, job.hooks
    hooks.run(HookPoint.BEFORE_BATCH, BatchContext(info, batch.index, batch.seeds, batch.subseeds))
    images = stages.decode(stages.sample(batch))
    width, height = images[0].size
    decoded = BatchImagesContext(info, batch.index, batch.seeds, images)
    hooks.run(HookPoint.AFTER_BATCH, decoded)
    images = [postprocess_image(job, batch, index, image) for index, image in enumerate(decoded.images)]
    extra = {**stages.infotext_params(), **info.extra_params}
    infotexts = [build_infotext(job.model, job.request, job.samplers.first, seed, subseed, width, height, extra)
                 for seed, subseed in zip(batch.seeds, batch.subseeds)]
    paths = save_batch(job.result, job.model, job.request, info.kind, _unless_interrupted(job), images, batch.seeds,
                       infotexts)
    for path, image, infotext in zip(paths, images, infotexts):
        hooks.run(HookPoint.IMAGE_SAVED, ImageSavedContext(info, path, image, infotext))


def postprocess_image(job: Job, batch: Batch, index: int, image: Image.Image) -> Image.Image:
    ctx = ImageContext(job.info, batch.index, index, batch.seeds[index], image)
    job.hooks.run(HookPoint.POSTPROCESS_IMAGE, ctx)
    return ctx.image


def _unless_interrupted(job: Job) -> SaveOptions | None:
    """Incomplete images are returned but not saved (AUTOMATIC1111's "Save incomplete images" is off
    by default): an interrupted job leaves no half-denoised file in outputs/."""
    return None if job.info.resources.is_interrupted() else job.save
