"""One set of bounds for the page and the API: a control's range is its request field's, and a value
typed out of range is refused by the request model with the API's message ("steps: Input should be
less than or equal to 150"), never clamped to the nearest end behind the user's back.

Gradio clamps twice: the page pulls a typed number into range when its box loses focus, and the
server refuses it with its own words ("Value 100000 is greater than maximum value 150.") and a
traceback. FieldSlider (components.py) skips the server's check; UNCLAMP_JS keeps
the page from clamping.
"""

from __future__ import annotations

from pydantic import BaseModel

UNCLAMPED_CLASS = "field-slider"

# Gradio's slider clamps in a `blur` listener on its number box; a capturing listener on the document
# runs first and keeps the event from reaching it. Dragging stays within the range as before.
UNCLAMP_JS = f"""() => {{
  document.addEventListener('blur', (e) => {{
    if (e.target instanceof Element && e.target.matches('.{UNCLAMPED_CLASS} input[type=number]')) {{
      e.stopImmediatePropagation();
    }}
  }}, true);
}}"""


def field_limits(model: type[BaseModel], name: str) -> tuple[float | None, float | None]:
    """(ge, le) of a request field: the one source of the UI's and the API's bounds."""
    low = high = None
    for rule in model.model_fields[name].metadata:
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    return low, high
