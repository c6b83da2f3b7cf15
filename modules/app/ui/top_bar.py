"""The quick settings above the tabs: checkpoint (titles with hashes) with refresh, VAE, clip skip.

Each is a saved setting: a change is written to config.json at once and used by the next job, and
a checkpoint or VAE change is loaded as a queue job, so it never lands in the middle of a generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
from pydantic import ValidationError

from modules.service.failures import NoCheckpointError
from modules.app.ui.common import USER_ERRORS, UiContext, refusal, user_error
from modules.app.ui.settings import setting_message


@dataclass
class TopBar:
    checkpoint: gr.Dropdown
    refresh: gr.Button
    vae: gr.Dropdown
    clip_skip: gr.Number
    status: gr.Markdown


def vae_choices(ctx: UiContext) -> list[str]:
    return ctx.catalog.vae_choices()


def current_checkpoint(ctx: UiContext) -> str | None:
    try:
        return ctx.service.checkpoint_for(ctx.settings.current).title
    except (NoCheckpointError, ValueError):
        titles = ctx.catalog.checkpoint_titles()
        return titles[0] if titles else None


def status_text(ctx: UiContext) -> str:
    if not ctx.catalog.checkpoints:
        folders = ", ".join(f"`{p}`" for p in ctx.catalog.checkpoint_dirs)
        return f"**No checkpoint is present.** Put a `.safetensors` or `.ckpt` file in {folders} and press ↻."
    return ""


def build_top_bar(ctx: UiContext) -> TopBar:
    settings = ctx.settings.current
    with gr.Row(elem_id="quicksettings", equal_height=True):
        checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", choices=ctx.catalog.checkpoint_titles(),
                                 value=current_checkpoint(ctx), elem_id="sd_checkpoint", scale=4, min_width=240)
        refresh = gr.Button("↻", elem_id="refresh_checkpoints", scale=0, min_width=44,
                            elem_classes=["tool"])
        vae = gr.Dropdown(label="SD VAE", choices=vae_choices(ctx), value=settings.sd_vae, elem_id="sd_vae",
                          scale=2, min_width=160)
        # No minimum/maximum: the settings model refuses a value out of range, naming the setting.
        clip_skip = gr.Number(value=settings.CLIP_stop_at_last_layers, step=1, precision=0, label="Clip skip",
                              elem_id="clip_skip", scale=1, min_width=110)
    status = gr.Markdown(status_text(ctx), elem_id="status")
    if ctx.catalog.compiles:
        _warmup_status(ctx)
    return TopBar(checkpoint, refresh, vae, clip_skip, status)


def _warmup_status(ctx: UiContext) -> None:
    """--compile: a line saying what compiles in the background, polled while the page is open."""
    def note() -> str:
        text = ctx.service.warmup_note()
        return f"Warming up: {text}." if text else ""

    line = gr.Markdown(note(), elem_id="warmup_status")
    gr.Timer(2.0).tick(note, outputs=[line], show_progress="hidden")


def wire_top_bar(ctx: UiContext, bar: TopBar) -> None:
    def refresh(current: str | None, vae: str):
        ctx.catalog.refresh()
        titles = ctx.catalog.checkpoint_titles()
        value = current if current in titles else current_checkpoint(ctx)
        choices = vae_choices(ctx)
        return (gr.Dropdown(choices=titles, value=value),
                gr.Dropdown(choices=choices, value=vae if vae in choices else choices[0]), status_text(ctx))

    bar.refresh.click(refresh, inputs=[bar.checkpoint, bar.vae], outputs=[bar.checkpoint, bar.vae, bar.status])

    def change_vae(choice: str) -> str:
        try:
            ctx.settings.update({"sd_vae": choice})
            if ctx.catalog.loaded() is not None:
                ctx.service.load_model().wait()
        except USER_ERRORS as e:
            raise user_error(e) from None
        return f"VAE: `{choice}`."

    bar.vae.input(change_vae, inputs=[bar.vae], outputs=[bar.status], concurrency_limit=None)

    def change_clip_skip(value: float | None) -> None:
        if value is None:
            return  # a box being retyped
        try:
            ctx.settings.update({"CLIP_stop_at_last_layers": value})
        except ValidationError as e:
            raise refusal(setting_message(e)) from None

    bar.clip_skip.input(change_clip_skip, inputs=[bar.clip_skip], show_progress="hidden", trigger_mode="always_last")


def switch_checkpoint(ctx: UiContext, title: str | None) -> tuple[str, int | None]:
    """Save and load the chosen checkpoint (after the jobs already queued); (status, native size)."""
    if not title:
        return status_text(ctx), None
    try:
        info = ctx.service.set_checkpoint(title)
    except USER_ERRORS as e:
        raise user_error(e) from None
    model = ctx.catalog.loaded()
    native = model.native_size if model is not None else None
    family = f"{model.family}, " if model is not None else ""
    return f"Loaded `{info.title}` ({family}native size {native}x{native}).", native
