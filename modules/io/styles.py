"""Prompt styles: named prompt/negative-prompt snippets kept in A1111's styles.csv format.

The file has the columns `name,prompt,negative_prompt`, is written as UTF-8 with a byte-order mark (`utf-8-sig`,
which spreadsheet programs need to read it as UTF-8), and older files with a `text` column instead of `prompt` still
load. A row whose name starts with `#` is a comment.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

log = logging.getLogger(__name__)

STYLE_FIELDS = ("name", "prompt", "negative_prompt")
PROMPT_PLACEHOLDER = "{prompt}"
MAX_STYLE_NAME_LENGTH = 200

# Letters and digits of any script, spaces and ordinary punctuation; no path separators, no control characters.
# The first character may not be `#` (the loader treats such rows as comments) nor a space (the reader drops it).
_STYLE_NAME = re.compile(r"^[\w(\[{<'\"!?.,;:@$%&*+=~^-][\w ()\[\]{}<>'\"!?.,;:@#$%&*+=~^-]*$")


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


class StyleNameError(ValueError):
    """A style name that may not be saved."""


def validate_style_name(name: str) -> str:
    if not name or len(name) > MAX_STYLE_NAME_LENGTH or not _STYLE_NAME.match(name) or name != name.strip():
        raise StyleNameError(f"invalid style name {name!r}: use letters, digits, spaces and punctuation "
                             f"(no / or \\, no control characters, at most {MAX_STYLE_NAME_LENGTH} characters)")
    return name


def load_styles(path: str | os.PathLike) -> dict[str, PromptStyle]:
    """Styles by name, in file order (a later row with the same name wins). A missing file has no styles."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        return _read_styles(path)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as e:
        _quarantine(path, e)
        return {}


def _read_styles(path: Path) -> dict[str, PromptStyle]:
    styles: dict[str, PromptStyle] = {}
    with open(path, encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file, skipinitialspace=True)
        if reader.fieldnames is not None and "name" not in reader.fieldnames:
            raise ValueError("no 'name' column")
        for row in reader:
            name = row.get("name") or ""
            if not name or name.startswith("#"):
                continue
            prompt = row["prompt"] if "prompt" in row else row.get("text", "")
            styles[name] = PromptStyle(name, prompt or "", row.get("negative_prompt") or "")
    return styles


def _quarantine(path: Path, error: BaseException) -> None:
    """A damaged styles file must not stop generations: it is moved aside (kept for the user to
    repair) and the server continues with no styles."""
    target_dir = path.parent / "tmp"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.bad"
    os.replace(path, target)
    log.warning("Styles file %s is unreadable (%s); moved to %s, continuing without styles", path, error, target)


def save_styles(path: str | os.PathLike, styles: Iterable[PromptStyle]) -> None:
    """Write the styles file atomically, keeping the previous file as `<path>.bak`."""
    path = Path(path)
    styles = list(styles)
    for style in styles:
        validate_style_name(style.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        shutil.copyfile(path, path.with_name(path.name + ".bak"))
    fd, temp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8-sig", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=STYLE_FIELDS)
            writer.writeheader()
            for style in styles:
                writer.writerow({"name": style.name, "prompt": style.prompt,
                                 "negative_prompt": style.negative_prompt})
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111's rule: `{prompt}` in the style is replaced by the prompt; otherwise the style is appended with ", "
    (both trimmed, and an empty side contributes nothing, so no dangling comma)."""
    if PROMPT_PLACEHOLDER in style_prompt:
        return style_prompt.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


class UnknownStyleError(ValueError):
    """A request names a style that styles.csv does not hold."""


def apply_styles(prompt: str, negative_prompt: str, style_names: Iterable[str],
                 styles: Mapping[str, PromptStyle]) -> tuple[str, str]:
    """Apply the named styles in order to both prompts."""
    for name in style_names:
        style = styles.get(name)
        if style is None:
            raise UnknownStyleError(f"unknown style {name!r}")
        prompt = merge_prompts(style.prompt, prompt)
        negative_prompt = merge_prompts(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def extract_style_text_from_prompt(style_text: str, prompt: str) -> tuple[bool, str]:
    """Undo merge_prompts for one style text: (whether the prompt has the style's shape, the prompt without it)."""
    stripped_prompt = prompt.strip()
    stripped_style = style_text.strip()
    if PROMPT_PLACEHOLDER in stripped_style:
        left, _, right = stripped_style.partition(PROMPT_PLACEHOLDER)
        fits = len(left) + len(right) <= len(stripped_prompt)
        if fits and stripped_prompt.startswith(left) and stripped_prompt.endswith(right):
            return True, stripped_prompt[len(left):len(stripped_prompt) - len(right)]
    elif stripped_prompt.endswith(stripped_style):
        rest = stripped_prompt[:len(stripped_prompt) - len(stripped_style)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


def _extract_one(style: PromptStyle, prompt: str, negative_prompt: str) -> tuple[bool, str, str]:
    if not style.prompt and not style.negative_prompt:
        return False, prompt, negative_prompt
    positive_matches, positive = extract_style_text_from_prompt(style.prompt, prompt)
    if not positive_matches:
        return False, prompt, negative_prompt
    negative_matches, negative = extract_style_text_from_prompt(style.negative_prompt, negative_prompt)
    if not negative_matches:
        return False, prompt, negative_prompt
    return True, positive, negative


def extract_styles_from_prompt(prompt: str, negative_prompt: str,
                               styles: Mapping[str, PromptStyle]) -> tuple[list[str], str, str]:
    """A1111's reverse of apply_styles (used when pasting infotext): peel off the outermost matching style
    repeatedly. Returns (style names in the order they were applied, prompt, negative prompt)."""
    remaining = list(styles.values())
    extracted: list[str] = []
    while True:
        for style in remaining:
            matched, new_prompt, new_negative = _extract_one(style, prompt, negative_prompt)
            if matched:
                prompt, negative_prompt = new_prompt, new_negative
                remaining.remove(style)
                extracted.append(style.name)
                break
        else:
            break
    return list(reversed(extracted)), prompt, negative_prompt
