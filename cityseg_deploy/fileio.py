"""Atomic writes and checked image reads.

Every artifact the toolchain writes goes through :func:`atomic_path`, so an interrupted or failed
job never leaves a half-written file under the final name.  Every image read goes through
:func:`read_rgb` / :func:`read_label`, so a corrupt or missing file becomes one clear error.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .errors import CitysegError


def new_file_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: 0o666 less the process umask.

    Why: :func:`atomic_path` writes through ``tempfile.mkstemp``, which creates files 0600, so every
    ONNX file, checkpoint and result used to be readable by its owner only (a model server or a
    colleague under another user could not read it), unlike files written with ``open``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no way to read the umask without setting it elsewhere
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only if the block succeeds.

    The temporary lives in the same directory so the rename is atomic on POSIX.  On any exception
    (including KeyboardInterrupt) the temporary is removed and the exception propagates.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    if is_dir:
        tmp.unlink()
        tmp.mkdir()
    try:
        yield tmp
        if is_dir:
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(tmp, final)
        else:
            if tmp.is_file():
                # mkstemp creates 0600; the artifact gets what open() would have given it.
                os.chmod(tmp, final.stat().st_mode & 0o777 if final.is_file() else new_file_mode())
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def child_path(root: str | os.PathLike, name: str, *, what: str) -> Path:
    """``root/name``, refused unless it resolves to a path strictly inside ``root``.

    Why: output names derived from user files (a list-file entry ``sub/..`` has the name ``..``)
    must never make a job write beside or above the folder the user chose.
    """
    root = Path(root)
    child = root / name
    inside = Path(os.path.abspath(child))
    if (not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name)
            or inside.parent != Path(os.path.abspath(root))):
        raise CitysegError(f"{what}: the output name {name!r} would write outside {root}; "
                           f"name a file or folder itself, not '.' or '..'")
    return child


def write_png(path: str | os.PathLike, array: np.ndarray, *, rgb: bool = False) -> None:
    """Write a uint8 PNG atomically (``rgb=True``: the array is RGB, converted to OpenCV's BGR)."""
    if rgb:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise CitysegError(f"could not encode PNG for {path}")
    write_bytes_atomic(path, buf.tobytes())


def _decode(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise CitysegError(f"{path}: no such file")
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise CitysegError(f"{path}: empty file (0 bytes); re-create or remove it")
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as exc:  # OpenCV asserts, e.g. a header claiming more than 2^30 pixels
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise CitysegError(f"{path}: corrupt or unreadable image (its header claims more pixels "
                               f"than OpenCV reads); re-create or remove it") from None
        raise CitysegError(f"{path}: corrupt or unreadable image ({str(exc).strip()[:160]}); "
                           f"re-create or remove it") from None
    if image is None:
        raise CitysegError(f"{path}: corrupt or unreadable image; re-create or remove it")
    return image


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array (colour images only; 16-bit is scaled)."""
    path = Path(path)
    image = _decode(path, cv2.IMREAD_COLOR)
    if image.dtype != np.uint8:
        raise CitysegError(f"{path}: expected an 8-bit image, got {image.dtype}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel uint8 label PNG (label ids or trainIds) as an HxW array."""
    path = Path(path)
    image = _decode(path, cv2.IMREAD_UNCHANGED)
    if image.ndim != 2:
        raise CitysegError(f"{path}: a label image must have one channel, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise CitysegError(f"{path}: a label image must be 8-bit, got {image.dtype}")
    return image
