"""The prompt row of a generation tab: prompt and negative prompt with token counters, Generate,
Interrupt, Skip, and the styles dropdown with its editor (✎) and apply (⤵) buttons."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.io import styles as style_files
from modules.app.ui.common import Fields, UiContext, refusal
from modules.app.ui.style_editor import StyleEditor, build_style_editor, style_names, wire_style_editor


@dataclass
class PromptArea:
    fields: Fields
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    apply_styles: gr.Button
    edit_styles: gr.Button
    style_editor: StyleEditor
    prompt_tokens: gr.Markdown
    negative_tokens: gr.Markdown


def build_prompt_area(ctx: UiContext, tab: str) -> PromptArea:
    fields = Fields()
    with gr.Row(elem_id=f"{tab}_toprow", elem_classes=["toprow"]):
        with gr.Column(scale=6, min_width=280):
            fields.add("prompt", gr.Textbox(label="Prompt", lines=2, max_lines=12, elem_id=f"{tab}_prompt",
                                            placeholder="Prompt (Ctrl+Enter to generate; Midjourney-style "
                                                        "--ar 16:9 --seed 5 --no text work here)"))
            prompt_tokens = gr.Markdown("", elem_id=f"{tab}_token_counter", elem_classes=["token-counter"])
            fields.add("negative_prompt", gr.Textbox(label="Negative prompt", lines=1, max_lines=8,
                                                     elem_id=f"{tab}_neg_prompt"))
            negative_tokens = gr.Markdown("", elem_id=f"{tab}_negative_token_counter",
                                          elem_classes=["token-counter"])
        with gr.Column(scale=2, min_width=200, elem_classes=["generate-box"]):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate", size="lg")
            with gr.Row():
                interrupt = gr.Button("Interrupt", variant="stop", elem_id=f"{tab}_interrupt", size="sm",
                                      min_width=80)
                skip = gr.Button("Skip", elem_id=f"{tab}_skip", size="sm", min_width=80)
            with gr.Row(equal_height=True):
                fields.add("styles", gr.Dropdown(label="Styles", choices=style_names(ctx), value=[],
                                                 multiselect=True, elem_id=f"{tab}_styles", scale=4,
                                                 min_width=120))
                edit_styles = gr.Button("✎", elem_id=f"{tab}_style_edit", scale=0, min_width=44,
                                        elem_classes=["tool"])
                apply_styles = gr.Button("⤵", elem_id=f"{tab}_style_apply", scale=0, min_width=44,
                                         elem_classes=["tool"])
    editor = build_style_editor(ctx, tab)
    area = PromptArea(fields, generate, interrupt, skip, apply_styles, edit_styles, editor, prompt_tokens,
                      negative_tokens)
    wire_prompt_area(ctx, area)
    return area


def wire_prompt_area(ctx: UiContext, area: PromptArea) -> None:
    def token_counter(text: str) -> str:
        counted = ctx.catalog.prompt_tokens(text)
        return "" if counted is None else f"{counted[0]}/{counted[1]}"

    prompt, negative = area.fields["prompt"], area.fields["negative_prompt"]
    prompt.change(token_counter, inputs=[prompt], outputs=[area.prompt_tokens], show_progress="hidden",
                  trigger_mode="always_last", concurrency_limit=None)
    negative.change(token_counter, inputs=[negative], outputs=[area.negative_tokens], show_progress="hidden",
                    trigger_mode="always_last", concurrency_limit=None)

    def apply(text: str, negative_text: str, chosen: list[str]):
        """Write the chosen styles into the prompts and clear the choice, so they apply only once."""
        known = ctx.catalog.styles()
        try:
            text, negative_text = style_files.apply_styles(text, negative_text, chosen or [], known)
        except style_files.UnknownStyleError as e:
            raise refusal(str(e.args[0])) from None
        return text, negative_text, gr.Dropdown(value=[], choices=style_names(ctx))

    area.apply_styles.click(apply, inputs=[prompt, negative, area.fields["styles"]],
                            outputs=[prompt, negative, area.fields["styles"]], show_progress="hidden")


def wire_style_editors(ctx: UiContext, areas: list[PromptArea]) -> None:
    """Each tab's ✎ editor; a change made in one shows in the styles dropdown of every tab."""
    dropdowns = [area.fields["styles"] for area in areas]
    for area in areas:
        wire_style_editor(ctx, area.style_editor, area.edit_styles, area.fields["styles"], area.fields["prompt"],
                          area.fields["negative_prompt"], dropdowns)
