"""The Gradio page: composed from one module per tab in this package.

Each control is bound to a request field by name, and each handler builds one typed request from
a dict of values; generation goes through the job queue, so the page shows the job's progress and
can interrupt or skip it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import gradio as gr

from modules.service.generation_service import GenerationService
from modules.app.ui import settings as settings_tab
from modules.app.ui import top_bar
from modules.app.ui.common import UiContext
from modules.app.ui.extras import build_extras
from modules.app.ui.field_bounds import UNCLAMP_JS
from modules.app.ui.img2img import build_img2img
from modules.app.ui.png_info import build_png_info
from modules.app.ui.progress import ActiveJobs
from modules.app.ui.prompt_area import wire_style_editors
from modules.app.ui.send_to import Targets, wire_png_info_send, wire_results_send
from modules.app.ui.tooltips import TOOLTIPS_JS
from modules.app.ui.txt2img import build_txt2img

STYLE_FILE = Path(__file__).parent / "style.css"

# Ctrl+Enter generates on the visible tab, as in AUTOMATIC1111.
PAGE_JS = """() => {
  document.addEventListener('keydown', (e) => {
    if (!(e.key === 'Enter' && (e.ctrlKey || e.metaKey))) return;
    const buttons = [...document.querySelectorAll('#txt2img_generate, #img2img_generate, #extras_generate')];
    const visible = buttons.find((b) => b.offsetParent !== null);
    if (visible) { e.preventDefault(); visible.click(); }
  });
}"""


def theme_js(theme: str | None) -> str:
    """Gradio reads the colour scheme from `?__theme=`; a --theme flag adds it when the URL has none."""
    if theme not in ("light", "dark"):
        return ""
    return f"""() => {{
  const url = new URL(window.location);
  if (!url.searchParams.has('__theme')) {{ url.searchParams.set('__theme', '{theme}'); window.location.replace(url); }}
}}"""


def build_ui(service: GenerationService, args: argparse.Namespace | None = None) -> gr.Blocks:
    ctx = UiContext(service, args)
    active = ActiveJobs()
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as demo:
        # The page's CSS travels inside the Blocks, so every way of serving it looks the same.
        gr.HTML(f"<style>{STYLE_FILE.read_text(encoding='utf-8')}</style>", elem_id="page_style", js_on_load=None,
                padding=False, container=False)
        bar = top_bar.build_top_bar(ctx)
        # Tabs that do not fit wrap onto a second row: hidden behind "…" nobody finds them on a phone.
        with gr.Tabs(elem_id="tabs", selected="txt2img", overflow_behavior="wrap") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = build_txt2img(ctx, active)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                img2img = build_img2img(ctx, active)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras = build_extras(ctx, active)
            with gr.Tab("PNG Info", id="png_info", elem_id="tab_pnginfo"):
                png = build_png_info()
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings = settings_tab.build_settings(ctx)
        wire(ctx, demo, bar, Targets(tabs, txt2img, img2img, extras), png, settings)
    return demo


def wire(ctx: UiContext, demo: gr.Blocks, bar: top_bar.TopBar, targets: Targets, png,
         settings: settings_tab.SettingsTab) -> None:
    top_bar.wire_top_bar(ctx, bar)
    wire_style_editors(ctx, [targets.txt2img.prompt, targets.img2img.prompt])
    for area in (targets.txt2img.results, targets.img2img.results, targets.extras.results):
        wire_results_send(targets, area)
    wire_png_info_send(targets, png)

    sizes = [targets.txt2img.fields["width"], targets.txt2img.fields["height"],
             targets.img2img.fields["width"], targets.img2img.fields["height"]]

    def switch_checkpoint(title: str | None):
        status, native = top_bar.switch_checkpoint(ctx, title)
        # Start from the size the model was trained at; a 512 default would tile a small model.
        return [status, *([native] * 4 if native else [gr.update()] * 4)]

    bar.checkpoint.input(switch_checkpoint, inputs=[bar.checkpoint], outputs=[bar.status, *sizes],
                         concurrency_limit=None)

    def saved_values():
        """What the saved settings say now: another client or the API may have changed them."""
        current = ctx.settings.current
        return {bar.checkpoint: top_bar.current_checkpoint(ctx), bar.vae: current.sd_vae,
                bar.clip_skip: current.CLIP_stop_at_last_layers, **settings_tab.current_values(ctx, settings)}

    demo.load(saved_values, outputs=[bar.checkpoint, bar.vae, bar.clip_skip, *settings.controls.values()],
              show_progress="hidden")
    scripts = [PAGE_JS, UNCLAMP_JS, TOOLTIPS_JS, theme_js(getattr(ctx.args, "theme", None))]
    demo.load(None, js=f"() => {{ {' '.join(f'({js})();' for js in scripts if js)} }}")

