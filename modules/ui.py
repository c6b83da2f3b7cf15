"""The Gradio page.

Each control is bound to a request field by name (`FIELD_COMPONENTS`), and a handler receives
them as one dict, which becomes a `Txt2ImgRequest`: no handler with positional arguments by the
dozen.
"""

from __future__ import annotations

import logging

import gradio as gr
from pydantic import ValidationError

from modules.generation_request import Txt2ImgRequest
from modules.generation_service import GenerationService
from modules.job_queue import QueueFullError
from modules.model_manager import ModelManager, NoCheckpointError
from modules.safe_load import ModelFileError
from modules.sampling.registry import sampler_names
from modules.sampling.schedules import schedule_labels

log = logging.getLogger(__name__)


def _checkpoint_choices(manager: ModelManager) -> list[str]:
    return [c.title for c in manager.checkpoints]


def _status_text(manager: ModelManager) -> str:
    if not manager.checkpoints:
        folders = ", ".join(f"`{p}`" for p in manager.paths.checkpoint_dirs)
        return f"**No checkpoint is present.** Put a `.safetensors` or `.ckpt` file in {folders} and press ↻."
    return ""


def _validation_message(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in error.errors())


def prompt_token_count(model, text: str) -> tuple[int, int]:
    """Tokens of the longest text the prompt schedules, as AUTOMATIC1111's counter shows them."""
    from modules import lora, prompt_parser
    from modules.text_encoding import count_tokens

    text, _ = lora.parse_lora_tags(prompt_parser.strip_comments(text))
    texts = [t for t, _ in prompt_parser.parse_and(text)] or [text]
    counts = [count_tokens(model, scheduled) for part in texts
              for scheduled in prompt_parser.schedule_for(part, 20, negative=True).distinct_texts()]
    return max(counts, key=lambda c: c[0])


def _default_size(manager: ModelManager) -> int:
    try:
        return manager.native_size(manager.default_checkpoint()) or 512
    except NoCheckpointError:
        return 512


def build_ui(service: GenerationService) -> gr.Blocks:
    manager = service.manager
    size = _default_size(manager)
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as demo:
        with gr.Row():
            choices = _checkpoint_choices(manager)
            checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", choices=choices,
                                     value=choices[0] if choices else None, elem_id="sd_checkpoint", scale=4)
            refresh = gr.Button("↻", elem_id="refresh_checkpoints", scale=0, min_width=50)
        status = gr.Markdown(_status_text(manager), elem_id="status")
        with gr.Tab("txt2img"):
            with gr.Row():
                with gr.Column(scale=3):
                    prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt")
                    prompt_tokens = gr.Markdown("", elem_id="txt2img_token_counter")
                    negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
                    negative_tokens = gr.Markdown("", elem_id="txt2img_negative_token_counter")
                generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate", scale=1)
            with gr.Row():
                with gr.Column():
                    with gr.Row():
                        sampler = gr.Dropdown(label="Sampling method", choices=sampler_names(), value="Euler",
                                              elem_id="txt2img_sampling")
                        scheduler = gr.Dropdown(label="Schedule type", choices=schedule_labels(), value="Automatic",
                                                elem_id="txt2img_scheduler")
                    steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
                    width = gr.Slider(64, 2048, value=size, step=8, label="Width", elem_id="txt2img_width")
                    height = gr.Slider(64, 2048, value=size, step=8, label="Height", elem_id="txt2img_height")
                    batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                    batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
                    cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
                    seed = gr.Number(value=-1, label="Seed", precision=0, elem_id="txt2img_seed")
                with gr.Column():
                    gallery = gr.Gallery(label="Output", elem_id="txt2img_gallery", columns=2, height="auto")
                    info = gr.Textbox(label="Generation parameters", lines=4, interactive=False,
                                      elem_id="txt2img_info")

        field_components = {
            "prompt": prompt, "negative_prompt": negative, "sampler_name": sampler, "scheduler": scheduler,
            "steps": steps,
            "width": width, "height": height, "n_iter": batch_count, "batch_size": batch_size,
            "cfg_scale": cfg, "seed": seed,
        }

        def run_txt2img(values: dict):
            fields = {name: values[component] for name, component in field_components.items()}
            try:
                request = Txt2ImgRequest(**fields)
                result = service.txt2img(request, checkpoint=values[checkpoint] or None)
            except ValidationError as e:
                raise gr.Error(_validation_message(e)) from None
            except (NoCheckpointError, ModelFileError, ValueError, QueueFullError) as e:
                raise gr.Error(str(e)) from None
            return result.images, result.infotexts[0] if result.infotexts else ""

        generate.click(run_txt2img, inputs={checkpoint, *field_components.values()}, outputs=[gallery, info])
        prompt.submit(run_txt2img, inputs={checkpoint, *field_components.values()}, outputs=[gallery, info])

        def token_counter(text: str) -> str:
            model = manager.loaded
            if model is None or not text:
                return ""
            used, limit = prompt_token_count(model, text)
            return f"{used}/{limit}"

        prompt.change(token_counter, inputs=[prompt], outputs=[prompt_tokens], show_progress="hidden")
        negative.change(token_counter, inputs=[negative], outputs=[negative_tokens], show_progress="hidden")

        def refresh_checkpoints(current: str | None):
            manager.refresh()
            titles = _checkpoint_choices(manager)
            value = current if current in titles else (titles[0] if titles else None)
            return gr.Dropdown(choices=titles, value=value), _status_text(manager)

        refresh.click(refresh_checkpoints, inputs=[checkpoint], outputs=[checkpoint, status])

        def switch_checkpoint(title: str | None):
            if not title:
                return _status_text(manager), gr.update(), gr.update()
            try:
                service.set_checkpoint(title)  # loaded by the queue, between jobs
            except (ModelFileError, ValueError) as e:
                raise gr.Error(str(e)) from None
            model = manager.loaded
            native = model.native_size
            # Start from the size the model was trained at; a 512 default would tile a small model.
            return (f"Loaded `{model.checkpoint.title}` ({model.family}, native size {native}x{native}).",
                    gr.update(value=native), gr.update(value=native))

        checkpoint.input(switch_checkpoint, inputs=[checkpoint], outputs=[status, width, height])
    return demo
