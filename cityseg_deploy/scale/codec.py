"""What the HTTP service does to bytes: check and decode an upload, encode the answer.

Kept apart from Ray Serve (no Ray import) so every rule about a bad request is a plain function
with a plain test.  Decoding and encoding are those of ``cityseg predict`` (OpenCV, RGB in,
``cv2.imencode('.png')`` out), so a served PNG is byte for byte the file ``predict`` writes.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import CitysegError
from ..images_header import TooManyPixels, check_pixels
from ..native_logs import quiet_native

#: largest accepted request body (bytes); a 2048x1024 Cityscapes PNG is ~2-4 MB
MAX_BODY_BYTES = 32 * 1024 * 1024
#: what ``format=`` may ask for (``predict --format``'s choices)
FORMATS = ("labelIds", "trainIds", "color", "overlay")
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


class BadRequest(Exception):
    """A request the service refuses: HTTP ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def check_content_type(value: str | None) -> None:
    """``image/*`` only (415 otherwise), so a JSON or form post gets a clear answer."""
    kind = (value or "").split(";")[0].strip().lower()
    if not kind.startswith("image/"):
        raise BadRequest(415, f"Content-Type {value or '(none)'!r}: send the encoded image itself "
                              f"with Content-Type image/png or image/jpeg")


def check_length(value: str | None, limit: int = MAX_BODY_BYTES) -> None:
    """Refuse a declared body over ``limit`` before reading it (413)."""
    if value is None:
        return
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(400, f"Content-Length {value!r} is not a number") from None
    if n > limit:
        raise BadRequest(413, f"body of {n} bytes is over the {limit}-byte limit; send a smaller image")


def is_truncated(data: bytes) -> bool:
    """PNG without its IEND chunk, or JPEG without its end-of-image marker: cut short.

    Why not trust the decoder: libjpeg fills a cut JPEG with grey and returns it, and a
    segmentation of half a grey picture is a wrong answer, not an error the client sees.
    """
    if data.startswith(_PNG):
        end = data.rfind(b"IEND")
        return end < 0 or len(data) < end + 8  # the IEND chunk with its 4 CRC bytes
    if data.startswith(_JPEG):
        return not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")
    return False


def decode_upload(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """An uploaded PNG/JPEG (or any format OpenCV reads) → HxWx3 uint8 RGB, as ``predict`` reads
    files; an image whose header declares more than ``max_pixels`` (default: ``--max-pixels``,
    64 MP) is refused with 413 before decoding."""
    if not data:
        raise BadRequest(400, "empty body: POST the encoded image (PNG or JPEG)")
    if is_truncated(data):
        raise BadRequest(400, "truncated image: the PNG/JPEG ends before its end marker")
    try:  # the header's size against --max-pixels, before decoding (a decompression bomb)
        check_pixels(data, "the request body", limit=max_pixels)
    except TooManyPixels as exc:
        raise BadRequest(413, str(exc)) from None
    except CitysegError:
        raise BadRequest(400, "not a decodable 8-bit image (send a PNG or JPEG)") from None
    try:
        with quiet_native():
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None or image.dtype != np.uint8:
        raise BadRequest(400, "not a decodable 8-bit image (send a PNG or JPEG)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def parse_format(value: str | None) -> str:
    fmt = value or "labelIds"
    if fmt not in FORMATS:
        raise BadRequest(400, f"format={fmt!r}: choose one of {', '.join(FORMATS)}")
    return fmt


def encode_answer(labels: np.ndarray, image: np.ndarray, label_set, fmt: str) -> bytes:
    """The PNG ``predict --format fmt`` writes for this prediction (same array, same encoder)."""
    from ..evaluation.predict import render

    array, rgb = render(labels, image, label_set, fmt)
    if rgb:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover - uint8 arrays always encode
        raise BadRequest(500, "could not encode the answer as PNG")
    return buf.tobytes()
