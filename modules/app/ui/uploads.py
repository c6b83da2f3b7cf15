"""Uploaded images decoded the way the API decodes an image field (modules/app/api/images.py).

Left to itself, Gradio opens an upload with PIL and a file that is not an image, or a
decompression bomb, fails inside Gradio: a toast full of temporary paths and component lists and a
traceback in the log. Decoded here, the page refuses the same files with the same words as the API
does for the same field ("init_images.0: image larger than 16777216 pixels"), as a refusal: one
log line.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from modules.app.api import images as api_images
from modules.app.ui.common import refusal

# More than the API accepts is enough to be refused; a larger file is not read any further.
_READ_LIMIT = api_images.MAX_IMAGE_BYTES + 1024


def decode_upload(path: str | Path, field: str) -> Image.Image:
    """The uploaded file as a loaded image; a gr.Error with the API's message for `field` otherwise."""
    with open(path, "rb") as file:
        raw = file.read(_READ_LIMIT)
    try:
        return api_images.decode_image_bytes(raw, field)
    except api_images.ImageFieldError as e:
        raise refusal(str(e)) from None


def decode_data(data: str, field: str) -> Image.Image:
    """base64 or a data URI (a pasted image), as the API takes it."""
    try:
        return api_images.decode_image(data, field)
    except api_images.ImageFieldError as e:
        raise refusal(str(e)) from None
