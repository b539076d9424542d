"""An image's size read from its header, and the pixel bound every reader checks before decoding.

Why: a 875 KB PNG can declare 30000x30000 pixels (a zlib stream of zeros); OpenCV decoded it into
~5.5 GB before anything looked at the size, and only its own 2^30-pixel cap stopped larger ones.
Every reader (training data, ``predict --images``, ``eval --pred-dir``, video image folders, the
HTTP service) asks :func:`check_pixels` first, which reads only the header: PNG's IHDR and JPEG's
start-of-frame by hand (a few bytes each), other formats through Pillow's lazy ``Image.open``
(which parses the header and decodes nothing).

The bound is one number per process: ``--max-pixels`` (the ``max_pixels`` row of ``cli/options.py``)
sets it with :func:`set_max_pixels`, which also exports ``CITYSEG_MAX_PIXELS`` so worker
processes (DataLoader, Ray actors started from this process) apply the same bound.
"""
from __future__ import annotations

import io
import os
import struct
import warnings

from .errors import CitysegError

#: default bound: 64 megapixels (a Cityscapes frame is 2 MP; an 8K frame 33 MP)
MAX_PIXELS_DEFAULT = 64_000_000
ENV = "CITYSEG_MAX_PIXELS"
_PNG = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers: C0..CF less DHT (C4), JPG (C8) and DAC (CC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class TooManyPixels(CitysegError):
    """An image whose header declares more pixels than the bound (serve answers 413)."""


def max_pixels() -> int:
    """The bound in force: the last :func:`set_max_pixels`, else ``$CITYSEG_MAX_PIXELS``, else 64 MP."""
    value = os.environ.get(ENV, "")
    try:
        return int(value) if value.strip() else MAX_PIXELS_DEFAULT
    except ValueError:
        return MAX_PIXELS_DEFAULT


def set_max_pixels(value: int | None) -> None:
    """Set the bound for this process and the workers it starts (``None``: keep what is set)."""
    if value is None:
        return
    if int(value) < 1:
        raise CitysegError(f"--max-pixels {value}: must be a positive pixel count, e.g. 64000000")
    os.environ[ENV] = str(int(value))


def _jpeg_size(buf: memoryview) -> tuple[int, int] | None:
    """(H, W) from the first start-of-frame segment, walking the marker segments before it."""
    pos, n = 2, len(buf)
    while pos + 4 <= n:
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", buf[pos + 2:pos + 4])
        if marker in _SOF:
            if pos + 9 > n:
                return None
            height, width = struct.unpack(">HH", buf[pos + 5:pos + 9])
            return (height, width) if height and width else None
        if length < 2:
            return None
        pos += 2 + length
    return None


def _pillow_size(buf: memoryview) -> tuple[int, int] | None:
    """(H, W) from Pillow's header parser (BMP, TIFF, WebP, PPM, ...); nothing is decoded."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: we decide, below
        try:
            with Image.open(io.BytesIO(bytes(buf))) as im:
                width, height = im.size
        except Image.DecompressionBombError:
            return (Image.MAX_IMAGE_PIXELS or 0) * 2 + 1, 1  # over Pillow's hard cap: huge
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error):
            return None
    return height, width


def header_size(buf: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(H, W) an encoded image declares in its header, or None where no header gives one."""
    buf = memoryview(buf).cast("B")
    head = bytes(buf[:24])
    if head.startswith(_PNG):
        if len(head) < 24 or head[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", head[16:24])
        return (height, width) if height and width else None
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(buf)
    return _pillow_size(buf)


def check_pixels(buf, what: str, *, limit: int | None = None) -> tuple[int, int]:
    """(H, W) from the header of the encoded image ``buf`` (bytes, or a uint8 array), refused
    before any decoding when it declares more than the bound; ``what`` names it in the message."""
    size = header_size(buf)
    if size is None:
        raise CitysegError(f"{what}: corrupt or unreadable image (no header cityseg can read its "
                           f"size from: PNG, JPEG, BMP, TIFF, WebP, PPM ...); re-create or remove it")
    return check_bound(size, what, limit=limit)


def check_bound(size: tuple[int, int], what: str, *, limit: int | None = None) -> tuple[int, int]:
    """``size`` (H, W) as given, or the error saying it is over the pixel bound."""
    limit = max_pixels() if limit is None else limit
    height, width = size
    if height * width > limit:
        raise TooManyPixels(f"{what}: the header declares {width}x{height} = {height * width:,} "
                           f"pixels, over the {limit:,}-pixel bound; refused before decoding "
                           f"(a decompression bomb?) — raise --max-pixels if the image is real")
    return size
