"""Saving images as AUTOMATIC1111 lays them out.

    outputs/<kind>-images/<YYYY-MM-DD>/NNNNN-<pattern>.<ext>      (kind: txt2img, img2img, extras)
    outputs/<kind>-grids/<YYYY-MM-DD>/grid-NNNN.<ext>

NNNNN is the largest number already in the folder plus one. The infotext goes into the PNG
`parameters` text chunk (iTXt when it is not Latin-1), or EXIF UserComment for JPEG and WEBP.
Every file is written under a temporary name outside the outputs folder and renamed into place, so
a crash or a kill never leaves a partial image where users look.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from modules.io import png_encoding

_NUMBERED = re.compile(r"^(\d+)")
_INVALID_FILENAME_CHARS = '#<>:"/\\|?*\n\r\t'
_NON_LETTERS = re.compile(r"[\s' \"()\[\]]+")
_PATTERN_TOKEN = re.compile(r"\[(\w+)(?:<([^>]*)>)?\]")
_EXIF_USER_COMMENT = 0x9286
_EXIF_IFD = 0x8769
_counter_lock = threading.Lock()
_next_numbers: dict[Path, tuple[int, int]] = {}  # folder -> (next number, its mtime after our last save)

ImageFormat = Literal["png", "jpg", "webp"]


@dataclass(frozen=True)
class SaveOptions:
    outputs_dir: Path
    format: ImageFormat = "png"
    filename_pattern: str = ""  # empty: "[seed]" in dated folders, else "[seed]-[prompt_spaces]"
    directory_pattern: str = "[date]"
    save_to_dirs: bool = True
    add_number: bool = True
    jpeg_quality: int = 80
    webp_lossless: bool = False
    max_filename_length: int = 128
    temp_dir: Path | None = None  # same filesystem as outputs_dir, outside it


@dataclass(frozen=True)
class ImageFacts:
    """What file name patterns may refer to."""

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


def sanitize_filename_part(text: str, replace_spaces: bool = True, max_length: int = 128) -> str:
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate({ord(c): "_" for c in _INVALID_FILENAME_CHARS})
    text = text.lstrip()[:max_length].rstrip()
    return text.strip(". ")


def _prompt_words(prompt: str, max_words: int = 8) -> str:
    words = [w for w in _NON_LETTERS.split(prompt) if w] or ["empty"]
    return sanitize_filename_part(" ".join(words[:max_words]), replace_spaces=False)


def _hash(text: str, length: str | None) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[: int(length) if length else 8]


def _token_value(name: str, argument: str | None, facts: ImageFacts) -> str | None:
    values = {
        "seed": lambda: str(facts.seed),
        "seed_first": lambda: str(facts.seeds[0] if facts.seeds else facts.seed),
        "seed_last": lambda: str(facts.seeds[-1] if facts.seeds else facts.seed),
        "prompt": lambda: sanitize_filename_part(facts.prompt),
        "prompt_spaces": lambda: sanitize_filename_part(facts.prompt, replace_spaces=False),
        "prompt_words": lambda: _prompt_words(facts.prompt),
        "prompt_hash": lambda: _hash(facts.prompt, argument),
        "negative_prompt_hash": lambda: _hash(facts.negative_prompt, argument),
        "model_name": lambda: sanitize_filename_part(facts.model_name, replace_spaces=False),
        "model_hash": lambda: facts.model_hash,
        "sampler": lambda: sanitize_filename_part(facts.sampler, replace_spaces=False),
        "scheduler": lambda: sanitize_filename_part(facts.scheduler, replace_spaces=False),
        "steps": lambda: str(facts.steps),
        "cfg": lambda: f"{facts.cfg_scale:g}",
        "width": lambda: str(facts.width),
        "height": lambda: str(facts.height),
        "date": lambda: facts.now.strftime("%Y-%m-%d"),
        "datetime": lambda: facts.now.strftime(argument or "%Y%m%d%H%M%S"),
        "batch_number": lambda: str(facts.batch_number),
        "none": lambda: "",
    }
    producer = values.get(name.lower())
    return sanitize_filename_part(producer(), replace_spaces=False) if producer else None


def apply_pattern(pattern: str, facts: ImageFacts) -> str:
    """Replace each known [token] (and [token<argument>]); unknown tokens stay as written."""
    def replace(match: re.Match) -> str:
        value = _token_value(match.group(1), match.group(2), facts)
        return match.group(0) if value is None else value

    return _PATTERN_TOKEN.sub(replace, pattern)


def _next_number(folder: Path) -> int:
    """One more than the highest leading number in the folder. The scan takes 15 ms for 10,000 files,
    so it is repeated only when the folder changed since this process last saved into it (its
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


def _exif_with_comment(infotext: str) -> Image.Exif:
    # EXIF UserComment with the UNICODE character code, as piexif's UserComment.dump writes it.
    exif = Image.Exif()
    exif.get_ifd(_EXIF_IFD)[_EXIF_USER_COMMENT] = b"UNICODE\0" + infotext.encode("utf-16-be")
    return exif


def _encode(image: Image.Image, handle, image_format: ImageFormat, infotext: str | None, options: SaveOptions) -> None:
    if image_format == "png":
        handle.write(png_encoding.encode_png(image, infotext))
        return
    exif = _exif_with_comment(infotext) if infotext else None
    kwargs = {"exif": exif} if exif is not None else {}
    if image_format == "jpg":
        image.convert("RGB").save(handle, format="JPEG", quality=options.jpeg_quality, **kwargs)
    else:
        image.save(handle, format="WEBP", quality=options.jpeg_quality, lossless=options.webp_lossless, **kwargs)


def write_image_atomic(image: Image.Image, path: Path, infotext: str | None = None,
                       options: SaveOptions | None = None, encoded: bytes | None = None) -> Path:
    """Write to a temporary file (outside the outputs folder when a temp_dir is given), then rename.
    `encoded`: the file's bytes when the caller has already encoded the image in the path's format."""
    options = options or SaveOptions(outputs_dir=path.parent)
    image_format: ImageFormat = {"jpeg": "jpg"}.get(path.suffix.lower().lstrip("."), path.suffix.lower().lstrip("."))
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = options.temp_dir or path.parent
    temp_dir.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=".saving-", suffix=path.suffix, dir=temp_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            if encoded is not None:
                handle.write(encoded)
            else:
                _encode(image, handle, image_format, infotext, options)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def _folder(options: SaveOptions, subfolder: str, facts: ImageFacts) -> Path:
    folder = Path(options.outputs_dir) / subfolder
    if options.save_to_dirs:
        folder = folder / (apply_pattern(options.directory_pattern, facts) or facts.now.strftime("%Y-%m-%d"))
    return folder


def save_image(image: Image.Image, options: SaveOptions, kind: str, facts: ImageFacts, infotext: str | None,
               encoded: bytes | None = None) -> Path:
    """Save one generated image to outputs/<kind>-images and return its path (`encoded`: its bytes in
    `options.format`, when already made)."""
    folder = _folder(options, f"{kind}-images", facts)
    folder.mkdir(parents=True, exist_ok=True)
    pattern = options.filename_pattern or ("[seed]" if options.save_to_dirs else "[seed]-[prompt_spaces]")
    stem = apply_pattern(pattern, facts)
    with _counter_lock:
        number = _next_number(folder) if options.add_number else None
        if number is not None:
            stem = f"{number:05d}" + (f"-{stem}" if stem else "")
        stem = stem[: options.max_filename_length] or "image"
        path = write_image_atomic(image, folder / f"{stem}.{options.format}", infotext, options, encoded)
        if number is not None:
            _saved_number(folder, number)
        return path


def save_grid(grid: Image.Image, options: SaveOptions, kind: str, facts: ImageFacts, infotext: str | None) -> Path:
    """Save a grid as outputs/<kind>-grids/<date>/grid-NNNN.<ext>."""
    folder = _folder(options, f"{kind}-grids", facts)
    folder.mkdir(parents=True, exist_ok=True)
    with _counter_lock:
        number = max([int(m.group(1)) for p in folder.glob("grid-*") if (m := re.match(r"grid-(\d+)", p.name))],
                     default=-1) + 1
        return write_image_atomic(grid, folder / f"grid-{number:04d}.{options.format}", infotext, options)


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
