"""Saving images as AUTOMATIC1111 lays them out: `<kind>-images/<YYYY-MM-DD>/NNNNN-<seed>.png`.

The infotext goes into the PNG `parameters` text chunk (iTXt when it is not Latin-1). Files are
written to a temporary name and renamed, so a crash never leaves a half-written image.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import threading
from pathlib import Path

from PIL import Image, PngImagePlugin

_NUMBERED = re.compile(r"^(\d+)")
_counter_lock = threading.Lock()


def _next_number(folder: Path) -> int:
    highest = -1
    for entry in folder.iterdir():
        match = _NUMBERED.match(entry.name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def png_info(infotext: str | None) -> PngImagePlugin.PngInfo | None:
    if not infotext:
        return None
    info = PngImagePlugin.PngInfo()
    try:
        infotext.encode("latin-1")
        info.add_text("parameters", infotext)
    except UnicodeEncodeError:
        info.add_itxt("parameters", infotext)
    return info


def save_png_atomic(image: Image.Image, path: Path, infotext: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG", pnginfo=png_info(infotext))
    os.replace(tmp, path)
    return path


def save_generated_image(image: Image.Image, outputs_dir: Path, kind: str, seed: int, infotext: str,
                         today: _dt.date | None = None) -> Path:
    """Save to outputs_dir/<kind>-images/<date>/NNNNN-<seed>.png and return the path."""
    folder = Path(outputs_dir) / f"{kind}-images" / (today or _dt.date.today()).strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    with _counter_lock:
        path = folder / f"{_next_number(folder):05d}-{seed}.png"
        return save_png_atomic(image, path, infotext)


def read_parameters(path_or_image) -> str | None:
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return image.info.get("parameters")
