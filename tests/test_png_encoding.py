"""The parallel PNG writer: files any decoder reads back pixel for pixel, with the infotext chunk."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from modules.io.png_encoding import encode_png, encode_pngs


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def _photo(width: int, height: int, mode: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((width, height)).convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("size", [(1, 1), (7, 3), (512, 512), (1024, 768)])
def test_pixels_come_back_exactly(mode, size):
    image = _photo(*size, mode)
    data = encode_png(image)
    back = Image.open(io.BytesIO(data))
    assert back.mode == mode and back.size == size
    assert np.array_equal(np.asarray(back), np.asarray(image))
    # The zlib stream, split into pieces compressed on several threads, is one valid stream with a
    # correct Adler-32 (Pillow does not check it; zlib does).
    idat = b"".join(body for kind, body in _chunks(data) if kind == b"IDAT")
    assert len(zlib.decompress(idat)) == size[1] * (size[0] * len(mode) + 1)


def test_large_images_compress_about_as_well_as_pillow():
    image = _photo(1024, 1024, "RGB")
    pillow = io.BytesIO()
    image.save(pillow, format="PNG", compress_level=1)
    assert len(encode_png(image)) < 1.15 * len(pillow.getvalue())


@pytest.mark.parametrize("text, chunk", [("a red star\nSteps: 20, Seed: 1", b"tEXt"),
                                         ("ein Stern \u2605 \u00fcber \u6771\u4eac\nSteps: 20", b"iTXt")])
def test_infotext_is_read_back_as_parameters(text, chunk):
    data = encode_png(_photo(64, 64, "RGB"), text)
    assert Image.open(io.BytesIO(data)).info["parameters"] == text
    assert [kind for kind, _ in _chunks(data)] == [b"IHDR", chunk, b"IDAT", b"IEND"]


def test_other_modes_are_written_as_rgb():
    image = _photo(32, 32, "RGB").convert("P")
    back = Image.open(io.BytesIO(encode_png(image)))
    assert back.mode == "RGB"
    assert np.array_equal(np.asarray(back), np.asarray(image.convert("RGB")))


def test_a_batch_encodes_to_the_same_files_as_one_by_one():
    images = [_photo(512, 512, "RGB"), _photo(64, 48, "L"), _photo(300, 200, "RGBA")]
    texts = ["first", None, "third \u2605"]
    assert encode_pngs(images, texts) == [encode_png(image, text) for image, text in zip(images, texts)]
