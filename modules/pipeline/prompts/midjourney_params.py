"""Midjourney-style parameters typed at the end of a prompt (`a cat --ar 16:9 --seed 5 --no text, frame`).

Parameters start at the first `--name` (or `—name`: phones turn `--` into an em dash) that follows whitespace and
run to the end of the prompt; everything there must be a known parameter with a valid value. `x--y` inside a word,
or a dash followed by a space (`a dog — running`), is ordinary prompt text.

How each parameter maps onto a txt2img request:
  --ar W:H / --aspect W:H  width x height with that ratio and about the model's native area (native_size²),
                           each side rounded to a multiple of 8 (512, 16:9 -> 680x384)
  --w N, --h N             width / height, 64-2048, rounded to a multiple of 8; with --ar the other side follows
                           the ratio
  --seed N                 seed, 0-4294967295
  --no a, b                appended to the negative prompt
  --chaos N / --c N        0-100: variation strength N/100 with a variation seed derived from --seed (seed + 1;
                           random when there is no --seed), so images of one request drift apart by N%
  --stop N                 10-100: sampling stops at N% of the steps and that latent is decoded
  --q N / --quality N      .25, .5, 1 or 2: multiplies the step count
  --s N / --stylize N      0-1000: CFG scale 4 + 3·log10(1 + N/10), to the UI's 0.5 step: 0 -> 4, 100 (the
                           default) -> 7, 1000 -> 10. Logarithmic because Midjourney's scale is: most of the
                           visible change happens in the low hundreds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from modules.io.generation_request import Txt2ImgRequest

MIN_SIDE = 64
MAX_SIDE = 2048
MAX_SEED = 4294967295
QUALITY_VALUES = (0.25, 0.5, 1.0, 2.0)

_ALIASES = {"ar": "ar", "aspect": "ar", "w": "w", "h": "h", "seed": "seed", "no": "no", "chaos": "chaos",
            "c": "chaos", "stop": "stop", "q": "q", "quality": "q", "s": "s", "stylize": "s"}
_DASHES = r"(?:--|\u2014|\u2013)"  # `--`, em dash, en dash (phones' replacements for `--`)
_PARAMS_START = re.compile(r"(?:^|(?<=\s))" + _DASHES + r"(?=[A-Za-z])")
_PARAM = re.compile(_DASHES + r"([A-Za-z]+)(.*?)(?=\s" + _DASHES + r"[A-Za-z]|\s*$)", re.S)


class MidjourneyParamError(ValueError):
    """A parameter that is unknown or has a bad value; the message names it as typed."""


@dataclass(frozen=True)
class MidjourneyParams:
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    no: tuple[str, ...] = ()
    chaos: int | None = None
    stop: int | None = None
    quality: float | None = None
    stylize: int | None = None


def round_to_8(value: float) -> int:
    return max(MIN_SIDE, int(round(value / 8)) * 8)


def size_for_aspect(ratio_w: int, ratio_h: int, native_size: int) -> tuple[int, int]:
    """(width, height) with the ratio and about native_size² pixels, sides multiples of 8 within 64-2048."""
    ratio = ratio_w / ratio_h
    width = math.sqrt(native_size * native_size * ratio)
    height = math.sqrt(native_size * native_size / ratio)
    shrink = min(1.0, MAX_SIDE / max(width, height))  # too long a side: keep the ratio, give up area
    width, height = width * shrink, height * shrink
    if min(width, height) < MIN_SIDE - 4:
        raise MidjourneyParamError(f"--ar {ratio_w}:{ratio_h}: aspect ratio too extreme for {MIN_SIDE}-{MAX_SIDE} px")
    return min(MAX_SIDE, round_to_8(width)), min(MAX_SIDE, round_to_8(height))


def cfg_for_stylize(stylize: int) -> float:
    return round((4 + 3 * math.log10(1 + stylize / 10)) * 2) / 2


def _whole_number(typed: str, value: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d+", value):
        raise MidjourneyParamError(f"{typed}: expected a whole number from {low} to {high}")
    number = int(value)
    if not low <= number <= high:
        raise MidjourneyParamError(f"{typed}: must be from {low} to {high}")
    return number


def _aspect(typed: str, value: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\s*:\s*(\d+)", value)
    if not match:
        raise MidjourneyParamError(f"{typed}: expected W:H with whole numbers")
    ratio_w, ratio_h = int(match.group(1)), int(match.group(2))
    if ratio_w == 0 or ratio_h == 0:
        raise MidjourneyParamError(f"{typed}: both sides of the ratio must be above 0")
    return ratio_w, ratio_h


def _quality(typed: str, value: str) -> float:
    try:
        quality = float(value)
    except ValueError:
        quality = None
    if quality not in QUALITY_VALUES:
        raise MidjourneyParamError(f"{typed}: expected one of .25, .5, 1, 2")
    return quality


def parse_midjourney_params(prompt: str, native_size: int) -> tuple[str, MidjourneyParams]:
    """(prompt without the parameters, the parameters). Raises MidjourneyParamError for unknown/bad ones."""
    start = _PARAMS_START.search(prompt)
    if start is None:
        return prompt, MidjourneyParams()
    clean_prompt = prompt[:start.start()].rstrip()
    values: dict[str, object] = {}
    typed_names: dict[str, str] = {}
    aspect: tuple[int, int] | None = None
    for match in _PARAM.finditer(prompt, start.start()):
        name, value = match.group(1), match.group(2).strip()
        typed = f"--{name} {value}".rstrip()
        key = _ALIASES.get(name.lower())
        if key is None:
            raise MidjourneyParamError(f"--{name}: unknown parameter")
        if key in typed_names:
            raise MidjourneyParamError(f"--{name}: given twice (also as {typed_names[key]})")
        typed_names[key] = f"--{name}"
        if key == "ar":
            aspect = _aspect(typed, value)
        elif key in ("w", "h"):
            values[key] = round_to_8(_whole_number(typed, value, MIN_SIDE, MAX_SIDE))
        elif key == "seed":
            values["seed"] = _whole_number(typed, value, 0, MAX_SEED)
        elif key == "no":
            items = tuple(item.strip() for item in value.split(",") if item.strip())
            if not items:
                raise MidjourneyParamError(f"--{name}: expected what to leave out, e.g. --no text, frame")
            values["no"] = items
        elif key == "chaos":
            values["chaos"] = _whole_number(typed, value, 0, 100)
        elif key == "stop":
            values["stop"] = _whole_number(typed, value, 10, 100)
        elif key == "q":
            values["quality"] = _quality(typed, value)
        elif key == "s":
            values["stylize"] = _whole_number(typed, value, 0, 1000)

    width, height = values.pop("w", None), values.pop("h", None)
    if aspect is not None:
        if width is not None and height is not None:
            raise MidjourneyParamError(f"{typed_names['ar']}: cannot be combined with both --w and --h")
        if width is not None:
            height = min(MAX_SIDE, round_to_8(width * aspect[1] / aspect[0]))
        elif height is not None:
            width = min(MAX_SIDE, round_to_8(height * aspect[0] / aspect[1]))
        else:
            width, height = size_for_aspect(aspect[0], aspect[1], native_size)
    return clean_prompt, MidjourneyParams(width=width, height=height, **values)


def merge_negative_prompt(negative_prompt: str, items: tuple[str, ...]) -> str:
    return ", ".join(part for part in (negative_prompt.strip(), ", ".join(items)) if part)


def to_request_fields(params: MidjourneyParams, base_steps: int, negative_prompt: str = "") -> dict[str, object]:
    """Txt2ImgRequest field updates for the parameters that were given (others are left out).

    `negative_prompt` is the request's current negative prompt; --no items are appended to it.
    """
    fields: dict[str, object] = {}
    if params.width is not None:
        fields["width"] = params.width
    if params.height is not None:
        fields["height"] = params.height
    if params.seed is not None:
        fields["seed"] = params.seed
    if params.no:
        fields["negative_prompt"] = merge_negative_prompt(negative_prompt, params.no)
    if params.quality is not None:
        fields["steps"] = max(1, round(base_steps * params.quality))
    if params.chaos is not None:
        fields["subseed"] = (params.seed + 1) % (MAX_SEED + 1) if params.seed is not None else -1
        fields["subseed_strength"] = params.chaos / 100
    if params.stylize is not None:
        fields["cfg_scale"] = cfg_for_stylize(params.stylize)
    if params.stop is not None:
        fields["stop_at_fraction"] = params.stop / 100
    return fields


def apply_to_request(request: Txt2ImgRequest, native_size: int) -> Txt2ImgRequest:
    """The request with its prompt's parameters read into fields and taken out of the prompt; `--ar`/`--w`/`--h`
    sizes are kept multiples of 8 inside the request's bounds. Raises MidjourneyParamError."""
    prompt, params = parse_midjourney_params(request.prompt, native_size)
    fields = to_request_fields(params, request.steps, request.negative_prompt)
    merged = {**request.model_dump(exclude={"infotext"}), **fields, "prompt": prompt}
    if "width" in fields or "height" in fields:
        merged["width"] = min(max(int(merged["width"]) // 8 * 8, MIN_SIDE), MAX_SIDE)
        merged["height"] = min(max(int(merged["height"]) // 8 * 8, MIN_SIDE), MAX_SIDE)
    return type(request).model_validate(merged)
