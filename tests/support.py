"""Helpers several test modules share (pytest puts tests/ on the import path).

Why a module and not fixtures: these are plain functions and classes a test calls with its own
arguments; one copy keeps every "one error line" assertion and every calibration feed the same.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def error_line(capsys) -> str:
    """The one ``error: ...`` line a failed command wrote to stderr; fails on a traceback or more."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


class FeedReader:
    """onnxruntime's CalibrationDataReader over in-memory arrays fed to the input ``name``."""

    def __init__(self, images: list[np.ndarray], name: str = "x"):
        self.images, self.name, self.i = images, name, 0

    def get_next(self) -> dict[str, Any] | None:
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {self.name: self.images[self.i - 1]}


def random_checkpoint(path, arch: str, *, size: tuple[int, int] = (64, 128), seed: int = 0):
    """An untrained, seeded checkpoint of ``arch`` at ``size``: what export tests need when the
    weights' accuracy does not matter (trained ones: test_runtime_artifacts.make_checkpoint)."""
    import torch

    from cityseg_deploy.models.checkpoint import ModelMeta, save_checkpoint
    from cityseg_deploy.models.registry import build_model

    torch.manual_seed(seed)
    meta = ModelMeta.for_arch(arch, input_size=size)
    save_checkpoint(path, build_model(arch, **meta.arch_args).eval(), meta)
    return path


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit greyscale PNG of ``width`` x ``height`` black pixels, built without ever
    holding the pixels: the IDAT is one deflate block of zeros repeated (after a full flush
    the compressor's output for the same input is the same bytes), then the final empty block
    and the Adler-32 of all-zero data (a = 1, b = n mod 65521).  30000x30000 → under 1 MB.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    total = height * (width + 1)  # each row: filter byte 0, then width zero bytes
    block = 1 << 20
    comp = zlib.compressobj(9)
    full, rest = divmod(total, block)
    body = b""
    if full:  # the first output carries the zlib header; every later full block is the same bytes
        body = comp.compress(b"\0" * block) + comp.flush(zlib.Z_FULL_FLUSH)
        if full > 1:
            body += (comp.compress(b"\0" * block) + comp.flush(zlib.Z_FULL_FLUSH)) * (full - 1)
    if rest:
        body += comp.compress(b"\0" * rest) + comp.flush(zlib.Z_FULL_FLUSH)
    adler = (total % 65521) << 16 | 1
    idat = body + b"\x03\x00" + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))
