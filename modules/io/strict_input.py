"""The base of every model that reads input from a client: finite numbers and encodable text only.

JSON as Python reads it admits `NaN`, `Infinity` and lone UTF-16 surrogates (`"\\ud800"`). Pydantic
lets non-finite floats through range checks by default, and a lone surrogate is a valid `str` that
fails later, when the prompt is tokenised or written into a PNG. Both are refused here, with the
field named, so they are a 422 and never a failed job.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class LoneSurrogateError(ValueError):
    pass


def _is_encodable(text: str) -> bool:
    if text.isascii():  # known without a scan: base64 images, most prompts
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def find_lone_surrogate(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or dict key) in `value` that UTF-8 cannot encode."""
    if isinstance(value, str):
        return None if _is_encodable(value) else (path or "value")
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and not _is_encodable(key):
                return path or "(a key)"
            if (found := find_lone_surrogate(item, where)) is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if (found := find_lone_surrogate(item, f"{path}.{index}" if path else str(index))) is not None:
                return found
    return None


def check_encodable(data: Any) -> None:
    if (where := find_lone_surrogate(data)) is not None:
        raise LoneSurrogateError(f"{where}: text contains a lone UTF-16 surrogate, which is not valid Unicode")


class StrictInput(BaseModel):
    """Non-finite floats are refused by every float field; text must be valid Unicode."""

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data):
        check_encodable(data)
        return data
