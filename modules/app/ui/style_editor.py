"""The style editor that ✎ opens under the prompt row: name, prompt and negative prompt of a style,
saved to (or deleted from) styles.csv through modules/io/styles.py, which writes the file atomically.

Opened with styles chosen, it shows the first of them; with none, it starts from the prompts on the
page, so a prompt worth keeping becomes a style by giving it a name. After a change every styles
dropdown of the page offers the new list.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import gradio as gr

from modules.io import styles as style_files
from modules.app.ui.common import UiContext, refusal

# One writer at a time: two saves at once would each rewrite the file from the same old contents.
_WRITE_LOCK = threading.Lock()


@dataclass
class StyleEditor:
    panel: gr.Column
    name: gr.Dropdown  # an existing style to change, or a new name typed in
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    save: gr.Button
    delete: gr.Button
    close: gr.Button


def style_names(ctx: UiContext) -> list[str]:
    return sorted(_load(ctx))


def _load(ctx: UiContext) -> dict[str, style_files.PromptStyle]:
    return ctx.catalog.styles()


def build_style_editor(ctx: UiContext, tab: str) -> StyleEditor:
    with gr.Column(visible=False, variant="panel", elem_id=f"{tab}_style_editor") as panel:
        gr.Markdown(f"**Edit style** · saved in `{ctx.catalog.styles_file.name}`")
        name = gr.Dropdown(label="Style name", choices=style_names(ctx), value=None, allow_custom_value=True,
                           elem_id=f"{tab}_style_name", info="Pick a style to change it, or type a new name")
        prompt = gr.Textbox(label="Style prompt", lines=2, max_lines=8, elem_id=f"{tab}_style_prompt",
                            placeholder="{prompt} marks where your prompt goes; without it the style is appended")
        negative = gr.Textbox(label="Style negative prompt", lines=1, max_lines=8, elem_id=f"{tab}_style_neg_prompt")
        with gr.Row(elem_classes=["style-editor-actions"]):
            save = gr.Button("Save", variant="primary", size="sm", elem_id=f"{tab}_style_save", min_width=80)
            delete = gr.Button("Delete", variant="stop", size="sm", elem_id=f"{tab}_style_delete", min_width=80)
            close = gr.Button("Close", size="sm", elem_id=f"{tab}_style_close", min_width=80)
    return StyleEditor(panel, name, prompt, negative, save, delete, close)


def _write(ctx: UiContext, change) -> None:
    """Read styles.csv, let `change` edit the dict of styles, write it back (atomically, keeping a .bak)."""
    with _WRITE_LOCK:
        known = _load(ctx)
        change(known)
        style_files.save_styles(ctx.catalog.styles_file, known.values())


def save_style(ctx: UiContext, name: str | None, prompt: str, negative_prompt: str) -> str:
    name = (name or "").strip()
    if not name:
        raise refusal("Type a name for the style first.")
    try:
        style = style_files.PromptStyle(style_files.validate_style_name(name), prompt or "", negative_prompt or "")
    except style_files.StyleNameError as e:
        raise refusal(str(e)) from None
    _write(ctx, lambda known: known.update({name: style}))
    return name


def delete_style(ctx: UiContext, name: str | None) -> str:
    if not name or name not in _load(ctx):
        raise refusal(f"There is no style {name!r} to delete." if name else "Pick the style to delete first.")
    _write(ctx, lambda known: known.pop(name, None))
    return name


def wire_style_editor(ctx: UiContext, editor: StyleEditor, open_button: gr.Button, chosen: gr.Dropdown,
                      prompt: gr.Textbox, negative_prompt: gr.Textbox, dropdowns: list[gr.Dropdown]) -> None:
    """`chosen`: the tab's styles dropdown; `dropdowns`: every styles dropdown on the page, offered the
    new list after a save or a delete."""
    fields = [editor.name, editor.prompt, editor.negative_prompt]

    def open_editor(selected: list[str] | None, text: str, negative: str):
        known = _load(ctx)
        style = next((known[name] for name in selected or [] if name in known), None)
        start = [style.name, style.prompt, style.negative_prompt] if style else [None, text, negative]
        return [gr.Column(visible=True), gr.Dropdown(choices=sorted(known), value=start[0]), *start[1:]]

    open_button.click(open_editor, inputs=[chosen, prompt, negative_prompt], outputs=[editor.panel, *fields],
                      show_progress="hidden")

    def load(name: str | None):
        style = _load(ctx).get(name or "")
        return (style.prompt, style.negative_prompt) if style else (gr.update(), gr.update())

    editor.name.select(load, inputs=[editor.name], outputs=[editor.prompt, editor.negative_prompt],
                       show_progress="hidden")

    def saved(name: str | None, text: str, negative: str):
        name = save_style(ctx, name, text, negative)
        gr.Info(f"Style {name!r} saved.")
        names = style_names(ctx)
        # Offered, not chosen: a style made from the prompt, chosen as well, would double the prompt.
        return [gr.Column(visible=False), gr.Dropdown(choices=names, value=name),
                *[gr.Dropdown(choices=names) for _ in dropdowns]]

    editor.save.click(saved, inputs=fields, outputs=[editor.panel, editor.name, *dropdowns], show_progress="hidden")

    def deleted(name: str | None, *selected_lists):
        name = delete_style(ctx, name)
        gr.Info(f"Style {name!r} deleted.")
        names = style_names(ctx)
        return [gr.Dropdown(choices=names, value=None), "", "",
                *[gr.Dropdown(choices=names, value=[n for n in selected or [] if n in names])
                  for selected in selected_lists]]

    editor.delete.click(deleted, inputs=[editor.name, *dropdowns], outputs=[*fields, *dropdowns],
                        show_progress="hidden")
    editor.close.click(lambda: gr.Column(visible=False), outputs=[editor.panel], show_progress="hidden")
