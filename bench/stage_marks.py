"""The stages of one txt2img image (prompts, sampling, VAE decode, PNG + save), marked from the pipeline's
own hook points, so the benchmarks time or profile them without replacing any of the pipeline's functions.

    process -> encode prompts -> before_batch -> sample -> last denoiser call -> VAE decode -> after_batch
      -> PNG + save -> postprocess

The end of sampling is the last denoiser call of the pass, counted (not read from sigma, which would stall
the host): right for samplers that call the denoiser once per step, as Euler does, and for one batch.
"""

from __future__ import annotations

from collections.abc import Callable

from modules.pipeline.builtin_hooks import builtin_hooks
from modules.pipeline.hooks import HookPoint, Hooks

STAGES = ("encode prompts", "sample", "VAE decode", "PNG + save")


class StageMarks:
    """The application's own hooks plus ones that call `begin(stage)` and `end(stage)` around each stage."""

    def __init__(self, begin: Callable[[str], None], end: Callable[[str], None]):
        self.begin, self.end = begin, end
        self._calls = 0

    def hooks(self) -> Hooks:
        hooks = builtin_hooks()
        hooks.add(HookPoint.PROCESS, lambda ctx: self._switch(None, "encode prompts"), name="bench: prompts")
        hooks.add(HookPoint.BEFORE_BATCH, lambda ctx: self._switch("encode prompts", "sample"), name="bench: sample")
        hooks.add(HookPoint.CFG_AFTER_CFG, self._denoiser_call, name="bench: decode")
        hooks.add(HookPoint.AFTER_BATCH, lambda ctx: self._switch("VAE decode", "PNG + save"), name="bench: save")
        hooks.add(HookPoint.POSTPROCESS, lambda ctx: self._switch("PNG + save", None), name="bench: done")
        return hooks

    def _denoiser_call(self, ctx) -> None:
        self._calls += 1
        if self._calls == ctx.total_steps:
            self._calls = 0
            self._switch("sample", "VAE decode")

    def _switch(self, ended: str | None, begun: str | None) -> None:
        if ended is not None:
            self.end(ended)
        if begun is not None:
            self.begin(begun)
