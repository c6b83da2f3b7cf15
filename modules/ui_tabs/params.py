"""The generation parameters shared by txt2img and img2img: sampler, steps, size, batch, CFG, seed.

Each control is bound to the Txt2ImgRequest field of the same meaning; element ids follow
AUTOMATIC1111's (`txt2img_steps`, `img2img_cfg_scale`, ...), so its users' scripts and habits carry over.
"""

from __future__ import annotations

import gradio as gr

from modules import upscalers
from modules.generation_request import Txt2ImgRequest
from modules.sampling.registry import sampler_names
from modules.sampling.schedules import schedule_labels
from modules.ui_tabs.common import Fields, UiContext

DEFAULTS = Txt2ImgRequest()


def _limits(name: str) -> tuple[float, float]:
    """(ge, le) of a request field, so a control never offers a value the request would refuse."""
    low = high = None
    for rule in Txt2ImgRequest.model_fields[name].metadata:
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    return low, high


def _slider(fields: Fields, tab: str, name: str, label: str, step: float, value: float | None = None,
            maximum: float | None = None, elem: str | None = None, **options) -> gr.Slider:
    low, high = _limits(name)
    return fields.add(name, gr.Slider(low, maximum or high, value=value if value is not None
                                      else getattr(DEFAULTS, name), step=step, label=label,
                                      elem_id=f"{tab}_{elem or name}", **options))


def sampler_controls(fields: Fields, tab: str) -> None:
    with gr.Row():
        fields.add("sampler_name", gr.Dropdown(label="Sampling method", choices=sampler_names(),
                                               value=DEFAULTS.sampler_name, elem_id=f"{tab}_sampling"))
        fields.add("scheduler", gr.Dropdown(label="Schedule type", choices=schedule_labels(),
                                            value=DEFAULTS.scheduler, elem_id=f"{tab}_scheduler"))
    _slider(fields, tab, "steps", "Sampling steps", 1)


def size_controls(fields: Fields, tab: str, size: int) -> gr.Button:
    with gr.Row(equal_height=True):
        with gr.Column(scale=4, min_width=200):
            fields.add("width", gr.Slider(64, 2048, value=size, step=8, label="Width", elem_id=f"{tab}_width"))
            fields.add("height", gr.Slider(64, 2048, value=size, step=8, label="Height", elem_id=f"{tab}_height"))
        swap = gr.Button("⇅", elem_id=f"{tab}_res_switch_btn", scale=0, min_width=44, elem_classes=["tool"])
    # In the browser: a swap needs no round trip to the server.
    swap.click(None, inputs=[fields["width"], fields["height"]], outputs=[fields["width"], fields["height"]],
               js="(w, h) => [h, w]")
    return swap


def batch_controls(fields: Fields, tab: str) -> None:
    with gr.Row():
        _slider(fields, tab, "n_iter", "Batch count", 1, elem="batch_count")
        _slider(fields, tab, "batch_size", "Batch size", 1, maximum=8)  # AUTOMATIC1111's slider; the API allows 64
    _slider(fields, tab, "cfg_scale", "CFG Scale", 0.5, value=DEFAULTS.cfg_scale, maximum=30)


def seed_controls(fields: Fields, tab: str) -> tuple[gr.Button, gr.Button]:
    with gr.Row(equal_height=True):
        fields.add("seed", gr.Number(value=-1, label="Seed", precision=0, elem_id=f"{tab}_seed", scale=4,
                                     min_width=160))
        random = gr.Button("⚄", elem_id=f"{tab}_random_seed", scale=0, min_width=44, elem_classes=["tool"])
        reuse = gr.Button("♻", elem_id=f"{tab}_reuse_seed", scale=0, min_width=44, elem_classes=["tool"])
        extra = gr.Checkbox(label="Extra", value=False, elem_id=f"{tab}_subseed_show", scale=0, min_width=80)
    with gr.Group(visible=False) as extras:
        with gr.Row():
            fields.add("subseed", gr.Number(value=-1, label="Variation seed", precision=0,
                                            elem_id=f"{tab}_subseed"))
            _slider(fields, tab, "subseed_strength", "Variation strength", 0.01)
        with gr.Row():
            fields.add("seed_resize_from_w", gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                                       elem_id=f"{tab}_seed_resize_from_w"))
            fields.add("seed_resize_from_h", gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                                       elem_id=f"{tab}_seed_resize_from_h"))
    extra.change(lambda on: gr.Group(visible=on), inputs=[extra], outputs=[extras], show_progress="hidden")
    random.click(None, outputs=[fields["seed"]], js="() => -1")
    return random, reuse


def hires_controls(fields: Fields, tab: str, ctx: UiContext) -> None:
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{tab}_hr"):
        fields.add("enable_hr", gr.Checkbox(label="Enable", value=False, elem_id=f"{tab}_enable_hr"))
        with gr.Row():
            choices = [*upscalers.LATENT_MODES, "Lanczos", "Nearest", *ctx.manager.upscalers.names()]
            fields.add("hr_upscaler", gr.Dropdown(label="Upscaler", choices=choices, value=DEFAULTS.hr_upscaler,
                                                  elem_id=f"{tab}_hr_upscaler"))
            _slider(fields, tab, "hr_second_pass_steps", "Hires steps", 1)
            _slider(fields, tab, "denoising_strength", "Denoising strength", 0.01)
        with gr.Row():
            _slider(fields, tab, "hr_scale", "Upscale by", 0.05)
            fields.add("hr_resize_x", gr.Slider(0, 2048, value=0, step=8, label="Resize width to",
                                                elem_id=f"{tab}_hr_resize_x"))
            fields.add("hr_resize_y", gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                                elem_id=f"{tab}_hr_resize_y"))


def request_fields(values: dict) -> dict:
    """Control values as request fields: sliders give floats, and 0 means "unset" for seed resizing."""
    fields = dict(values)
    for name in ("steps", "width", "height", "n_iter", "batch_size", "seed", "subseed", "hr_second_pass_steps",
                 "hr_resize_x", "hr_resize_y", "seed_resize_from_w", "seed_resize_from_h"):
        if fields.get(name) is not None:
            fields[name] = int(fields[name])
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        if fields.get(name) == 0:
            fields[name] = -1
    for name in ("seed", "subseed"):
        if fields.get(name) is None:
            fields[name] = -1
    return fields
