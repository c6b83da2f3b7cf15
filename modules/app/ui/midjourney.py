"""Midjourney-style mode: one prompt gives a 2x2 grid of four variants, then
U1-U4 upscale one of them (with the chosen upscaler) and V1-V4 make four variations of one
(the same seed with a variation seed around it). Midjourney's `--ar`, `--seed`, `--no`, ...
parameters in the prompt work as in any txt2img request.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.io.extras_request import ExtrasRequest, ExtrasSource
from modules.io.generation_request import Txt2ImgRequest
from modules.app.ui.common import UiContext, refusal
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
    return [*ctx.catalog.upscaler_model_names(), "Lanczos", "Nearest"]


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


def upscale_request(upscaler: str) -> ExtrasRequest:
    """U1-U4: the image at UPSCALE_FACTOR times its size, as the Extras tab would make it."""
    return ExtrasRequest(upscaler_1=upscaler, upscaling_resize=UPSCALE_FACTOR)


def upscaled_item(item: ResultItem, outputs) -> ResultItem:
    """The grid image's upscale (the job's one ExtrasOutput), with the grid image's seed."""
    [output] = outputs
    return ResultItem(output.image, output.infotext, output.path, item.seed)


def wire_midjourney(ctx: UiContext, active: ActiveJobs, tab: str, mj: MidjourneyControls, progress: ProgressArea,
                    results: ResultsArea) -> None:
    outputs = [progress.bar, results.gallery, results.info, results.state, results.download,
               results.notes, mj.row, mj.grid]

    def upscale_handler(index: int):
        def handler(grid: Results | None, upscaler: str, request: gr.Request):
            if grid is None or index >= len(grid.items):
                raise refusal("Make a Midjourney grid first.")
            chosen = grid.items[index]

            def submit():  # an unknown upscaler is refused here, by the service, before anything is queued
                source = ExtrasSource(chosen.image, parameters=chosen.infotext, seed=chosen.seed)
                return ctx.service.submit_extras(upscale_request(upscaler), [source], save=True)

            def finish(outputs):
                item = upscaled_item(chosen, outputs)
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
                seed = grid.items[index].seed
                return ctx.service.submit_variations(grid_request(grid.request), -1 if seed is None else seed,
                                                     VARIATION_STRENGTH)

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


