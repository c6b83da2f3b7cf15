"""AUTOMATIC1111's infotext: the text saved with every image that lets anyone reproduce it.

    <prompt>
    Negative prompt: <negative prompt>          (line omitted when empty)
    Steps: 20, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, ...

Values containing a comma, colon or newline are JSON-quoted, as AUTOMATIC1111 does.
"""

from __future__ import annotations

import json


def quote(value) -> str:
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_number(value: float) -> str:
    """7.0 -> "7", 7.5 -> "7.5": how AUTOMATIC1111 prints CFG scale and similar floats."""
    return str(int(value)) if float(value).is_integer() else str(value)


def create_infotext(prompt: str, negative_prompt: str, params: dict[str, object]) -> str:
    """`params` in the order they should appear; None values are left out."""
    line = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()
