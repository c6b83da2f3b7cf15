"""The results of a tab: a gallery, the parameters of the selected image, and what to do with it
(send to img2img / inpaint / extras, download, open the output folder)."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image

from modules.app.ui.common import UiContext


@dataclass
class ResultItem:
    image: Image.Image
    infotext: str = ""
    path: Path | None = None
    seed: int | None = None


@dataclass
class Results:
    """What a tab's gallery shows, kept per browser session."""

    items: list[ResultItem] = field(default_factory=list)
    selected: int = 0
    request: object | None = None  # the request as it ran (seeds resolved), for variations
    folder: Path | None = None

    def current(self) -> ResultItem | None:
        if not self.items:
            return None
        return self.items[min(max(self.selected, 0), len(self.items) - 1)]


@dataclass
class ResultsArea:
    gallery: gr.Gallery
    info: gr.Textbox
    state: gr.State
    to_img2img: gr.Button
    to_inpaint: gr.Button
    to_extras: gr.Button
    download: gr.DownloadButton
    open_folder: gr.Button
    notes: gr.Markdown


def gallery_value(results: Results) -> list[tuple[Image.Image, str | None]]:
    """Images that carry their infotext: the gallery's own download then gives PNGs with parameters."""
    shown = []
    for item in results.items:
        image = item.image.copy()
        if item.infotext:
            image.info["parameters"] = item.infotext
        shown.append((image, None))
    return shown


def gallery_columns(count: int) -> int:
    """One image fills the gallery's width; more share it two to a row."""
    return 1 if count <= 1 else 2


def build_results(tab: str) -> ResultsArea:
    gallery = gr.Gallery(label="Output", elem_id=f"{tab}_gallery", columns=1, height=520, format="png",
                         object_fit="contain", preview=False, buttons=["download", "fullscreen"],
                         interactive=False, elem_classes=["results-gallery"])
    with gr.Row(elem_id=f"{tab}_results_actions", elem_classes=["results-actions"]):
        open_folder = gr.Button("Open folder", elem_id=f"{tab}_open_folder", size="sm", min_width=90, scale=1)
        download = gr.DownloadButton("Download", elem_id=f"{tab}_download", size="sm", min_width=90, scale=1)
        to_img2img = gr.Button("→ img2img", elem_id=f"{tab}_send_to_img2img", size="sm", min_width=90, scale=1)
        to_inpaint = gr.Button("→ inpaint", elem_id=f"{tab}_send_to_inpaint", size="sm", min_width=90, scale=1)
        to_extras = gr.Button("→ extras", elem_id=f"{tab}_send_to_extras", size="sm", min_width=90, scale=1)
    info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id=f"{tab}_info",
                      buttons=["copy"])
    notes = gr.Markdown("", elem_id=f"{tab}_notes")
    state = gr.State(Results())
    return ResultsArea(gallery, info, state, to_img2img, to_inpaint, to_extras, download, open_folder, notes)


def download_file(item: ResultItem | None) -> str | None:
    """A PNG with the image's parameters in the upload cache, which the page may always serve."""
    if item is None:
        return None
    from gradio import processing_utils, utils

    image = item.image.copy()
    if item.infotext:
        image.info["parameters"] = item.infotext
    name = item.path.stem if item.path is not None else "image"
    return processing_utils.save_pil_to_cache(image, utils.get_upload_folder(), name=name, format="png")


def show(area: ResultsArea, results: Results, notes: str = "", open_selected: bool = False) -> dict:
    """Outputs that display `results` with its selected image's parameters; `open_selected` shows that
    image large, with the others as thumbnails under it."""
    item = results.current()
    return {area.gallery: gr.Gallery(value=gallery_value(results), columns=gallery_columns(len(results.items)),
                                     selected_index=results.selected if open_selected else None),
            area.info: item.infotext if item else "", area.state: results,
            area.download: gr.DownloadButton(value=download_file(item)), area.notes: notes}


def _open_in_file_manager(folder: Path) -> bool:
    opener = {"Windows": None, "Darwin": "open"}.get(platform.system(), "xdg-open")
    try:
        if opener is None:
            os.startfile(folder)  # type: ignore[attr-defined]  # Windows only
        else:
            subprocess.Popen([opener, str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return True
    except (OSError, AttributeError):
        return False


def wire_results(ctx: UiContext, area: ResultsArea) -> None:
    def select(results: Results, event: gr.SelectData):
        results.selected = int(event.index)
        item = results.current()
        return (item.infotext if item else "", results, gr.DownloadButton(value=download_file(item)))

    area.gallery.select(select, inputs=[area.state], outputs=[area.info, area.state, area.download],
                        show_progress="hidden")

    def open_folder(results: Results) -> None:
        item = results.current()
        folder = item.path.parent if item is not None and item.path is not None else results.folder
        folder = folder or ctx.service.outputs_dir
        # Only for someone at the server's own screen; a LAN user gets the path instead.
        local = ctx.args is None or not (getattr(ctx.args, "listen", False) or getattr(ctx.args, "server_name", None))
        if not (local and folder.is_dir() and _open_in_file_manager(folder)):
            gr.Info(f"Output folder: {folder}")

    area.open_folder.click(open_folder, inputs=[area.state], show_progress="hidden")
