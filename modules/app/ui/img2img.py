"""The img2img tab with its sub-tabs: img2img, Sketch, Inpaint (a mask brushed on the image) and
Inpaint upload (image and mask files); resize mode, denoising strength and the mask options."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np
from PIL import Image

from modules.io.generation_request import Img2ImgRequest
from modules.app.ui import params
from modules.app.ui.common import USER_ERRORS, Fields, UiContext, refusal, user_error
from modules.app.ui.components import CheckedImage
from modules.app.ui.generation import notes_of, results_of
from modules.app.ui.progress import (ActiveJobs, ProgressArea, build_progress_bar, cleared_on, stream_job,
                                     wire_controls)
from modules.app.ui.prompt_area import PromptArea, build_prompt_area
from modules.app.ui.results import ResultsArea, build_results, show, wire_results

TAB = "img2img"
MODES = ("img2img", "sketch", "inpaint", "inpaint_upload")
INPAINT_MODES = ("inpaint", "inpaint_upload")  # the modes with a mask, and so with mask options
RESIZE_MODES = ["Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)"]
MASK_MODES = ["Inpaint masked", "Inpaint not masked"]
MASKED_CONTENT = ["fill", "original", "latent noise", "latent nothing"]
INPAINT_AREAS = ["Whole picture", "Only masked"]
# A brush that shows where it painted but keeps the image visible under the stroke.
MASK_BRUSH = gr.Brush(default_size=24, colors=["#ffffff"], default_color="#ffffff", color_mode="fixed")


@dataclass
class ImageInputs:
    mode: gr.State
    tabs: gr.Tabs
    image: gr.Image
    sketch: gr.ImageEditor
    inpaint: gr.ImageEditor
    upload_image: gr.Image
    upload_mask: gr.Image
    mode_tabs: list[gr.Tab]  # in the order of MODES


@dataclass
class Img2ImgTab:
    prompt: PromptArea
    fields: Fields
    inputs: ImageInputs
    mask_options: gr.Accordion  # shown in the inpaint modes only
    progress: ProgressArea
    results: ResultsArea


def build_image_inputs() -> ImageInputs:
    mode = gr.State("img2img")
    with gr.Tabs(elem_id="mode_img2img", selected="img2img", overflow_behavior="wrap") as tabs:
        with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as tab_img:
            image = CheckedImage(label="Image for img2img", field="init_images.0", image_mode="RGBA",
                                 elem_id="img2img_image", sources=["upload", "clipboard"], height=360)
        with gr.Tab("Sketch", id="sketch", elem_id="img2img_img2img_sketch_tab") as tab_sketch:
            sketch = gr.ImageEditor(label="Sketch", type="pil", elem_id="img2img_sketch", height=360,
                                    sources=["upload", "clipboard"], layers=False,
                                    brush=gr.Brush(default_size=12, color_mode="defaults"))
        with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as tab_inpaint:
            inpaint = gr.ImageEditor(label="Image for inpainting with mask", type="pil", elem_id="img2maskimg",
                                     height=360, sources=["upload", "clipboard"], layers=False, brush=MASK_BRUSH,
                                     transforms=())
        with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as tab_upload:
            with gr.Row():
                upload_image = CheckedImage(label="Image", field="init_images.0", image_mode="RGBA",
                                            elem_id="img_inpaint_base", sources=["upload", "clipboard"], height=300)
                upload_mask = CheckedImage(label="Mask", field="mask", image_mode="L", elem_id="img_inpaint_mask",
                                           sources=["upload", "clipboard"], height=300)
    return ImageInputs(mode, tabs, image, sketch, inpaint, upload_image, upload_mask,
                       [tab_img, tab_sketch, tab_inpaint, tab_upload])


def mask_options_update(mode: str) -> gr.Accordion:
    return gr.Accordion(visible=mode in INPAINT_MODES)


def mask_options(fields: Fields) -> gr.Accordion:
    with gr.Accordion("Inpaint options", open=True, visible=False, elem_id=f"{TAB}_inpaint_controls") as options:
        with gr.Row():
            params.request_slider(fields, TAB, "mask_blur", "Mask blur", 1, model=Img2ImgRequest)
            params.request_slider(fields, TAB, "inpaint_full_res_padding", "Only masked padding, pixels", 4,
                                  model=Img2ImgRequest)
        fields.add("inpainting_mask_invert", gr.Radio(MASK_MODES, value=MASK_MODES[0], type="index",
                                                      label="Mask mode", elem_id=f"{TAB}_mask_mode"))
        fields.add("inpainting_fill", gr.Radio(MASKED_CONTENT, value="original", type="index",
                                               label="Masked content", elem_id=f"{TAB}_inpainting_fill"))
        fields.add("inpaint_full_res", gr.Radio(INPAINT_AREAS, value=INPAINT_AREAS[0], type="index",
                                                label="Inpaint area", elem_id=f"{TAB}_inpaint_full_res"))
    return options


def build_img2img(ctx: UiContext, active: ActiveJobs) -> Img2ImgTab:
    prompt = build_prompt_area(ctx, TAB)
    fields = Fields()
    with gr.Row(elem_id=f"{TAB}_main", equal_height=False):
        with gr.Column(scale=5, min_width=300, elem_id=f"{TAB}_settings"):
            inputs = build_image_inputs()
            fields.add("resize_mode", gr.Radio(RESIZE_MODES, value=RESIZE_MODES[0], type="index", label="Resize mode",
                                               elem_id="resize_mode"))
            params.sampler_controls(fields, TAB)
            params.size_controls(fields, TAB, ctx.catalog.default_size())
            params.batch_controls(fields, TAB)
            params.request_slider(fields, TAB, "denoising_strength", "Denoising strength", 0.01, model=Img2ImgRequest)
            params.seed_controls(fields, TAB)
            options = mask_options(fields)
        with gr.Column(scale=6, min_width=300, elem_id=f"{TAB}_results"):
            bar = build_progress_bar(TAB)
            results = build_results(TAB)
            progress = ProgressArea(bar, results.gallery)
    tab = Img2ImgTab(prompt, prompt.fields.merge(fields), inputs, options, progress, results)
    wire_img2img(ctx, active, tab)
    return tab


# ---- from the editors to an init image and a mask ------------------------------------------------

def _rgb(image: Image.Image) -> Image.Image:
    """Transparent parts become white, as a photo printed on paper would."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGB", image.size, "white")
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def brushed_mask(editor: dict) -> Image.Image | None:
    """White where any layer was painted (alpha > 0), black elsewhere; None when nothing was painted."""
    background = editor.get("background")
    layers = [layer for layer in editor.get("layers") or [] if layer is not None]
    if background is None or not layers:
        return None
    alpha = np.zeros((background.height, background.width), dtype=bool)
    for layer in layers:
        layer = layer.convert("RGBA").resize(background.size)
        alpha |= np.asarray(layer.getchannel("A")) > 0
    if not alpha.any():
        return None
    return Image.fromarray((alpha * 255).astype(np.uint8), "L")


def init_and_mask(mode: str, inputs: dict) -> tuple[Image.Image, Image.Image | None]:
    """The init image and mask of the chosen sub-tab; raises gr.Error naming what is missing."""
    if mode == "img2img":
        if inputs["image"] is None:
            raise refusal("Put an image in the img2img box first.")
        return _rgb(inputs["image"]), None
    if mode == "sketch":
        editor = inputs["sketch"] or {}
        if editor.get("composite") is None:
            raise refusal("Put an image in the Sketch box first.")
        return _rgb(editor["composite"]), None
    if mode == "inpaint":
        editor = inputs["inpaint"] or {}
        if editor.get("background") is None:
            raise refusal("Put an image in the Inpaint box first.")
        mask = brushed_mask(editor)
        if mask is None:
            raise refusal("Paint the area to change on the image first.")
        return _rgb(editor["background"]), mask
    if inputs["upload_image"] is None or inputs["upload_mask"] is None:
        raise refusal("Inpaint upload needs both an image and a mask.")
    return _rgb(inputs["upload_image"]), inputs["upload_mask"].convert("L")


def request_from(tab: Img2ImgTab, values: dict) -> Img2ImgRequest:
    images = tab.inputs
    mode = values[images.mode]
    init, mask = init_and_mask(mode, {"image": values[images.image], "sketch": values[images.sketch],
                                      "inpaint": values[images.inpaint], "upload_image": values[images.upload_image],
                                      "upload_mask": values[images.upload_mask]})
    fields = params.request_fields(tab.fields.values(values))
    fields["inpaint_full_res"] = bool(fields.get("inpaint_full_res"))
    return Img2ImgRequest(**fields, init_images=[init], mask=mask)


def wire_img2img(ctx: UiContext, active: ActiveJobs, tab: Img2ImgTab) -> None:
    images = tab.inputs
    for name, item in zip(MODES, images.mode_tabs):
        item.select(lambda name=name: (name, mask_options_update(name)), outputs=[images.mode, tab.mask_options],
                    show_progress="hidden")
    outputs = [tab.progress.bar, tab.results.gallery, tab.results.info, tab.results.state,
               tab.results.download, tab.results.notes]

    def run(values: dict, request: gr.Request):
        try:
            built = request_from(tab, values)  # a missing image is reported before anything is queued
        except USER_ERRORS as e:
            raise user_error(e) from None

        def finish(generated):
            return show(tab.results, results_of(generated), notes_of(generated)), notes_of(generated)

        yield from stream_job(ctx, active, TAB, request.session_hash or "", tab.progress,
                              lambda: ctx.service.submit(built), finish)

    inputs = tab.fields.inputs | {images.mode, images.image, images.sketch, images.inpaint, images.upload_image,
                                  images.upload_mask}
    for trigger in (tab.prompt.generate.click, tab.prompt.fields["prompt"].submit):
        cleared_on(trigger, tab.progress).then(run, inputs=inputs, outputs=outputs, show_progress="hidden",
                                               concurrency_limit=None)
    wire_controls(active, TAB, tab.prompt.interrupt, tab.prompt.skip)
    wire_results(ctx, tab.results)
