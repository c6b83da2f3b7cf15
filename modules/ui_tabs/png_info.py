"""The PNG Info tab: drop an image, read the parameters it carries, send them to txt2img/img2img."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from modules.generation_request import Txt2ImgRequest
from modules.image_saving import read_parameters
from modules.infotext import parse_generation_parameters, request_fields_from_infotext
from modules.ui_tabs.components import CheckedImage


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
        rows = [f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>"
                for k, v in _sizes_joined(parameters_held(parameters)).items()] + rows
    if not rows:
        return "<p class='pnginfo-empty'>This image carries no generation parameters.</p>"
    return f"<dl class='pnginfo'>{''.join(rows)}</dl>"


def parameters_held(text: str) -> dict[str, object]:
    """The parsed infotext without the defaults the parser adds for keys the text lacks (AUTOMATIC1111
    fills them in for pasting; listed here they would claim the file says "FP8 weight: Disable")."""
    parsed, defaults = parse_generation_parameters(text), parse_generation_parameters("")
    settings_line = text.strip().rsplit("\n", 1)[-1]

    def held(key: str, value: object) -> bool:
        if key not in defaults or value != defaults[key]:
            return True  # in the text, or worked out from it (`DPM++ 2M Karras` -> Schedule type: Karras)
        name = key[:-2] if key.endswith(("-1", "-2")) else key  # `Size: 128x96` is parsed as Size-1, Size-2
        return key not in ("Prompt", "Negative prompt") and f"{name}: " in settings_line

    return {key: value for key, value in parsed.items() if held(key, value)}


def _sizes_joined(parsed: dict[str, object]) -> dict[str, object]:
    """`Size-1`, `Size-2` shown as the file writes them: `Size: 128x96`."""
    shown: dict[str, object] = {}
    for key, value in parsed.items():
        base = key[:-2]
        if key.endswith("-1") and f"{base}-2" in parsed:
            shown[base] = f"{value}x{parsed[f'{base}-2']}"
        elif not (key.endswith("-2") and f"{base}-1" in parsed):
            shown[key] = value
    return shown


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
