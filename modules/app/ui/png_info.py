"""The PNG Info tab: drop an image, read the parameters it carries, send them to txt2img/img2img."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from modules.io.generation_request import Txt2ImgRequest
from modules.io.image_saving import read_parameters
from modules.io.infotext import infotext_entries, request_fields_from_infotext
from modules.app.ui.components import CheckedImage


@dataclass
class PngInfoTab:
    image: gr.Image
    info: gr.HTML
    parameters: gr.Textbox  # the raw infotext the send buttons use
    to_txt2img: gr.Button
    to_img2img: gr.Button
    to_inpaint: gr.Button
    to_extras: gr.Button


def build_png_info() -> PngInfoTab:
    with gr.Row(equal_height=False):
        with gr.Column(min_width=300):
            image = CheckedImage(label="Source", field="image", image_mode=None, elem_id="pnginfo_image",
                                 height=360, sources=["upload", "clipboard"])
        with gr.Column(min_width=300):
            info = gr.HTML(elem_id="pnginfo_html", js_on_load=None)
            parameters = gr.Textbox(label="Parameters", lines=6, elem_id="pnginfo_generation_info",
                                    interactive=False, buttons=["copy"])
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img", size="sm")
                to_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img", size="sm")
                to_inpaint = gr.Button("Send to inpaint", elem_id="pnginfo_send_to_inpaint", size="sm")
                to_extras = gr.Button("Send to extras", elem_id="pnginfo_send_to_extras", size="sm")
    tab = PngInfoTab(image, info, parameters, to_txt2img, to_img2img, to_inpaint, to_extras)
    # What the previous image said goes first: a file that is refused must not leave it on show.
    image.change(lambda: ("", ""), outputs=[info, parameters], show_progress="hidden", queue=False).then(
        read_image, inputs=[image], outputs=[info, parameters], show_progress="hidden")
    return tab


def text_chunks_html(image: Image.Image) -> str:
    """Every text chunk of the image, escaped: a file from anywhere must not inject markup."""
    rows = [f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>"
            for k, v in image.info.items() if isinstance(v, str) and k != "parameters"]
    parameters = read_parameters(image)
    if parameters:
        # What the file says, not the defaults a paste would fill in ("FP8 weight: Disable").
        rows = [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                for k, v in infotext_entries(parameters).items()] + rows
    if not rows:
        return "<p class='pnginfo-empty'>This image carries no generation parameters.</p>"
    return f"<dl class='pnginfo'>{''.join(rows)}</dl>"


def read_image(image: Image.Image | None) -> tuple[str, str]:
    if image is None:
        return "", ""
    return text_chunks_html(image), read_parameters(image) or ""


def fields_from_infotext(text: str, request_type: type[Txt2ImgRequest] = Txt2ImgRequest) -> dict[str, object]:
    """Request fields the infotext sets, validated and normalised (`DPM++ 2M Karras` -> sampler + schedule)."""
    named = request_fields_from_infotext(text, set(request_type.model_fields))
    if not named:
        return {}
    try:
        request = Txt2ImgRequest.model_validate(named)
    except ValidationError:
        return {name: value for name, value in named.items() if name in ("prompt", "negative_prompt")}
    known = named.keys() | ({"scheduler"} if "sampler_name" in named else set())
    return {name: getattr(request, name) for name in known}
