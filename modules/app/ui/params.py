"""The generation parameters shared by txt2img and img2img: sampler, steps, size, batch, CFG, seed.

Each control is bound to the Txt2ImgRequest field of the same meaning; element ids follow
AUTOMATIC1111's (`txt2img_steps`, `img2img_cfg_scale`, ...), so its users' scripts and habits carry over.
"""

from __future__ import annotations

import gradio as gr

from modules.io.generation_request import Txt2ImgRequest
from modules.sampling.registry import sampler_names
from modules.sampling.schedules import schedule_labels
from modules.app.ui.common import Fields, UiContext
from modules.app.ui.components import FieldSlider
from modules.app.ui.field_bounds import field_limits

DEFAULTS = Txt2ImgRequest()


def request_slider(fields: Fields, tab: str, name: str, label: str, step: float, value: float | None = None,
                   elem: str | None = None, model: type[Txt2ImgRequest] = Txt2ImgRequest,
                   minimum: float | None = None, **options) -> FieldSlider:
    """A slider over the request field's own range; `minimum` only where the page encodes "unset" as 0."""
    low, high = field_limits(model, name)
    default = model.model_fields[name].default if value is None else value
    return fields.add(name, FieldSlider(minimum=low if minimum is None else minimum, maximum=high, value=default,
                                        step=step, label=label, elem_id=f"{tab}_{elem or name}", **options))


def sampler_controls(fields: Fields, tab: str) -> None:
    with gr.Row():
        fields.add("sampler_name", gr.Dropdown(label="Sampling method", choices=sampler_names(),
                                               value=DEFAULTS.sampler_name, elem_id=f"{tab}_sampling"))
        fields.add("scheduler", gr.Dropdown(label="Schedule type", choices=schedule_labels(),
                                            value=DEFAULTS.scheduler, elem_id=f"{tab}_scheduler"))
    request_slider(fields, tab, "steps", "Sampling steps", 1)


def size_controls(fields: Fields, tab: str, size: int) -> gr.Button:
    with gr.Row(equal_height=True):
        with gr.Column(scale=4, min_width=200):
            request_slider(fields, tab, "width", "Width", 8, value=size)
            request_slider(fields, tab, "height", "Height", 8, value=size)
        swap = gr.Button("⇅", elem_id=f"{tab}_res_switch_btn", scale=0, min_width=44, elem_classes=["tool"])
    # In the browser: a swap needs no round trip to the server.
    swap.click(None, inputs=[fields["width"], fields["height"]], outputs=[fields["width"], fields["height"]],
               js="(w, h) => [h, w]")
    return swap


def batch_controls(fields: Fields, tab: str) -> None:
    with gr.Row():
        request_slider(fields, tab, "n_iter", "Batch count", 1, elem="batch_count")
        request_slider(fields, tab, "batch_size", "Batch size", 1)
    request_slider(fields, tab, "cfg_scale", "CFG Scale", 0.5)


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
            request_slider(fields, tab, "subseed_strength", "Variation strength", 0.01)
        with gr.Row():
            request_slider(fields, tab, "seed_resize_from_w", "Resize seed from width", 8, value=0, minimum=0)
            request_slider(fields, tab, "seed_resize_from_h", "Resize seed from height", 8, value=0, minimum=0)
    extra.change(lambda on: gr.Group(visible=on), inputs=[extra], outputs=[extras], show_progress="hidden")
    random.click(None, outputs=[fields["seed"]], js="() => -1")
    return random, reuse


def hires_controls(fields: Fields, tab: str, ctx: UiContext) -> None:
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{tab}_hr"):
        fields.add("enable_hr", gr.Checkbox(label="Enable", value=False, elem_id=f"{tab}_enable_hr"))
        with gr.Row():
            choices = ctx.catalog.hires_upscalers()
            fields.add("hr_upscaler", gr.Dropdown(label="Upscaler", choices=choices, value=DEFAULTS.hr_upscaler,
                                                  elem_id=f"{tab}_hr_upscaler"))
            request_slider(fields, tab, "hr_second_pass_steps", "Hires steps", 1)
            request_slider(fields, tab, "denoising_strength", "Denoising strength", 0.01)
        with gr.Row():
            request_slider(fields, tab, "hr_scale", "Upscale by", 0.05)
            request_slider(fields, tab, "hr_resize_x", "Resize width to", 8)
            request_slider(fields, tab, "hr_resize_y", "Resize height to", 8)


def request_fields(values: dict) -> dict:
    """Control values as request fields: sliders give floats, and 0 means "unset" for seed resizing.
    A fraction typed into a whole-number field stays, for the request to refuse by name."""
    fields = dict(values)
    for name in ("steps", "width", "height", "n_iter", "batch_size", "seed", "subseed", "hr_second_pass_steps",
                 "hr_resize_x", "hr_resize_y", "seed_resize_from_w", "seed_resize_from_h"):
        if isinstance(fields.get(name), float) and fields[name].is_integer():
            fields[name] = int(fields[name])
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        if fields.get(name) == 0:
            fields[name] = -1
    for name in ("seed", "subseed"):
        if fields.get(name) is None:
            fields[name] = -1
    return fields
