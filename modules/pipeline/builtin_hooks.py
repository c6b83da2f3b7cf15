"""The project's own optional features, attached at the pipeline's hook points as any extension's are.

    before_process     Midjourney-style prompt parameters (`--ar 16:9 --seed 5 ...`) rewrite the request
    cfg_after_cfg      Imagen-style static / dynamic thresholding (and mimic scale) of the combined x0
    postprocess_image  face restoration with the restorer the settings choose
"""

from __future__ import annotations

from modules.pipeline.hooks import AfterCFGContext, BeforeProcessContext, HookPoint, Hooks, ImageContext
from modules.pipeline.prompts import midjourney_params
from modules.postprocess.face_restoration import not_installed_note
from modules.sampling.thresholding import Thresholding, apply_thresholding


def apply_prompt_parameters(ctx: BeforeProcessContext) -> None:
    """Read `--ar`, `--seed`, `--no`, ... at the end of the prompt into the request's fields."""
    ctx.request = midjourney_params.apply_to_request(ctx.request, ctx.model.native_size)


def threshold_guided(ctx: AfterCFGContext) -> None:
    """Keep high CFG scales from burning the image: the request's thresholding of the guided x0."""
    request = ctx.job.request
    if request.thresholding == "none":
        return
    thresholding = Thresholding(request.thresholding, percentile=request.threshold_percentile,
                                mimic_scale=request.mimic_scale)
    ctx.denoised = apply_thresholding(ctx.denoised, thresholding, ctx.uncond_denoised, ctx.cond_denoised,
                                      ctx.weights)


def restore_faces(ctx: ImageContext) -> None:
    """The image with its faces restored when the request asks for it; a restorer that is not installed
    is a warning, not a failure."""
    job = ctx.job
    if not job.request.restore_faces:
        return
    name = job.resources.face_restoration_model
    restorers = job.resources.face_restorers
    if restorers is None or name not in restorers.names():
        job.warn(f"Face restoration skipped: {not_installed_note(name)}")
        return
    outcome = restorers.restore(ctx.image, name, codeformer_weight=job.resources.code_former_weight)
    for note in outcome.notes:
        job.warn(note)
    ctx.image = outcome.image
    job.extra_params["Face restoration"] = name


def builtin_hooks() -> Hooks:
    hooks = Hooks()
    hooks.add(HookPoint.BEFORE_PROCESS, apply_prompt_parameters, name="Midjourney parameters",
              refusals=(midjourney_params.MidjourneyParamError,))
    hooks.add(HookPoint.CFG_AFTER_CFG, threshold_guided, name="Thresholding")
    hooks.add(HookPoint.POSTPROCESS_IMAGE, restore_faces, name="Face restoration")
    return hooks
