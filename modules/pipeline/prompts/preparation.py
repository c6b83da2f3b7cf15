"""From what the user typed to the request that is sampled: styles, `#` comments, prompt parameters.

    request -> apply styles -> strip comments -> [read `--ar 16:9 --seed 5 ...`] -> request to run

A job does the first two steps itself; the Midjourney-style parameters are a before-process hook
(builtin_hooks). `prepare_request` does all three, for whoever needs the request as a job will
run it before there is a job (the work bound at submission, variations of a finished image).
Each step gives a new request; the typed one is never changed.
"""

from __future__ import annotations

from pathlib import Path

from modules.io import styles
from modules.io.generation_request import Txt2ImgRequest
from modules.pipeline.prompts import midjourney_params, parser


def written_request(request: Txt2ImgRequest, styles_file: Path | None = None) -> Txt2ImgRequest:
    """The request with its styles applied and the prompts' `#` comments removed."""
    prompt, negative = request.prompt, request.negative_prompt
    if request.styles:
        known = styles.load_styles(styles_file) if styles_file is not None and Path(styles_file).is_file() else {}
        prompt, negative = styles.apply_styles(prompt, negative, request.styles, known)
    fields = {"prompt": parser.strip_comments(prompt), "negative_prompt": parser.strip_comments(negative)}
    return type(request).model_validate({**request.model_dump(exclude={"infotext"}), **fields})


def prepare_request(request: Txt2ImgRequest, native_size: int, styles_file: Path | None = None) -> Txt2ImgRequest:
    """The request as a job runs it: styles, comments, then the prompt's Midjourney-style parameters."""
    return midjourney_params.apply_to_request(written_request(request, styles_file), native_size)
