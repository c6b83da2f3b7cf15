"""The Extras tab: upscale (one or two upscalers) and restore faces, for one image or a batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from modules.io.extras_request import ExtrasRequest, ExtrasSource
from modules.app.ui.common import USER_ERRORS, UiContext, refusal, user_error
from modules.app.ui.components import CheckedImage, FieldSlider
from modules.app.ui.field_bounds import field_limits
from modules.app.ui.uploads import decode_upload
from modules.app.ui.progress import (ActiveJobs, ProgressArea, build_progress_bar, cleared_on, stream_job,
                                     wire_controls)
from modules.app.ui.results import ResultItem, Results, ResultsArea, build_results, show, wire_results

TAB = "extras"
MAX_BATCH = 64


@dataclass
class ExtrasTab:
    tabs: gr.Tabs
    image: gr.Image
    batch: gr.File
    mode: gr.State
    settings: dict[str, gr.components.Component]  # ExtrasRequest field -> control
    run: gr.Button
    interrupt: gr.Button
    progress: ProgressArea
    results: ResultsArea


def _slider(name: str, label: str, step: float) -> FieldSlider:
    """Bounds and default of the extras request field: the page and the API refuse alike."""
    low, high = field_limits(ExtrasRequest, name)
    return FieldSlider(minimum=low, maximum=high, value=ExtrasRequest.model_fields[name].default, step=step,
                       label=label, elem_id=f"extras_{name}")


def _settings_controls(ctx: UiContext) -> dict[str, gr.components.Component]:
    names = ctx.catalog.extras_upscalers()
    first = next(iter(ctx.catalog.upscaler_model_names()), "Lanczos")
    controls: dict[str, gr.components.Component] = {}
    with gr.Accordion("Upscale", open=True, elem_id="extras_upscale"):
        controls["resize_mode"] = gr.Radio(["Scale by", "Scale to"], value="Scale by", type="index",
                                           label="Resize", elem_id="extras_resize_mode")
        with gr.Row():
            controls["upscaling_resize"] = _slider("upscaling_resize", "Resize", 0.05)
            controls["upscaling_resize_w"] = gr.Number(512, precision=0, label="Width",
                                                       elem_id="extras_upscaling_resize_w")
            controls["upscaling_resize_h"] = gr.Number(512, precision=0, label="Height",
                                                       elem_id="extras_upscaling_resize_h")
            controls["upscaling_crop"] = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
        with gr.Row():
            controls["upscaler_1"] = gr.Dropdown(names, value=first, label="Upscaler 1", elem_id="extras_upscaler_1")
            controls["upscaler_2"] = gr.Dropdown(names, value="None", label="Upscaler 2",
                                                 elem_id="extras_upscaler_2")
            controls["extras_upscaler_2_visibility"] = _slider("extras_upscaler_2_visibility",
                                                               "Upscaler 2 visibility", 0.001)
    with gr.Accordion("Restore faces", open=False, elem_id="extras_faces"):
        with gr.Row():
            controls["gfpgan_visibility"] = _slider("gfpgan_visibility", "GFPGAN visibility", 0.001)
            controls["codeformer_visibility"] = _slider("codeformer_visibility", "CodeFormer visibility", 0.001)
            controls["codeformer_weight"] = _slider("codeformer_weight",
                                                    "CodeFormer weight (0 = maximum effect, 1 = minimum)", 0.001)
        controls["upscale_first"] = gr.Checkbox(False, label="Upscale before restoring faces",
                                                elem_id="extras_upscale_first")
    return controls


def build_extras(ctx: UiContext, active: ActiveJobs) -> ExtrasTab:
    mode = gr.State("single")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=300):
            with gr.Tabs(elem_id="mode_extras", overflow_behavior="wrap") as tabs:
                with gr.Tab("Single Image", id="single", elem_id="extras_single_tab") as single_tab:
                    image = CheckedImage(label="Source", field="image", elem_id="extras_image", height=320,
                                         sources=["upload", "clipboard"])
                with gr.Tab("Batch Process", id="batch", elem_id="extras_batch_process_tab") as batch_tab:
                    batch = gr.File(label="Batch Process", file_count="multiple", file_types=["image"],
                                    elem_id="extras_image_batch")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="extras_generate", scale=3)
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="extras_interrupt", scale=1)
            settings = _settings_controls(ctx)
        with gr.Column(scale=6, min_width=300, elem_id=f"{TAB}_results"):
            bar = build_progress_bar(TAB)
            results = build_results(TAB)
            progress = ProgressArea(bar, results.gallery)
    single_tab.select(lambda: "single", outputs=[mode], show_progress="hidden")
    batch_tab.select(lambda: "batch", outputs=[mode], show_progress="hidden")
    tab = ExtrasTab(tabs, image, batch, mode, settings, run, interrupt, progress, results)
    wire_extras(ctx, active, tab)
    return tab


def extras_request(tab: ExtrasTab, values: dict) -> ExtrasRequest:
    """The request from the controls (ValidationError names a field, in the API's words)."""
    return ExtrasRequest.model_validate({name: values[control] for name, control in tab.settings.items()})


def source_images(tab: ExtrasTab, values: dict) -> list[ExtrasSource]:
    """The single image or each batch file, with the parameters it carries."""
    if values[tab.mode] == "single":
        if values[tab.image] is None:
            raise refusal("Put an image in the Source box first.")
        return [ExtrasSource.of(values[tab.image])]
    files = values[tab.batch] or []
    if not files:
        raise refusal("Add images to Batch Process first.")
    if len(files) > MAX_BATCH:
        raise refusal(f"At most {MAX_BATCH} images per batch.")
    fields = [f"imageList.{index}.data" for index in range(len(files))]
    return [ExtrasSource.of(decode_upload(Path(file if isinstance(file, str) else file.name), field), field)
            for file, field in zip(files, fields)]


def result_items(outputs) -> list[ResultItem]:
    """The finished job's images (ExtrasOutput), as saved, with what could not be done below their text."""
    return [ResultItem(o.image, "\n".join([o.infotext, *o.notes]).strip(), o.path) for o in outputs]


def wire_extras(ctx: UiContext, active: ActiveJobs, tab: ExtrasTab) -> None:
    outputs = [tab.progress.bar, tab.results.gallery, tab.results.info, tab.results.state,
               tab.results.download, tab.results.notes]

    def run(values: dict, request: gr.Request):
        try:
            extras = extras_request(tab, values)
        except USER_ERRORS as e:
            raise user_error(e) from None
        sources = source_images(tab, values)

        def finish(outputs):
            items = result_items(outputs)
            folder = items[0].path.parent if items and items[0].path else None
            return show(tab.results, Results(items=items, folder=folder)), ""

        yield from stream_job(ctx, active, TAB, request.session_hash or "", tab.progress,
                              lambda: ctx.service.submit_extras(extras, sources, save=True), finish)

    inputs = {tab.mode, tab.image, tab.batch, *tab.settings.values()}
    cleared_on(tab.run.click, tab.progress).then(run, inputs=inputs, outputs=outputs, show_progress="hidden",
                                                 concurrency_limit=None)
    wire_controls(active, TAB, tab.interrupt)
    wire_results(ctx, tab.results)
