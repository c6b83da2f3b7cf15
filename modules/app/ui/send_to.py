"""Moving an image (and its parameters) between tabs: results and PNG Info to img2img, inpaint,
extras and txt2img, the way AUTOMATIC1111's "Send to" buttons do."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
from PIL import Image

from modules.io.generation_request import Img2ImgRequest
from modules.app.ui.extras import ExtrasTab
from modules.app.ui.img2img import Img2ImgTab, mask_options_update
from modules.app.ui.png_info import PngInfoTab, fields_from_infotext
from modules.app.ui.results import ResultsArea
from modules.app.ui.txt2img import Txt2ImgTab


@dataclass
class Targets:
    tabs: gr.Tabs  # the main tabs, ids txt2img / img2img / extras / png_info / settings
    txt2img: Txt2ImgTab
    img2img: Img2ImgTab
    extras: ExtrasTab


def _to_img2img(targets: Targets, image: Image.Image | None, infotext: str, mode: str) -> dict:
    inputs = targets.img2img.inputs
    update = {targets.tabs: gr.Tabs(selected="img2img"), inputs.tabs: gr.Tabs(selected=mode), inputs.mode: mode,
              targets.img2img.mask_options: mask_options_update(mode)}
    if image is not None:
        update[inputs.inpaint if mode == "inpaint" else inputs.image] = image
    update.update(targets.img2img.fields.updates(fields_from_infotext(infotext, Img2ImgRequest)))
    return update


def _to_extras(targets: Targets, image: Image.Image | None) -> dict:
    return {targets.tabs: gr.Tabs(selected="extras"), targets.extras.tabs: gr.Tabs(selected="single"),
            targets.extras.mode: "single", targets.extras.image: image}


def _to_txt2img(targets: Targets, infotext: str) -> dict:
    return {targets.tabs: gr.Tabs(selected="txt2img"),
            **targets.txt2img.fields.updates(fields_from_infotext(infotext))}


def _img2img_outputs(targets: Targets) -> list:
    inputs = targets.img2img.inputs
    return [targets.tabs, inputs.tabs, inputs.mode, inputs.image, inputs.inpaint, targets.img2img.mask_options,
            *targets.img2img.fields.components.values()]


def wire_results_send(targets: Targets, area: ResultsArea) -> None:
    def selected(results) -> tuple[Image.Image | None, str]:
        item = results.current() if results is not None else None
        return (item.image, item.infotext) if item is not None else (None, "")

    def img2img(results):
        return _to_img2img(targets, *selected(results), "img2img")

    def inpaint(results):
        return _to_img2img(targets, *selected(results), "inpaint")

    def extras(results):
        return _to_extras(targets, selected(results)[0])

    area.to_img2img.click(img2img, inputs=[area.state], outputs=_img2img_outputs(targets), show_progress="hidden")
    area.to_inpaint.click(inpaint, inputs=[area.state], outputs=_img2img_outputs(targets), show_progress="hidden")
    area.to_extras.click(extras, inputs=[area.state], outputs=_extras_outputs(targets), show_progress="hidden")


def _extras_outputs(targets: Targets) -> list:
    return [targets.tabs, targets.extras.tabs, targets.extras.mode, targets.extras.image]


def wire_png_info_send(targets: Targets, png: PngInfoTab) -> None:
    png.to_txt2img.click(lambda text: _to_txt2img(targets, text or ""), inputs=[png.parameters],
                         outputs=[targets.tabs, *targets.txt2img.fields.components.values()], show_progress="hidden")
    png.to_img2img.click(lambda image, text: _to_img2img(targets, image, text or "", "img2img"),
                         inputs=[png.image, png.parameters], outputs=_img2img_outputs(targets),
                         show_progress="hidden")
    png.to_inpaint.click(lambda image, text: _to_img2img(targets, image, text or "", "inpaint"),
                         inputs=[png.image, png.parameters], outputs=_img2img_outputs(targets),
                         show_progress="hidden")
    png.to_extras.click(lambda image: _to_extras(targets, image), inputs=[png.image],
                        outputs=_extras_outputs(targets), show_progress="hidden")
