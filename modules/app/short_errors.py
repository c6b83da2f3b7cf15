"""Error answers that quote what the client sent, kept short and always encodable.

A 422 repeats the invalid value back (FastAPI's `input`, and quotes of it in `msg` and `ctx`): a
50 MB prompt must not come back as a 50 MB answer, and a value JSON cannot carry (NaN, a lone UTF-16
surrogate) must not turn the answer itself into a 500.
"""

from __future__ import annotations

import math
import reprlib

ECHO_CHARS = 100  # how much of an invalid value a 422 repeats back
MESSAGE_CHARS = 1000  # longer messages are cut too: they may quote a value in another (escaped) form


def _cut(text: str, limit: int = ECHO_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _long_strings(value, depth: int = 0) -> list[str]:
    """The strings over ECHO_CHARS inside an echoed value (a field, or the whole body for a
    model-level error), which messages may quote too."""
    if isinstance(value, str):
        return [value] if len(value) > ECHO_CHARS else []
    if depth > 3 or not isinstance(value, (dict, list, tuple)):
        return []
    items = value.values() if isinstance(value, dict) else value
    return [text for item in items for text in _long_strings(item, depth + 1)]


def _short_echo(value):
    """An invalid value as a 422 repeats it: itself when small, else a prefix of its text."""
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, (dict, list, tuple)):
        # reprlib stops after a few items, levels and characters, and marks where it stopped with "..."
        short = reprlib.Repr()
        short.maxstring, short.maxother, short.maxlevel = ECHO_CHARS + 10, ECHO_CHARS, 3
        short.maxdict = short.maxlist = short.maxtuple = 50
        text = short.repr(value)
        return value if "..." not in text and len(text) <= MESSAGE_CHARS else _cut(text)
    return value


def _short_message(text: str, echoed: list[str]) -> str:
    for value in echoed:
        text = text.replace(value, _cut(value))
    return _cut(text, MESSAGE_CHARS)


def short_validation_errors(errors) -> list[dict]:
    """FastAPI's validation errors with every echoed value (`input`, and quotes of it in `msg` and
    `ctx`) cut to a short prefix: a 50 MB prompt must not come back as a 50 MB answer."""
    result = []
    for error in errors:
        echoed = _long_strings(error.get("input"))
        short = {**error, "msg": _short_message(str(error.get("msg", "")), echoed)}
        if "input" in error:
            short["input"] = _short_echo(error["input"])
        if isinstance(error.get("ctx"), dict):
            short["ctx"] = {key: _short_message(str(value), echoed) if isinstance(value, (str, Exception)) else value
                            for key, value in error["ctx"].items()}
        result.append(json_safe(short))
    return result


def json_safe(value):
    """`value` with what strict JSON cannot hold spelled out: non-finite floats as text, lone surrogates
    as `\\udXXX` escapes."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def short_message(text: str, echoed: list[str] = ()) -> str:
    """A message for a client: long quoted values cut, the whole capped, encodable."""
    return json_safe(_short_message(text, list(echoed)))
