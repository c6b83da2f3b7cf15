"""Images in API payloads: base64 (or data URIs) in, base64 PNG with infotext out.

Decoding is bounded (bytes and pixels) and every failure names the request field, so a bad image
is a 422 before any work is queued. URLs are refused: fetching them would let a client make the
server reach into its own network.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from modules.io import png_encoding

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096


class ImageFieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _base64_payload(data: str, field: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise ImageFieldError(field, "an image is required (base64)")
    if data.startswith(("http://", "https://")):
        raise ImageFieldError(field, "image URLs are not accepted; send the image as base64")
    if data.startswith("data:"):
        _, sep, data = data.partition(";base64,")
        if not sep:
            raise ImageFieldError(field, "a data URI must be base64-encoded")
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ImageFieldError(field, f"image larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ImageFieldError(field, "invalid base64") from None


def decode_image(data: str, field: str) -> Image.Image:
    """A fully loaded image from base64; ImageFieldError for anything that is not a sane image."""
    return decode_image_bytes(_base64_payload(data, field), field)


def decode_image_bytes(raw: bytes, field: str) -> Image.Image:
    """A fully loaded image from a file's bytes (an upload), with the checks and words of `decode_image`."""
    if len(raw) > MAX_IMAGE_BYTES:
        raise ImageFieldError(field, f"image larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ImageFieldError(field, f"image of {image.width}x{image.height} pixels is larger than "
                                             f"{MAX_IMAGE_PIXELS} pixels")
            image.load()
    except ImageFieldError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow refuses far larger images while reading the header, before their size is known here.
        raise ImageFieldError(field, f"image larger than {MAX_IMAGE_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageFieldError(field, f"not a readable image ({type(e).__name__})") from None
    if image.width < 1 or image.height < 1:
        raise ImageFieldError(field, "empty image")
    return image


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    """base64 PNG carrying `infotext` in its `parameters` text chunk, as AUTOMATIC1111 returns it."""
    return as_base64(png_encoding.encode_png(image, infotext))


def as_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
