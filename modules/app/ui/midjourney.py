"""Midjourney-style mode: one prompt gives a 2x2 grid of four variants, then
U1-U4 upscale one of them (with the chosen upscaler) and V1-V4 make four variations of one
(the same seed with a variation seed around it). Midjourney's `--ar`, `--seed`, `--no`, ...
parameters in the prompt work as in any txt2img request.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.io import image_saving
from modules.postprocess import upscalers
from modules.postprocess.extras import ExtrasSettings, run_extras
from modules.io.generation_request import Txt2ImgRequest
from modules.io.image_saving import ImageFacts, SaveOptions
from modules.service.job_queue import Job
from modules.pipeline.prompt_preparation import prepare_request
from modules.sampling.rng import resolve_seed
from modules.app.ui.common import UiContext, default_size, refusal
from modules.app.ui.generation import notes_of, results_of
from modules.app.ui.progress import ActiveJobs, ProgressArea, cleared_on, stream_job
from modules.app.ui.results import ResultItem, Results, ResultsArea, show

GRID_SIZE = 4
UPSCALE_FACTOR = 2.0
VARIATION_STRENGTH = 0.3  # enough to see four different images, little enough to keep the composition


@dataclass
class MidjourneyControls:
    mode: gr.Checkbox
    row: gr.Row  # shown once a grid is on screen
    upscaler: gr.Dropdown
    upscale: list[gr.Button]  # U1-U4
    vary: list[gr.Button]  # V1-V4
    grid: gr.State  # Results of the last grid, kept while its upscales are shown


def upscaler_choices(ctx: UiContext) -> list[str]:
    return [*ctx.manager.upscalers.names(), "Lanczos", "Nearest"]


def build_midjourney_controls(ctx: UiContext, tab: str, mode: gr.Checkbox) -> MidjourneyControls:
    with gr.Row(visible=False, elem_id=f"{tab}_mj_actions", elem_classes=["mj-actions"]) as row:
        upscale = [gr.Button(f"U{i + 1}", elem_id=f"{tab}_mj_u{i + 1}", size="sm", min_width=48)
                   for i in range(GRID_SIZE)]
        vary = [gr.Button(f"V{i + 1}", elem_id=f"{tab}_mj_v{i + 1}", size="sm", min_width=48)
                for i in range(GRID_SIZE)]
        choices = upscaler_choices(ctx)
        upscaler = gr.Dropdown(choices=choices, value=choices[0], label="Upscaler", show_label=False,
                               elem_id=f"{tab}_mj_upscaler", min_width=140, container=False)
    return MidjourneyControls(mode, row, upscaler, upscale, vary, gr.State(None))


def grid_request(request: Txt2ImgRequest) -> Txt2ImgRequest:
    """Four images of one prompt in one batch: seeds seed..seed+3, shown as a 2x2 grid."""
    return request.model_copy(update={"batch_size": GRID_SIZE, "n_iter": 1})


def variation_request(ctx: UiContext, grid: Results, index: int) -> Txt2ImgRequest:
    """Four variations of grid image `index`: its seed, a fresh variation seed, a fixed strength.

    The prompt's Midjourney parameters are applied first and taken out, so a `--seed` in the
    prompt cannot override the seed of the chosen image."""
    base = grid.request
    model = ctx.manager.loaded
    native = model.native_size if model is not None else default_size(ctx.manager)
    prepared = prepare_request(base, native, ctx.manager.paths.styles_file)
    seed = grid.items[index].seed
    return grid_request(prepared.model_copy(update={
        "styles": [], "seed": seed if seed is not None else -1, "subseed": resolve_seed(-1),
        "subseed_strength": VARIATION_STRENGTH}))


def _upscale_work(ctx: UiContext, item: ResultItem, upscaler: str):
    settings = ExtrasSettings(upscaler_1=upscaler, upscaling_resize=UPSCALE_FACTOR)

    def work(job: Job) -> ResultItem:
        result = run_extras(item.image, settings, ctx.manager.upscalers, ctx.manager.face_restorers,
                            job.check_interrupt)
        infotext = f"{item.infotext}, {result.info}" if item.infotext and result.info else item.infotext
        path = image_saving.save_image(result.image, SaveOptions(outputs_dir=ctx.service.outputs_dir), "extras",
                                       ImageFacts(seed=item.seed or 0), infotext)
        return ResultItem(result.image, infotext, path, item.seed)

    return work


def wire_midjourney(ctx: UiContext, active: ActiveJobs, tab: str, mj: MidjourneyControls, progress: ProgressArea,
                    results: ResultsArea) -> None:
    outputs = [progress.bar, results.gallery, results.info, results.state, results.download,
               results.notes, mj.row, mj.grid]

    def upscale_handler(index: int):
        def handler(grid: Results | None, upscaler: str, request: gr.Request):
            if grid is None or index >= len(grid.items):
                raise refusal("Make a Midjourney grid first.")
            if upscaler not in upscaler_choices(ctx) and upscaler not in upscalers.PIXEL_RESAMPLERS:
                raise refusal(f"unknown upscaler {upscaler!r}")

            def submit():
                return ctx.service.queue.submit("extras", _upscale_work(ctx, grid.items[index], upscaler))

            def finish(item: ResultItem):
                # Shown large where the grid was, not as a fifth tile to scroll to; the grid stays below.
                shown = Results(items=[item, *grid.items], selected=0, request=grid.request, folder=grid.folder)
                return show(results, shown, open_selected=True), f"U{index + 1}: {item.image.width}x{item.image.height}"

            yield from stream_job(ctx, active, tab, request.session_hash or "", progress, submit, finish)

        return handler

    def vary_handler(index: int):
        def handler(grid: Results | None, request: gr.Request):
            if grid is None or grid.request is None or index >= len(grid.items):
                raise refusal("Make a Midjourney grid first.")

            def submit():
                return ctx.service.submit(variation_request(ctx, grid, index))

            def finish(generated):
                shown = results_of(generated)
                update = show(results, shown, notes_of(generated))
                update[mj.grid] = shown
                update[mj.row] = gr.Row(visible=True)
                return update, f"V{index + 1}"

            yield from stream_job(ctx, active, tab, request.session_hash or "", progress, submit, finish)

        return handler

    for index, button in enumerate(mj.upscale):
        cleared_on(button.click, progress).then(upscale_handler(index), inputs=[mj.grid, mj.upscaler],
                                                outputs=outputs, show_progress="hidden", concurrency_limit=None)
    for index, button in enumerate(mj.vary):
        cleared_on(button.click, progress).then(vary_handler(index), inputs=[mj.grid], outputs=outputs,
                                                show_progress="hidden", concurrency_limit=None)


