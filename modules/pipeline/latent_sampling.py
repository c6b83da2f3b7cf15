"""One sampling run in latent space, for txt2img, img2img, inpainting and the hires pass.

    noise (seeded) -> [init latent + noise at the start sigma] -> sampler over sigmas with the guider
      -> [masked areas kept from the init latent] -> latents
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from modules.sampling.rng import ImageRNG
from modules.sampling.denoisers import DiscreteDenoiser
from modules.sampling.guidance import AfterCfg, BeforeModel, CFGDenoiser, GuidanceInputs, GuidedPrediction
from modules.sampling.registry import SamplerSpec, noise_sampler_for, run_sampler, sigmas_for
from modules.accel.runner import ModelRunner
from modules.models.sd_model import StableDiffusionModel
from modules.pipeline.hooks import AfterCFGContext, DenoiserContext, HookPoint, Hooks, JobInfo
from modules.pipeline.progress import SamplingInterrupted, SamplingStep, StepReporter


@dataclass(frozen=True)
class SamplingSettings:
    sampler: SamplerSpec
    scheduler: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    eta: float | None = None
    stop_at_fraction: float = 1.0  # `--stop N`: the last step jumps to sigma 0 after N% of the steps


@dataclass(frozen=True)
class NoiseSettings:
    seeds: list[int]
    subseeds: list[int]
    subseed_strength: float = 0.0
    seed_resize_from_h: int = 0
    seed_resize_from_w: int = 0
    source: str = "CPU"
    eta_noise_seed_delta: int = 0
    initial_noise_multiplier: float = 1.0


@dataclass(frozen=True)
class InitLatent:
    """What img2img starts from: the encoded image, how much to change it, and what to keep."""

    latent: torch.Tensor
    denoising_strength: float
    keep_mask: torch.Tensor | None = None  # 1 where the init latent is kept (outside an inpaint mask)
    fixed_steps: bool = False  # hires pass: run exactly `steps` steps over a stretched schedule


class MaskedDenoiser:
    """Keeps the unmasked part of the init latent in every x0 estimate, as AUTOMATIC1111 does."""

    def __init__(self, denoiser, init_latent: torch.Tensor, keep_mask: torch.Tensor):
        self.denoiser = denoiser
        self.init_latent = init_latent
        self.keep_mask = keep_mask

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra) -> torch.Tensor:
        denoised = self.denoiser(x, sigma, **extra)
        return self.init_latent * self.keep_mask + denoised * (1 - self.keep_mask)


def schedule_step(schedule_sigmas: torch.Tensor, sigma: torch.Tensor) -> int:
    """The 1-based step a denoiser call at `sigma` belongs to: the number of the schedule's sigmas (its
    last, 0, left out) at or above it, so a second-order sampler's extra evaluations count as the step
    they belong to."""
    value = float(sigma.reshape(-1)[0])
    return max(1, int((schedule_sigmas >= value * (1 - 1e-5)).sum()))


class ScheduledGuider:
    """Classifier-free guidance whose conditioning follows the prompt's schedule (prompt editing,
    alternation); `step_of(sigma)` says which step a call belongs to (schedule_step)."""

    def __init__(self, make_guider, conditioning, step_of: Callable[[torch.Tensor], int]):
        self.make_guider = make_guider
        self.conditioning = conditioning
        self.step_of = step_of
        self._guiders: dict[int, object] = {}
        self._current = None

    def _guider(self, step: int):
        parts, uncond = self.conditioning.at_step(step)
        key = (tuple(id(c) for c, _ in parts), tuple(w for _, w in parts), id(uncond))
        if key not in self._guiders:
            cond = parts[0][0] if len(parts) == 1 and parts[0][1] == 1.0 else parts
            self._guiders[key] = self.make_guider(cond, uncond)
        return self._guiders[key]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # A constant prompt needs no step: skipping step_of avoids reading sigma back from the GPU,
        # which would stall the host once per step.
        step = 1 if getattr(self.conditioning, "is_constant", False) else self.step_of(sigma)
        self._current = self._guider(step)
        return self._current(x, sigma)

    def latest_uncond(self) -> torch.Tensor | None:
        """The unconditional x0 of the latest call (None before the first, or when it was skipped), for
        samplers that renoise along it (CFG++)."""
        return None if self._current is None else self._current.last_uncond


@dataclass(frozen=True)
class SamplingHooks:
    """The job's hooks at the denoiser-call points, for one sampling pass."""

    hooks: Hooks
    job: JobInfo
    hires: bool = False  # the hires fix's second pass

    def guidance_callbacks(self, total_steps: int,
                           step_of: Callable[[torch.Tensor], int]) -> tuple[BeforeModel | None, AfterCfg | None]:
        """The guider's before-model and after-CFG callables that run the cfg_denoiser and cfg_after_cfg
        hooks; None for a point without hooks, so the guider does no work for it."""
        where = {"job": self.job, "total_steps": total_steps, "hires": self.hires}

        def before_model(inputs: GuidanceInputs) -> None:
            ctx = DenoiserContext(**where, step_of=partial(step_of, inputs.sigma), x=inputs.x, sigma=inputs.sigma,
                                  conds=inputs.conds, uncond=inputs.uncond)
            self.hooks.run(HookPoint.CFG_DENOISER, ctx)
            inputs.x, inputs.sigma, inputs.conds, inputs.uncond = ctx.x, ctx.sigma, ctx.conds, ctx.uncond

        def after_cfg(prediction: GuidedPrediction) -> None:
            ctx = AfterCFGContext(**where, step_of=partial(step_of, prediction.sigma), denoised=prediction.denoised,
                                  x=prediction.x, sigma=prediction.sigma, uncond_denoised=prediction.uncond,
                                  cond_denoised=prediction.conds, weights=prediction.weights)
            self.hooks.run(HookPoint.CFG_AFTER_CFG, ctx)
            prediction.denoised = ctx.denoised

        return (before_model if self.hooks.at(HookPoint.CFG_DENOISER) else None,
                after_cfg if self.hooks.at(HookPoint.CFG_AFTER_CFG) else None)


def stop_early(sigmas: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the first ceil(fraction * steps) steps; the last of them goes straight to sigma 0."""
    steps = len(sigmas) - 1
    keep = max(1, -(-int(round(fraction * steps * 1000)) // 1000))
    return sigmas if keep >= steps else torch.cat([sigmas[:keep], sigmas.new_zeros(1)])


def img2img_step_count(steps: int, strength: float) -> int:
    """Steps an img2img pass runs: the tail of a `steps`-step schedule from the noise level `strength`,
    int(strength * steps) + 1 of them (AUTOMATIC1111's rule)."""
    return int(min(strength, 0.999) * steps) + 1


def img2img_sigmas(sigmas_for_steps: Callable[[int], torch.Tensor], steps: int, strength: float,
                   fixed_steps: bool) -> torch.Tensor:
    """The tail of a schedule that starts at the noise level `strength` (img2img_step_count steps); with
    `fixed_steps` (the hires pass), the schedule is stretched to steps / strength so that `steps` steps run.
    """
    if fixed_steps:
        total, t_enc = int(steps / min(strength, 0.999)), steps - 1
    else:
        total, t_enc = steps, img2img_step_count(steps, strength) - 1
    sigmas = sigmas_for_steps(total)
    return sigmas[total - t_enc - 1:]


@torch.no_grad()
def sample_latents(model: StableDiffusionModel, settings: SamplingSettings, noise: NoiseSettings,
                   conditioning, init: InitLatent | None = None,
                   callback: StepReporter | None = None, hooks: SamplingHooks | None = None,
                   runner: ModelRunner | None = None) -> torch.Tensor:
    """Latents for one batch. `conditioning` answers `at_step(step) -> ([(cond, weight)], uncond)`
    (PromptConditioning). `callback` hears of every step and may raise SamplingInterrupted: the
    latest x is returned. `hooks` run at every denoiser call. The UNet runs through `runner` (a plain
    one when not given)."""
    spec = settings.sampler
    device = model.policy.device
    if init is not None and init.denoising_strength <= 0:
        # Nothing to denoise: the start is the result (AUTOMATIC1111's hires pass at strength 0 too).
        return init.latent.to(device)
    denoiser = DiscreteDenoiser((runner or ModelRunner(model)).unet_fn, model.schedule, model.prediction)
    def schedule(n: int) -> torch.Tensor:
        return sigmas_for(spec, settings.scheduler, n, model.schedule, model.is_sdxl).to(device)

    rng = ImageRNG((model.latent_channels, settings.height // 8, settings.width // 8), noise.seeds, noise.subseeds,
                   noise.subseed_strength, noise.seed_resize_from_h, noise.seed_resize_from_w,
                   source=noise.source, device=device, eta_noise_seed_delta=noise.eta_noise_seed_delta)
    first_noise = rng.first().to(device)
    if init is None:
        sigmas = schedule(settings.steps)
    else:
        sigmas = img2img_sigmas(schedule, settings.steps, init.denoising_strength, init.fixed_steps)
    sigmas = stop_early(sigmas, settings.stop_at_fraction)
    step_of = partial(schedule_step, sigmas[:-1].float().cpu())
    before_model, after_cfg = hooks.guidance_callbacks(len(sigmas) - 1, step_of) if hooks else (None, None)

    def make_guider(cond, uncond):
        return CFGDenoiser(denoiser, cond, uncond, settings.cfg_scale, before_model=before_model, after_cfg=after_cfg)

    guider = ScheduledGuider(make_guider, conditioning, step_of)
    if init is None:
        x = first_noise * sigmas[0]
        model_fn = guider
    else:
        start = init.latent.to(device)
        x = start + first_noise * sigmas[0] * noise.initial_noise_multiplier
        model_fn = MaskedDenoiser(guider, start, init.keep_mask.to(device)) if init.keep_mask is not None else guider
    latest = {"x": x}
    total = len(sigmas) - 1

    def on_step(info: dict) -> None:  # the sampler's k-diffusion-style dict, once per step
        latest["x"] = info["x"]
        if callback is not None:
            callback(SamplingStep(int(info["i"]), total, info["denoised"]))

    try:
        latents = run_sampler(spec, model_fn, x, sigmas, callback=on_step,
                              noise_sampler=noise_sampler_for(spec, x, sigmas, rng, noise.seeds),
                              s_churn=settings.s_churn, s_tmin=settings.s_tmin, s_tmax=settings.s_tmax,
                              s_noise=settings.s_noise, eta=settings.eta,
                              uncond_denoised=guider.latest_uncond if spec.needs_uncond else None)
    except SamplingInterrupted:
        latents = latest["x"]
    if init is not None and init.keep_mask is not None:
        keep = init.keep_mask.to(device)
        latents = init.latent.to(device) * keep + latents * (1 - keep)
    return latents
