"""AUTOMATIC1111's infotext: the text saved with every image that lets anyone reproduce it.

    <prompt>
    Negative prompt: <negative prompt>          (line omitted when empty)
    Steps: 20, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, ...

Values containing a comma, colon or newline are JSON-quoted, as AUTOMATIC1111 does.
"""

from __future__ import annotations

import json
import re


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


# ---- reading it back --------------------------------------------------------------------------
# AUTOMATIC1111's expressions, kept identical so the same text parses the same way.
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")

# Keys that AUTOMATIC1111 fills in when a pasted infotext lacks them, so old images keep their meaning.
_DEFAULTS: dict[str, object] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Refiner switch by sampling steps": False,
}


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _split_prompt_lines(lines: list[str]) -> tuple[str, str]:
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt), "\n".join(negative)


def infotext_entries(text: str) -> dict[str, str]:
    """What an infotext holds, as written: `Prompt`, `Negative prompt` (when not empty) and every
    `key: value` of the last line (if it has at least three), quoted values unquoted."""
    *lines, last = text.strip().split("\n")
    if len(_RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative = _split_prompt_lines(lines)
    entries = {"Prompt": prompt, **({"Negative prompt": negative} if negative else {})}
    for key, value in _RE_PARAM.findall(last):
        entries[key] = unquote(value) if value[:1] == '"' and value[-1:] == '"' else value
    return entries


def parse_generation_parameters(text: str) -> dict[str, object]:
    """AUTOMATIC1111's parse_generation_parameters: the infotext's entries with `WxH` values split into
    `key-1`/`key-2`, and the defaults above for keys the text does not carry."""
    entries = infotext_entries(text)
    result: dict[str, object] = {"Prompt": entries.pop("Prompt"), "Negative prompt": entries.pop("Negative prompt", "")}
    for key, value in entries.items():
        size = _RE_IMAGESIZE.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    for key, value in _DEFAULTS.items():
        result.setdefault(key, value)
    if "First pass size-1" in result:
        _restore_old_hires_fix(result)
    _split_legacy_sampler(result)
    return result


def _restore_old_hires_fix(result: dict[str, object]) -> None:
    """Old hires-fix images stored `First pass size`; the final size is the hires target."""
    first_w, first_h = int(result.get("First pass size-1", 0)), int(result.get("First pass size-2", 0))
    if first_w and first_h and "Size-1" in result:
        result["Hires resize-1"], result["Hires resize-2"] = result["Size-1"], result["Size-2"]
        result["Size-1"], result["Size-2"] = str(first_w), str(first_h)


def _split_legacy_sampler(result: dict[str, object]) -> None:
    """`Sampler: DPM++ 2M Karras` (before schedule types existed) means DPM++ 2M with Karras."""
    from modules.sampling.registry import UnknownSamplerError, split_sampler_and_schedule

    sampler = result.get("Sampler")
    if not isinstance(sampler, str) or result.get("Schedule type") not in (None, "Automatic"):
        return
    try:
        spec, schedule = split_sampler_and_schedule(sampler)
    except UnknownSamplerError:
        return
    result["Sampler"], result["Schedule type"] = spec.name, schedule


# Infotext key -> request field, with the converter from the infotext's text.
INFOTEXT_FIELDS: dict[str, tuple[str, type]] = {
    "Prompt": ("prompt", str),
    "Negative prompt": ("negative_prompt", str),
    "Steps": ("steps", int),
    "Face restoration": ("restore_faces", lambda _name: True),  # the key is there only when faces were restored
    "Sampler": ("sampler_name", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Size-1": ("width", int),
    "Size-2": ("height", int),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Seed resize from-1": ("seed_resize_from_w", int),
    "Seed resize from-2": ("seed_resize_from_h", int),
    "Clip skip": ("clip_skip", int),
    "RNG": ("randn_source", str),
    "ENSD": ("eta_noise_seed_delta", int),
    "Eta": ("eta", float),
    "Denoising strength": ("denoising_strength", float),
    "Thresholding": ("thresholding", str),
}


def request_fields_from_infotext(text: str, known_fields: set[str] | None = None) -> dict[str, object]:
    """Request field values carried by an infotext (only those `known_fields` names, if given)."""
    parsed = parse_generation_parameters(text)
    fields: dict[str, object] = {}
    for key, (field, convert) in INFOTEXT_FIELDS.items():
        if key not in parsed or (known_fields is not None and field not in known_fields):
            continue
        try:
            fields[field] = convert(parsed[key])
        except (TypeError, ValueError):
            continue  # a damaged value is left to the request's default, as AUTOMATIC1111 does
    return fields
