"""PNG files written with the image data compressed on several threads at once.

Pillow compresses a PNG on one thread, at zlib level 6 by default, which on a small server CPU takes
longer than a fast GPU takes to make the image (bench/RESULTS.md, figures behind choices).
No maintained Python package writes PNG in parallel, so this module does it the way pigz does gzip:
the filtered rows are cut into pieces, each piece is deflated on its own thread (zlib-ng releases the
GIL), primed with the 32 KiB before it so compression barely suffers, ended on a byte boundary with
a sync flush, and the pieces are joined into one zlib stream. The result is an ordinary PNG that
any decoder reads; the infotext goes in a `parameters` text chunk exactly as Pillow writes it.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
from zlib_ng import zlib_ng

# zlib-ng's level 2 (deflate_fast with SIMD match finding) is faster than zlib's level 1 and writes smaller
# files than zlib's default level (bench/RESULTS.md, fourth series). The stream is ordinary deflate: every
# PNG decoder reads it.
LEVEL = 2
_MIN_PIECE = 128 * 1024  # smaller pieces cost more in thread hand-off and priming than they save
_WINDOW = 32 * 1024  # deflate's window: each piece is primed with this much of what precedes it
_MODES = {"RGB": (8, 2, 3), "RGBA": (8, 6, 4), "L": (8, 0, 1)}  # bit depth, PNG colour type, channels
_pool: ThreadPoolExecutor | None = None


def _threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_threads(), thread_name_prefix="png")
    return _pool


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib_ng.crc32(data, zlib_ng.crc32(kind)))


def _text_chunk(key: str, text: str) -> bytes:
    """tEXt when the text is Latin-1, else iTXt in UTF-8: what Pillow's PngInfo.add_text/add_itxt write."""
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + text.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8"))


def _filtered_rows(pixels: np.ndarray) -> bytes:
    """Every row with PNG filter 2 ("Up": difference from the row above), the filter byte first."""
    height = pixels.shape[0]
    flat = pixels.reshape(height, -1)
    rows = np.empty((height, flat.shape[1] + 1), dtype=np.uint8)
    rows[:, 0] = 2
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG wants
    return rows.tobytes()


def _deflate_piece(data: memoryview, start: int, end: int, last: bool) -> bytes:
    primer = bytes(data[max(0, start - _WINDOW):start])
    compressor = zlib_ng.compressobj(LEVEL, zlib_ng.DEFLATED, -15, zdict=primer) if primer else \
        zlib_ng.compressobj(LEVEL, zlib_ng.DEFLATED, -15)
    out = compressor.compress(data[start:end])
    return out + compressor.flush(zlib_ng.Z_FINISH if last else zlib_ng.Z_SYNC_FLUSH)


def _deflate_jobs(data: bytes) -> list[tuple[memoryview, int, int, bool]]:
    pieces = max(1, min(_threads() * 2, len(data) // _MIN_PIECE))
    bounds = [len(data) * i // pieces for i in range(pieces + 1)]
    view = memoryview(data)
    return [(view, bounds[i], bounds[i + 1], i == pieces - 1) for i in range(pieces)]


def _zlib_stream(data: bytes, bodies: list[bytes]) -> bytes:
    header = b"\x78\x5e"  # deflate, 32 KiB window, "fast" compression flag; the check bits make it % 31 == 0
    return header + b"".join(bodies) + struct.pack(">I", zlib_ng.adler32(data))


def _png(image: Image.Image, infotext: str | None, idat: bytes) -> bytes:
    depth, colour_type, _ = _MODES[image.mode]
    header = struct.pack(">IIBBBBB", image.width, image.height, depth, colour_type, 0, 0, 0)
    parts = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header)]
    if infotext:
        parts.append(_text_chunk("parameters", infotext))
    parts += [_chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    return b"".join(parts)


def encode_pngs(images: list[Image.Image], infotexts: list[str | None] | None = None) -> list[bytes]:
    """PNG bytes of each image (RGB, RGBA or L; anything else is converted to RGB), the infotext, when
    given, in a `parameters` text chunk. The pieces of all the images share the thread pool, so a
    batch takes little longer than its largest image would alone on one thread per piece."""
    images = [image if image.mode in _MODES else image.convert("RGB") for image in images]
    infotexts = infotexts or [None] * len(images)
    raws = [_filtered_rows(np.asarray(image).reshape(image.height, image.width, -1)) for image in images]
    jobs = [_deflate_jobs(raw) for raw in raws]
    if sum(len(j) for j in jobs) == 1:
        bodies = [[_deflate_piece(*jobs[0][0])]]
    else:
        futures = [[_executor().submit(_deflate_piece, *job) for job in image_jobs] for image_jobs in jobs]
        bodies = [[f.result() for f in image_futures] for image_futures in futures]
    return [_png(image, text, _zlib_stream(raw, body))
            for image, text, raw, body in zip(images, infotexts, raws, bodies)]


def encode_png(image: Image.Image, infotext: str | None = None) -> bytes:
    """One image as PNG bytes (see encode_pngs)."""
    return encode_pngs([image], [infotext])[0]
