"""Hook points of the pipeline's stages, where the project's own optional features and (through the
AUTOMATIC1111 compatibility shell) scripts and extensions attach.

    before_process -> [seeds resolved, LoRA applied] -> process
      -> each batch: before_batch -> [sample: cfg_denoiser, cfg_after_cfg at every denoiser call]
           -> [decode] -> after_batch -> postprocess_image (each image) -> [save] -> image_saved (each file)
      -> postprocess

| point             | AUTOMATIC1111                                   | context             | may change          |
| ----------------- | ----------------------------------------------- | ------------------- | ------------------- |
| before_process    | Script.before_process                           | BeforeProcessContext | ctx.request        |
| process           | Script.process                                  | ProcessContext      | job.extra_params    |
| before_batch      | Script.before_process_batch / process_batch     | BatchContext        | job.extra_params    |
| cfg_denoiser      | on_cfg_denoiser                                 | DenoiserContext     | x, sigma, conds, uncond |
| cfg_after_cfg     | on_cfg_after_cfg                                | AfterCFGContext     | ctx.denoised        |
| after_batch       | Script.postprocess_batch                        | BatchImagesContext  | ctx.images          |
| postprocess_image | Script.postprocess_image                        | ImageContext        | ctx.image           |
| postprocess       | Script.postprocess                              | PostprocessContext  | ctx.result          |
| image_saved       | on_image_saved                                  | ImageSavedContext   | nothing             |

Each hook is called with one context object and returns nothing; what it may change is a plain
attribute of that object. A `Hooks` registry is built once (the service builds it at start-up) and
handed to each job; a job runs on a snapshot, so a hook added meanwhile starts with the next job.
A hook that raises fails its job with `HookFailed`, which names the hook and the point, unless the
exception is one of the hook's declared refusals (bad input it found in the request), which reaches
the caller as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from modules.io.generation_request import Txt2ImgRequest

if TYPE_CHECKING:
    from modules.models.sd_model import StableDiffusionModel
    from modules.pipeline.job import GenerationResult, Resources


class HookPoint(str, Enum):
    BEFORE_PROCESS = "before_process"
    PROCESS = "process"
    BEFORE_BATCH = "before_batch"
    CFG_DENOISER = "cfg_denoiser"
    CFG_AFTER_CFG = "cfg_after_cfg"
    AFTER_BATCH = "after_batch"
    POSTPROCESS_IMAGE = "postprocess_image"
    POSTPROCESS = "postprocess"
    IMAGE_SAVED = "image_saved"

    def __str__(self) -> str:
        return self.value


# ---- contexts -----------------------------------------------------------------------------------

@dataclass
class BeforeProcessContext:
    """The request with styles applied and comments removed, before seeds are resolved; a hook may
    replace `request` (the Midjourney-style parameters hook rewrites it from the prompt)."""

    kind: str  # "txt2img" or "img2img"
    model: StableDiffusionModel
    resources: Resources
    request: Txt2ImgRequest


@dataclass(frozen=True)
class JobInfo:
    """What every later hook may read about its job. The request is fixed from here on (seeds resolved);
    `extra_params` (infotext fields, AUTOMATIC1111's `extra_generation_params`) and `warnings` (notes
    reported with the result) are for hooks to add to."""

    kind: str
    model: StableDiffusionModel
    request: Txt2ImgRequest
    resources: Resources
    extra_params: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Report `message` with the result, once however often it is said."""
        if message not in self.warnings:
            self.warnings.append(message)


@dataclass(frozen=True)
class ProcessContext:
    """After seeds are resolved and LoRA applied, before the first batch."""

    job: JobInfo


@dataclass(frozen=True)
class BatchContext:
    """Before a batch (`n_iter` of them) is sampled."""

    job: JobInfo
    batch_index: int
    seeds: list[int]
    subseeds: list[int]


@dataclass(kw_only=True)
class _SamplingCall:
    """Where a denoiser call falls: step (1-based) of `total_steps` in its sampling pass."""

    job: JobInfo
    total_steps: int
    hires: bool  # the hires fix's second pass
    step_of: Callable[[], int] = field(repr=False)

    @cached_property
    def step(self) -> int:
        # Read on demand: it reads sigma, and reading a tensor back from the GPU stalls the host.
        return self.step_of()


@dataclass(kw_only=True)
class DenoiserContext(_SamplingCall):
    """Each denoiser call, before the model evaluates it; a hook may replace `x`, `sigma`, `conds`
    ([(cond dict, weight)], the AND parts) and `uncond` (dicts of the UNet's keyword tensors)."""

    x: torch.Tensor
    sigma: torch.Tensor
    conds: list[tuple[dict, float]]
    uncond: dict


@dataclass(kw_only=True)
class AfterCFGContext(_SamplingCall):
    """Each denoiser call, after cond and uncond are combined, before an inpainting mask keeps the
    unmasked area; a hook may replace `denoised` (the combined x0)."""

    denoised: torch.Tensor
    x: torch.Tensor
    sigma: torch.Tensor
    uncond_denoised: torch.Tensor | None  # None when the unconditional pass was skipped (CFG scale 1)
    cond_denoised: list[torch.Tensor]
    weights: list[float]


@dataclass
class BatchImagesContext:
    """A batch decoded (and, in img2img, put back into the init image); a hook may replace `images`."""

    job: JobInfo
    batch_index: int
    seeds: list[int]
    images: list[Image.Image]


@dataclass
class ImageContext:
    """One image of a batch after decoding; a hook may replace `image` (face restoration does)."""

    job: JobInfo
    batch_index: int
    index: int  # within the batch
    seed: int
    image: Image.Image


@dataclass(frozen=True)
class PostprocessContext:
    """The whole job done: its result (images, infotexts, saved paths, warnings)."""

    job: JobInfo
    result: GenerationResult


@dataclass(frozen=True)
class ImageSavedContext:
    """An image (or the grid) written to `path`."""

    job: JobInfo
    path: Path
    image: Image.Image
    infotext: str


CONTEXT_TYPES: dict[HookPoint, type] = {
    HookPoint.BEFORE_PROCESS: BeforeProcessContext, HookPoint.PROCESS: ProcessContext,
    HookPoint.BEFORE_BATCH: BatchContext, HookPoint.CFG_DENOISER: DenoiserContext,
    HookPoint.CFG_AFTER_CFG: AfterCFGContext, HookPoint.AFTER_BATCH: BatchImagesContext,
    HookPoint.POSTPROCESS_IMAGE: ImageContext, HookPoint.POSTPROCESS: PostprocessContext,
    HookPoint.IMAGE_SAVED: ImageSavedContext,
}


# ---- registry -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hook:
    point: HookPoint
    name: str
    fn: Callable[[Any], None]
    refusals: tuple[type[Exception], ...] = ()  # what the hook raises for bad input: not a failure of the hook


class HookFailed(RuntimeError):
    """A hook raised: its job fails with this, naming the hook and the point."""

    def __init__(self, hook: Hook, error: Exception):
        super().__init__(f"Hook '{hook.name}' failed at {hook.point}: {type(error).__name__}: {error}")
        self.hook = hook


class Hooks:
    """Hooks by point, in the order they were added."""

    def __init__(self, hooks: Iterable[Hook] = ()):
        self._by_point: dict[HookPoint, tuple[Hook, ...]] = {}
        for hook in hooks:
            self._by_point[hook.point] = (*self._by_point.get(hook.point, ()), hook)

    def add(self, point: HookPoint | str, fn: Callable[[Any], None], name: str | None = None,
            refusals: Iterable[type[Exception]] = ()) -> Hook:
        point = HookPoint(point)
        hook = Hook(point, name or getattr(fn, "__qualname__", repr(fn)), fn, tuple(refusals))
        # A new tuple, not an append: a job that took a snapshot keeps the hooks it started with.
        self._by_point = {**self._by_point, point: (*self._by_point.get(point, ()), hook)}
        return hook

    def at(self, point: HookPoint) -> tuple[Hook, ...]:
        return self._by_point.get(point, ())

    def snapshot(self) -> Hooks:
        return Hooks(hook for hooks in self._by_point.values() for hook in hooks)

    def run(self, point: HookPoint, ctx: object) -> None:
        """Call the hooks of `point` in order with `ctx`."""
        if not isinstance(ctx, CONTEXT_TYPES[point]):
            raise TypeError(f"{point} hooks take a {CONTEXT_TYPES[point].__name__}, not {type(ctx).__name__}")
        for hook in self.at(point):
            try:
                hook.fn(ctx)
            except hook.refusals:
                raise
            except Exception as e:  # noqa: BLE001 - any failure of a hook fails the job, named
                raise HookFailed(hook, e) from e
