"""From what the user typed to what is sampled: styles, `#` comments and Midjourney-style parameters.

    request -> apply styles -> strip comments -> read `--ar 16:9 --seed 5 ...` -> request to run

The result is a new request; the typed one is never changed.
"""

from __future__ import annotations

from pathlib import Path

from modules.pipeline import midjourney_params
from modules.pipeline import prompt_parser
from modules.io import styles
from modules.io.generation_request import Txt2ImgRequest


def prepare_request(request: Txt2ImgRequest, native_size: int, styles_file: Path | None = None) -> Txt2ImgRequest:
    prompt, negative = request.prompt, request.negative_prompt
    if request.styles:
        known = styles.load_styles(styles_file) if styles_file is not None and Path(styles_file).is_file() else {}
        prompt, negative = styles.apply_styles(prompt, negative, request.styles, known)
    prompt = prompt_parser.strip_comments(prompt)
    negative = prompt_parser.strip_comments(negative)
    prompt, params = midjourney_params.parse_midjourney_params(prompt, native_size)
    fields = midjourney_params.to_request_fields(params, request.steps, negative)
    fields.setdefault("negative_prompt", negative)
    merged = {**request.model_dump(exclude={"infotext"}), **fields, "prompt": prompt}
    if "width" in fields or "height" in fields:
        # `--ar`/`--w`/`--h` choose the size; keep multiples of 8 inside the request's bounds
        merged["width"] = min(max(int(merged["width"]) // 8 * 8, 64), 2048)
        merged["height"] = min(max(int(merged["height"]) // 8 * 8, 64), 2048)
    return type(request).model_validate(merged)
