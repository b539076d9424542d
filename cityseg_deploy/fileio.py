"""Atomic writes and checked image reads.

Every artifact the toolchain writes goes through :func:`atomic_path`, so an interrupted or failed
job never leaves a half-written file under the final name.  Every image read goes through
:func:`read_rgb` / :func:`read_label`, so a corrupt or missing file becomes one clear error.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from .errors import CitysegError
from .images_header import check_bound, check_pixels
from .native_logs import native_stderr, quiet_native


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


# Files older than this are left over from an earlier run (this process imported fileio first).
RUN_STARTED = time.time()
_MKSTEMP_PART = re.compile(r"[A-Za-z0-9_]{8}")


def _is_temp_of(name: str, prefix: str, suffixes: tuple[str, ...]) -> bool:
    """``name`` is ``<prefix><8 random chars><one of suffixes>``, as ``tempfile.mkstemp`` names it."""
    if not name.startswith(prefix):
        return False
    for suffix in suffixes:
        if suffix and name.endswith(suffix) and _MKSTEMP_PART.fullmatch(name[len(prefix):-len(suffix)]):
            return True
    return False


def clean_stale_temporaries(folder: str | os.PathLike, prefix: str, suffixes: tuple[str, ...]) -> list[Path]:
    """Remove hidden temporaries a killed earlier run left for the same target; return them.

    Why: SIGKILL skips every cleanup handler, so ``.m.onnx.ab12cd34.tmp`` or
    ``.drive.x1y2z3w4.partial.mp4`` stayed forever.  Only names built from the same target's
    ``prefix`` and last modified before this run started are touched: a concurrent job writing
    another file, or this run's own temporaries, are left alone.
    """
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    return [entry for entry in entries
            if _is_temp_of(entry.name, prefix, suffixes) and _remove_if_stale(entry)]


def _remove_if_stale(entry: Path) -> bool:
    """Remove ``entry`` (a file or folder) if it was last modified before this run started."""
    try:
        if entry.lstat().st_mtime >= RUN_STARTED:
            return False
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        return True
    except OSError:
        return False


def clean_stale_for(targets: Iterable[str | os.PathLike]) -> list[Path]:
    """:func:`clean_stale_temporaries` for many files at once: one listing per folder.

    Why: a job writing one file per image (``predict``) scanned its whole output folder before
    every write, O(images²); it cleans once here, then writes with ``clean_stale=False``.
    """
    by_folder: dict[Path, set[str]] = {}
    for target in map(Path, targets):
        by_folder.setdefault(target.parent, set()).add(target.name)
    removed: list[Path] = []
    for folder, names in by_folder.items():
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            # ".<target>.<8 random chars>.<suffix>": the target is what precedes the last two dots
            target = entry.name[1:].rsplit(".", 2)[0] if entry.name.startswith(".") else ""
            if (target in names
                    and _is_temp_of(entry.name, f".{target}.", (".tmp", Path(target).suffix))
                    and _remove_if_stale(entry)):
                removed.append(entry)
    return removed


def aside_path(final: str | os.PathLike) -> Path:
    """Where :func:`atomic_path` parks the previous folder while it swaps a new one in."""
    final = Path(final)
    return final.with_name(f".{final.name}.old")


def recover_swap(final: str | os.PathLike) -> None:
    """Finish or undo a folder swap that a kill interrupted (see :func:`atomic_path`).

    Old folder aside and no folder under the final name: the kill came between the two renames,
    so the old one goes back.  Both present: only the deletion of the old one was missed.
    """
    final = Path(final)
    aside = aside_path(final)
    if not aside.is_dir():
        return
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(aside, final)


def _swap_dir_in(tmp: Path, final: Path) -> None:
    """Replace folder ``final`` by ``tmp`` so that a kill at any point loses neither.

    Rename the old folder aside, rename the new one in, then delete the old one; a kill between
    the renames leaves the old folder under :func:`aside_path`, which :func:`recover_swap` (run by
    the next export to this path, and by any reader) puts back.
    """
    if not final.exists():
        os.rename(tmp, final)
        return
    if not final.is_dir():
        final.unlink()
        os.rename(tmp, final)
        return
    aside = aside_path(final)
    if aside.exists():
        shutil.rmtree(aside)
    os.rename(final, aside)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(aside, final)  # the new one did not arrive: the old one stays
        raise
    shutil.rmtree(aside, ignore_errors=True)


#: what a full or failing disk raises: no space, I/O error, quota exceeded
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the filesystem holding ``path`` (its nearest existing folder), or None."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def _mb(n: int | None) -> str:
    return "unknown space" if n is None else f"{n / 1e6:.1f} MB"


def storage_error(exc: BaseException, path: str | os.PathLike | None = None) -> CitysegError | None:
    """The one-line error for a write that failed because the disk is full or failing, or None.

    Why one function: a full disk ended export, predict, eval, train, segment, data synth and
    bench in tracebacks (ENOSPC from Python's own writes, ``RuntimeError: ... file write failed``
    from torch's C++ writer).  The message names the path and the space left, the two things a
    user checks.  ``path`` is the output being written where the caller knows it; a C++ writer's
    error (no errno) counts only when that filesystem is in fact (nearly) full.
    """
    os_err = next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS),
                  None)
    if os_err is not None:
        reason = os.strerror(os_err.errno)
        path = path if path is not None else os_err.filename
    else:  # torch's C++ writer: "basic_ios::clear: iostream error", "file write failed", ...
        if path is None or not isinstance(exc, (OSError, RuntimeError)):
            return None
        if (free_bytes(path) or 0) >= 1 << 20:
            return None
        reason = os.strerror(errno.ENOSPC)
    if path is None:
        return CitysegError(f"cannot write ({reason}); {_mb(free_bytes(os.getcwd()))} free in "
                            "the current folder's filesystem — free some space or write elsewhere")
    return CitysegError(f"{path}: cannot write ({reason}); {_mb(free_bytes(path))} free on its "
                        "filesystem — free some space or write elsewhere")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, is_dir: bool = False, clean_stale: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only if the block succeeds.

    The temporary lives in the same directory so the rename is atomic on POSIX.  On any exception
    (including KeyboardInterrupt) the temporary is removed and the exception propagates.  Stale
    temporaries of the same target from a killed earlier run are removed first; a folder replaces
    its predecessor by a swap that never loses both (:func:`_swap_dir_in`).
    ``clean_stale=False`` skips that scan, for a writer of many files in one folder that cleaned
    it once (the scan lists the whole folder: per frame of a video it made writing O(frames²) —
    8.9 ms a PNG at 1000 frames).
    """
    final = Path(final)
    fd, tmp = _temporary_beside(final, is_dir=is_dir, clean_stale=clean_stale)
    os.close(fd)
    if is_dir:
        tmp.unlink()
        tmp.mkdir()
    try:
        yield tmp
        if is_dir:
            _swap_dir_in(tmp, final)
        else:
            if tmp.is_file():
                os.chmod(tmp, _file_mode(final))
            os.replace(tmp, final)
    except BaseException as exc:
        _discard(tmp, exc, final)
        raise


def _temporary_beside(final: Path, *, is_dir: bool, clean_stale: bool) -> tuple[int, Path]:
    """(open descriptor, path) of a new hidden temporary file next to ``final`` (its folder made,
    stale temporaries of it cleaned unless ``clean_stale`` is off, a folder swap recovered)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}."
    if clean_stale:
        clean_stale_temporaries(final.parent, prefix, (".tmp", final.suffix))
    if is_dir:
        recover_swap(final)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=final.parent)
    return fd, Path(tmp_name)


def _file_mode(final: Path) -> int:
    """The permission bits the new ``final`` gets: its predecessor's, else what open() would
    give (mkstemp creates 0600)."""
    return final.stat().st_mode & 0o777 if final.is_file() else new_file_mode()


def _discard(tmp: Path, exc: BaseException, final: Path) -> None:
    """Remove a failed write's temporary; a full or failing disk raises as its one-line error
    (after the temporary is gone, so the space it took is counted), else the caller re-raises."""
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.exists():
        tmp.unlink()
    full = storage_error(exc, final) if isinstance(exc, Exception) else None
    if full is not None:
        raise full from None


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, clean_stale: bool = True) -> None:
    """:func:`atomic_path` for bytes, written through the descriptor the temporary was created
    with.  Why: ``predict`` and ``segment --labels-dir`` write a PNG per image; reopening the
    temporary by name and its extra stats were half of a small PNG's write (0.25 of 0.4 ms of
    CPU), on a machine where that CPU is taken from the model."""
    final = Path(path)
    fd, tmp = _temporary_beside(final, is_dir=False, clean_stale=clean_stale)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, _file_mode(final))
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException as exc:
        _discard(tmp, exc, final)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def path_mb(*paths: str | os.PathLike) -> float | None:
    """Size of the files (a folder: every file under it) in MB = 10^6 bytes, the unit of every
    artifact size the toolchain reports (export, bench); None where none of them exists.

    Why one function: export counted 10^6 and bench 2^20, so one file had two sizes.
    """
    total, found = 0, False
    for path in map(Path, paths):
        if path.is_file():
            total, found = total + path.stat().st_size, True
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            found = True
    return round(total / 1e6, 3) if found else None


def check_writable_folder(folder: str | os.PathLike, *, what: str) -> None:
    """Refuse, before any work, a destination whose nearest existing folder is a file or cannot be
    written in; ``what`` names the destination in the error (``--out X``).

    Why: such a path failed only at the final rename or mkdir — a traceback after the whole job
    (an export, an optimize run, a bench or predict report) had run.
    """
    parent = Path(folder)
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CitysegError(f"{what}: {parent} is a file, not a folder; choose a path in a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CitysegError(f"{what}: cannot write in {parent} (permission denied)")


def check_output_file(path: str | os.PathLike, *, option: str) -> Path:
    """:func:`check_writable_folder` for a one-file report (``--json``, ``--md``, ``--plot``),
    which also must not be an existing folder."""
    path = Path(path)
    if path.is_dir():
        example = path / ("report" + {"--json": ".json", "--md": ".md"}.get(option, ".png"))
        raise CitysegError(f"{option} {path}: an existing folder; give a file name "
                           f"(for example {example})")
    check_writable_folder(path.parent, what=f"{option} {path}")
    return path


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


def write_png(path: str | os.PathLike, array: np.ndarray, *, rgb: bool = False,
              clean_stale: bool = True) -> None:
    """Write a uint8 PNG atomically (``rgb=True``: the array is RGB, converted to OpenCV's BGR;
    ``clean_stale``: see :func:`atomic_path`)."""
    if rgb:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise CitysegError(f"could not encode PNG for {path}")
    write_bytes_atomic(path, buf.tobytes(), clean_stale=clean_stale)


def _decode(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise CitysegError(f"{path}: no such file")
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise CitysegError(f"{path}: empty file (0 bytes); re-create or remove it")
    check_pixels(data, str(path))  # a decompression bomb stops here, before any decoding
    try:
        with quiet_native():
            image = cv2.imdecode(data, flags)
    except cv2.error as exc:  # OpenCV asserts, e.g. a header claiming more than 2^30 pixels
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise CitysegError(f"{path}: corrupt or unreadable image (its header claims more pixels "
                               f"than OpenCV reads); re-create or remove it") from None
        raise CitysegError(f"{path}: corrupt or unreadable image ({str(exc).strip()[:160]}); "
                           f"re-create or remove it") from None
    if image is None:
        _, said = native_stderr(lambda: cv2.imdecode(data, flags))
        reason = f" ({said})" if said else ""
        raise CitysegError(f"{path}: corrupt or unreadable image{reason}; re-create or remove it")
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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def png_header_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) from a PNG's header, after checking its signature, IHDR (with CRC), final IEND and
    the pixel bound (``--max-pixels``).

    Why: reads 45 bytes per file, so a training run can check every train and val file before
    its first step instead of meeting an empty, truncated or non-PNG file an epoch later.  A
    file whose middle is damaged still passes; its full decode reports it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(33)
            size = os.fstat(fh.fileno()).st_size
            if size >= 45:
                fh.seek(size - 12)
            tail = fh.read(12) if size >= 45 else b""
    except OSError as exc:
        raise CitysegError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if size == 0:
        raise CitysegError(f"{path}: empty file (0 bytes); re-create or remove it")
    if not head.startswith(PNG_SIGNATURE):
        raise CitysegError(f"{path}: not a PNG file (no PNG signature); re-create or remove it")
    if len(head) < 33 or head[12:16] != b"IHDR" or struct.unpack(">I", head[8:12])[0] != 13 \
            or zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
        raise CitysegError(f"{path}: corrupt PNG header (IHDR); re-create or remove it")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if not (0 < width < 2**31 and 0 < height < 2**31) or depth not in _PNG_DEPTHS.get(colour, ()):
        raise CitysegError(f"{path}: corrupt PNG header ({width}x{height}, bit depth {depth}, "
                           f"colour type {colour}); re-create or remove it")
    if tail != _IEND:
        raise CitysegError(f"{path}: truncated PNG (no IEND chunk at its end); re-create or remove it")
    return check_bound((height, width), str(path))


# --------------------------------------------------------------------------- file + sidecar pairs
@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on the folder itself (flock on its descriptor): a pair swap and
    a reader's recovery of one never interleave.  No lock file is left behind."""
    import fcntl

    fd = os.open(str(folder), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def recover_pair(main: str | os.PathLike, side: str | os.PathLike) -> None:
    """Finish or undo a pair swap (:func:`swap_pair_in`) that a kill interrupted.

    The swap moves the old pair aside, then the new sidecar in, then the new main file in: the
    main file reappears under its final name only once the new pair is complete.  So with files
    aside and the main file present, the swap was done (only the clean-up was missed); with the
    main file absent, the old pair goes back, over a new sidecar that may already be in place.
    Readers call this (``artifacts.artifact_kind``), so a kill never leaves an unusable pair; in a
    folder the reader may not write, it leaves things as they are.
    """
    main, side = Path(main), Path(side)
    a_main, a_side = aside_path(main), aside_path(side)
    if not (a_main.exists() or a_side.exists()):
        return
    try:
        with _folder_lock(main.parent):
            if main.exists():
                a_side.unlink(missing_ok=True)
                a_main.unlink(missing_ok=True)
                return
            if a_side.exists():
                os.replace(a_side, side)
            if a_main.exists():
                os.replace(a_main, main)
    except OSError:
        pass


def swap_pair_in(new_main: Path, new_side: Path, main: Path, side: Path) -> None:
    """Replace the pair (``main``, ``side``) by (``new_main``, ``new_side``) so that a kill at any
    point leaves one complete pair, old or new (after :func:`recover_pair`).

    Order: old main aside, old sidecar aside, new sidecar in, new main in, asides deleted (the
    sidecar's first).  An exception (Ctrl-C) before the new main is in puts the old pair back.
    """
    a_main, a_side = aside_path(main), aside_path(side)
    with _folder_lock(main.parent):
        done: list[str] = []
        try:
            for old, aside in ((main, a_main), (side, a_side)):
                aside.unlink(missing_ok=True)
                if old.exists():
                    os.replace(old, aside)
            os.replace(new_side, side)
            done.append("side in")
            os.replace(new_main, main)
        except BaseException:
            if not main.exists():  # the new main file did not arrive
                if a_side.exists():
                    os.replace(a_side, side)
                elif "side in" in done:
                    side.unlink(missing_ok=True)  # a first export: no sidecar without its file
                if a_main.exists():
                    os.replace(a_main, main)
            raise
        a_side.unlink(missing_ok=True)
        a_main.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_pair(main: str | os.PathLike, side: str | os.PathLike) -> Iterator[tuple[Path, Path]]:
    """Yield temporary paths for a file and its sidecar; swap both in only if the block succeeds.

    Why: a ``.pt2``/engine and its ``.json`` sidecar are one artifact; written one after the other,
    a kill in between left the new file without a sidecar and the previous good pair gone.  Both
    are written aside, then :func:`swap_pair_in` replaces the old pair; on any exception the
    temporaries go and the old pair stays.
    """
    main, side = Path(main), Path(side)
    main.parent.mkdir(parents=True, exist_ok=True)
    recover_pair(main, side)
    temps: list[Path] = []
    try:
        for final in (main, side):
            prefix = f".{final.name}."
            clean_stale_temporaries(final.parent, prefix, (".tmp", final.suffix))
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=final.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps[0], temps[1]
        for tmp, final in zip(temps, (main, side)):
            if tmp.is_file():
                os.chmod(tmp, final.stat().st_mode & 0o777 if final.is_file() else new_file_mode())
        swap_pair_in(temps[0], temps[1], main, side)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
