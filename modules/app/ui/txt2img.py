"""The txt2img tab: prompt row, parameters on the left, progress and results on the right."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.io.generation_request import Txt2ImgRequest
from modules.app.ui import params
from modules.app.ui.common import Fields, UiContext
from modules.app.ui.generation import notes_of, results_of
from modules.app.ui.midjourney import MidjourneyControls, build_midjourney_controls, grid_request, wire_midjourney
from modules.app.ui.progress import (ActiveJobs, ProgressArea, build_progress_bar, cleared_on, stream_job,
                                     wire_controls)
from modules.app.ui.prompt_area import PromptArea, build_prompt_area
from modules.app.ui.results import ResultsArea, build_results, show, wire_results

TAB = "txt2img"


@dataclass
class Txt2ImgTab:
    prompt: PromptArea
    fields: Fields  # every request field shown on the tab, prompt included
    progress: ProgressArea
    results: ResultsArea
    midjourney: MidjourneyControls
    reuse_seed: gr.Button


def build_txt2img(ctx: UiContext, active: ActiveJobs) -> Txt2ImgTab:
    prompt = build_prompt_area(ctx, TAB)
    fields = Fields()
    with gr.Row(elem_id=f"{TAB}_main", equal_height=False):
        with gr.Column(scale=5, min_width=300, elem_id=f"{TAB}_settings"):
            params.sampler_controls(fields, TAB)
            params.size_controls(fields, TAB, ctx.catalog.default_size())
            params.batch_controls(fields, TAB)
            _, reuse = params.seed_controls(fields, TAB)
            params.hires_controls(fields, TAB, ctx)
            with gr.Row():
                fields.add("restore_faces", gr.Checkbox(label="Restore faces", value=False,
                                                        elem_id=f"{TAB}_restore_faces"))
                midjourney_mode = gr.Checkbox(label="Midjourney grid (2×2, U/V buttons)", value=False,
                                              elem_id=f"{TAB}_midjourney")
        with gr.Column(scale=6, min_width=300, elem_id=f"{TAB}_results"):
            bar = build_progress_bar(TAB)
            midjourney = build_midjourney_controls(ctx, TAB, midjourney_mode)
            results = build_results(TAB)
            progress = ProgressArea(bar, results.gallery)
    tab = Txt2ImgTab(prompt, prompt.fields.merge(fields), progress, results, midjourney, reuse)
    wire_txt2img(ctx, active, tab)
    return tab


def request_from(tab: Txt2ImgTab, values: dict) -> Txt2ImgRequest:
    request = Txt2ImgRequest(**params.request_fields(tab.fields.values(values)))
    return grid_request(request) if values.get(tab.midjourney.mode) else request


def wire_txt2img(ctx: UiContext, active: ActiveJobs, tab: Txt2ImgTab) -> None:
    mj = tab.midjourney
    outputs = [tab.progress.bar, tab.results.gallery, tab.results.info, tab.results.state,
               tab.results.download, tab.results.notes, mj.row, mj.grid]

    def run(values: dict, request: gr.Request):
        grid_mode = bool(values.get(mj.mode))

        def submit():  # a bad value raises here, before anything is queued, and becomes a message
            return ctx.service.submit(request_from(tab, values))

        def finish(generated):
            results = results_of(generated)
            update = show(tab.results, results, notes_of(generated))
            update[mj.row] = gr.Row(visible=grid_mode)
            update[mj.grid] = results if grid_mode else None
            return update, notes_of(generated)

        yield from stream_job(ctx, active, TAB, request.session_hash or "", tab.progress, submit, finish)

    inputs = tab.fields.inputs | {mj.mode}
    for trigger in (tab.prompt.generate.click, tab.prompt.fields["prompt"].submit):
        # The job queue orders the work; Gradio must not hold one user's click behind another's.
        cleared_on(trigger, tab.progress).then(run, inputs=inputs, outputs=outputs, show_progress="hidden",
                                               concurrency_limit=None)
    wire_controls(active, TAB, tab.prompt.interrupt, tab.prompt.skip)
    wire_results(ctx, tab.results)
    wire_midjourney(ctx, active, TAB, mj, tab.progress, tab.results)

    def reuse_seed(results):
        item = results.current() if results else None
        return item.seed if item is not None and item.seed is not None else -1

    tab.reuse_seed.click(reuse_seed, inputs=[tab.results.state], outputs=[tab.fields["seed"]],
                         show_progress="hidden")
