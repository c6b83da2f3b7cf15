"""The Settings tab, generated from the saved settings model: a control per setting, grouped in
AUTOMATIC1111's sections. Apply validates and writes config.json; the next job uses the new values,
so nothing needs a restart. A setting added to the model appears here without UI code."""

from __future__ import annotations

import typing
from dataclasses import dataclass

import gradio as gr
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from modules.service.settings_store import Settings
from modules.app.ui.common import UiContext, refusal
from modules.app.ui.field_bounds import field_limits

# Shown in the bar above the tabs; a second control for the same setting here would fall out of step.
IN_TOP_BAR = {"sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"}

LABELS = {
    "sd_model_checkpoint": "Stable Diffusion checkpoint",
    "sd_vae": "SD VAE",
    "CLIP_stop_at_last_layers": "Clip skip",
    "eta_noise_seed_delta": "Eta noise seed delta (ENSD; does not improve anything, just produces different results)",
    "randn_source": "Random number generator source",
    "samples_format": "File format for images",
    "return_grid": "Show grid in results (API)",
    "live_previews_enable": "Show live previews of the created image",
    "show_progress_every_n_steps": "Live preview display period (in sampling steps; -1: only at the end)",
    "show_progress_type": "Live preview method",
    "face_restoration_model": "Face restoration model",
    "code_former_weight": "CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
    "interrupt_after_current": "Don't interrupt in the middle of a batch (finish the current image)",
}
SECTIONS = {
    "Saving images/grids": ("samples_format", "return_grid"),
    "Stable Diffusion": ("eta_noise_seed_delta", "randn_source"),
    "Live previews": ("live_previews_enable", "show_progress_every_n_steps", "show_progress_type"),
    "Face restoration": ("face_restoration_model", "code_former_weight"),
    "System": ("interrupt_after_current",),
}


@dataclass
class SettingsTab:
    controls: dict[str, gr.components.Component]
    apply: gr.Button
    result: gr.Markdown


def _literal_choices(annotation) -> list | None:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return None


def label_of(key: str) -> str:
    return LABELS.get(key, key.replace("_", " ").capitalize())


def setting_message(error: ValidationError) -> str:
    """Each problem named by the setting's label and key (the key is what the API calls it): a bare
    "Input should be greater than or equal to 0" does not say which of twenty boxes is wrong."""
    parts = []
    for problem in error.errors():
        key = str(problem["loc"][0]) if problem["loc"] else ""
        parts.append(f"{label_of(key)} ({key}): {problem['msg']}" if key else problem["msg"])
    return "; ".join(parts)


def control_for(ctx: UiContext, key: str, info: FieldInfo, value) -> gr.components.Component:
    label, elem_id = label_of(key), f"setting_{key}"
    if key == "face_restoration_model":
        choices = list(dict.fromkeys([*ctx.catalog.face_restorer_names(), "CodeFormer", "GFPGAN"]))
        return gr.Dropdown(choices, value=value, label=label, elem_id=elem_id)
    choices = _literal_choices(info.annotation)
    if choices is not None:
        return gr.Dropdown(choices, value=value, label=label, elem_id=elem_id)
    if info.annotation is bool:
        return gr.Checkbox(value=value, label=label, elem_id=elem_id)
    if info.annotation in (int, float):
        # No minimum/maximum on the box: Gradio would refuse with its own words, which name no setting;
        # the settings model says what is wrong and with which setting.
        low, high = field_limits(Settings, key)
        bounds = f"From {low} to {high}" if low is not None and high is not None else None
        return gr.Number(value=value, label=label, elem_id=elem_id, info=bounds,
                         precision=0 if info.annotation is int else None)
    return gr.Textbox(value="" if value is None else str(value), label=label, elem_id=elem_id)


def _sections() -> dict[str, list[str]]:
    keys = [k for k in Settings.model_fields if k not in IN_TOP_BAR]
    grouped = {name: [k for k in members if k in keys] for name, members in SECTIONS.items()}
    placed = {k for members in grouped.values() for k in members}
    grouped["Other"] = [k for k in keys if k not in placed]
    return {name: members for name, members in grouped.items() if members}


def build_settings(ctx: UiContext) -> SettingsTab:
    current = ctx.settings.current
    controls: dict[str, gr.components.Component] = {}
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=1)
        result = gr.Markdown("", elem_id="settings_result")
    for section, keys in _sections().items():
        with gr.Accordion(section, open=True, elem_id=f"settings_section_{section.lower().replace(' ', '_')}"):
            for key in keys:
                controls[key] = control_for(ctx, key, Settings.model_fields[key], getattr(current, key))
    gr.Markdown(f"Saved to `{ctx.settings.path}`. Checkpoint, VAE and clip skip are in the bar at the top.",
                elem_id="settings_file")
    tab = SettingsTab(controls, apply, result)
    wire_settings(ctx, tab)
    return tab


def changed_values(ctx: UiContext, values: dict[str, object]) -> dict[str, object]:
    current = ctx.settings.current.model_dump()
    return {key: value for key, value in values.items() if current.get(key) != value}


def wire_settings(ctx: UiContext, tab: SettingsTab) -> None:
    def apply(values: dict) -> str:
        changes = changed_values(ctx, {key: values[control] for key, control in tab.controls.items()})
        if not changes:
            return "Nothing changed."
        try:
            ctx.settings.update(changes)
        except ValidationError as e:
            raise refusal(setting_message(e)) from None
        return f"{len(changes)} setting{'s' if len(changes) != 1 else ''} changed: {', '.join(sorted(changes))}."

    tab.apply.click(apply, inputs=set(tab.controls.values()), outputs=[tab.result], show_progress="hidden")


def current_values(ctx: UiContext, tab: SettingsTab) -> dict:
    """Outputs that show the saved values (on page load: another client or the API may have changed them)."""
    current = ctx.settings.current
    return {control: getattr(current, key) for key, control in tab.controls.items()}
