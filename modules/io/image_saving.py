"""Saving images as AUTOMATIC1111 lays them out, with its default file names.

    outputs/<kind>-images/<YYYY-MM-DD>/NNNNN-<seed>.png      (kind: txt2img, img2img, extras)
    outputs/<kind>-grids/<YYYY-MM-DD>/grid-NNNN.png

NNNNN is the largest number already in the folder plus one. The infotext goes into the PNG
`parameters` text chunk (iTXt when it is not Latin-1). Every file is written under a temporary name
in the `tmp` folder beside outputs/ and renamed into place, so a crash or a kill never leaves a
partial image where users look; the server removes such leftovers when it starts.

Reading is wider than writing: images made elsewhere may carry their infotext in EXIF (JPEG, WEBP).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from PIL import Image

from modules.io import png_encoding

_NUMBERED = re.compile(r"^(\d+)")
_EXIF_USER_COMMENT = 0x9286
_EXIF_IFD = 0x8769
_counter_lock = threading.Lock()
_next_numbers: dict[Path, tuple[int, int]] = {}  # folder -> (next number, its mtime after our last save)


def temp_dir_for(outputs_dir: Path) -> Path:
    """Where files are written before they are renamed into `outputs_dir`: beside it, never in it (a
    kill mid-write leaves nothing where users look), on the same filesystem (so the rename is atomic).
    The server empties it of leftovers when it starts."""
    return Path(outputs_dir).parent / "tmp"


@dataclass(frozen=True)
class SaveOptions:
    outputs_dir: Path
    temp_dir: Path | None = None  # None: temp_dir_for(outputs_dir)
    format: ClassVar[str] = "png"  # the only format saved: PNG carries the infotext losslessly

    @property
    def temp_folder(self) -> Path:
        return Path(self.temp_dir) if self.temp_dir is not None else temp_dir_for(self.outputs_dir)


@dataclass(frozen=True)
class ImageFacts:
    """What is known of an image when it is saved; its file name takes the seed, its folder the date."""

    seed: int
    prompt: str = ""
    negative_prompt: str = ""
    model_name: str = ""
    model_hash: str = ""
    sampler: str = ""
    scheduler: str = ""
    steps: int = 0
    cfg_scale: float = 0.0
    width: int = 0
    height: int = 0
    batch_number: int = 0
    seeds: tuple[int, ...] = field(default=())
    now: _dt.datetime = field(default_factory=_dt.datetime.now)


def _next_number(folder: Path) -> int:
    """One more than the highest leading number in the folder. The scan grows with the folder, so it
    is repeated only when the folder changed since this process last saved into it (its
    modification time says so: other programs' files, deletions)."""
    known = _next_numbers.get(folder)
    if known is not None and known[1] == folder.stat().st_mtime_ns:
        return known[0]
    highest = -1
    for entry in folder.iterdir():
        match = _NUMBERED.match(entry.name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def _saved_number(folder: Path, number: int) -> None:
    _next_numbers[folder] = (number + 1, folder.stat().st_mtime_ns)


def write_image_atomic(image: Image.Image, path: Path, infotext: str | None = None,
                       options: SaveOptions | None = None, encoded: bytes | None = None) -> Path:
    """Write a PNG to a temporary file (in the options' temp folder, else beside `path`), then rename.
    `encoded`: the file's bytes when the caller has already encoded the image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = options.temp_folder if options is not None else path.parent
    temp_dir.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=".saving-", suffix=path.suffix, dir=temp_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(encoded if encoded is not None else png_encoding.encode_png(image, infotext))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def _folder(options: SaveOptions, subfolder: str, facts: ImageFacts) -> Path:
    return Path(options.outputs_dir) / subfolder / facts.now.strftime("%Y-%m-%d")


def save_image(image: Image.Image, options: SaveOptions, kind: str, facts: ImageFacts, infotext: str | None,
               encoded: bytes | None = None) -> Path:
    """Save one image as outputs/<kind>-images/<date>/NNNNN-<seed>.png and return its path (`encoded`:
    its PNG bytes, when already made)."""
    folder = _folder(options, f"{kind}-images", facts)
    folder.mkdir(parents=True, exist_ok=True)
    with _counter_lock:
        number = _next_number(folder)
        path = write_image_atomic(image, folder / f"{number:05d}-{facts.seed}.png", infotext, options, encoded)
        _saved_number(folder, number)
        return path


def save_grid(grid: Image.Image, options: SaveOptions, kind: str, facts: ImageFacts, infotext: str | None) -> Path:
    """Save a grid as outputs/<kind>-grids/<date>/grid-NNNN.png."""
    folder = _folder(options, f"{kind}-grids", facts)
    folder.mkdir(parents=True, exist_ok=True)
    with _counter_lock:
        number = max([int(m.group(1)) for p in folder.glob("grid-*") if (m := re.match(r"grid-(\d+)", p.name))],
                     default=-1) + 1
        return write_image_atomic(grid, folder / f"grid-{number:04d}.png", infotext, options)


def image_grid(images: list[Image.Image], rows: int | None = None) -> Image.Image:
    """Images on a grid of about sqrt(n) rows, as AUTOMATIC1111's default (n_rows -1) lays them."""
    if not images:
        raise ValueError("no images for a grid")
    rows = rows or max(1, min(len(images), round(math.sqrt(len(images)))))
    cols = math.ceil(len(images) / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), "black")
    for index, image in enumerate(images):
        grid.paste(image, ((index % cols) * width, (index // cols) * height))
    return grid


def read_parameters(path_or_image) -> str | None:
    """The infotext of an image: PNG text chunk, else EXIF UserComment (JPEG/WEBP), else None."""
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    if "parameters" in image.info:
        return image.info["parameters"]
    comment = image.getexif().get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
    if isinstance(comment, bytes):
        return decode_user_comment(comment)
    return comment if isinstance(comment, str) else None


def decode_user_comment(raw: bytes) -> str:
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\0":
        # piexif writes big-endian; some writers use little-endian with a byte-order mark
        if body[:2] == b"\xff\xfe":
            return body[2:].decode("utf-16-le", errors="replace")
        return body.decode("utf-16-be", errors="replace")
    if prefix in (b"ASCII\0\0\0", b"\0" * 8):
        return body.decode("ascii", errors="replace").rstrip("\0")
    return raw.decode("utf-8", errors="replace")
