"""Keep OpenCV's, libpng's and FFmpeg's own stderr lines out of our output; fold them into errors.

Why: a corrupt PNG made OpenCV print ``[ WARN:0@6.6] global grfmt_png.cpp:793 ... PNG input buffer
is incomplete`` above our ``error:`` line, and FFmpeg prints ``[mov,mp4 @ 0x..] moov atom not
found`` on its own; the contract is one line.  The native libraries are silenced once, before
``cv2`` is first imported (environment: ``OPENCV_LOG_LEVEL``, ``OPENCV_FFMPEG_LOGLEVEL``; a user's
own setting wins), and on the rare failure path :func:`native_stderr` re-runs the failing call
with the C-level stderr captured, so the reason the library gave becomes part of our message.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

# AV_LOG_QUIET is -8: FFmpeg (inside OpenCV's videoio) prints nothing.
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


@contextlib.contextmanager
def _captured_fd2() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (what C libraries write to) into a temporary file."""
    lines: list[str] = []
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                text = sink.read().decode("utf-8", "replace")
                lines.extend(ln.strip() for ln in text.splitlines() if ln.strip())
    finally:
        os.close(saved)


# Lines native libraries print on their own: libpng's default handlers ("libpng error: ...",
# "libpng warning: ..."), OpenCV's logger ("[ WARN:0@6.6] ..."), FFmpeg's ("[mov,mp4 @ 0x55...]").
_NATIVE_LINE = re.compile(r"^(libpng (error|warning)|libtiff|\[ ?(WARN|ERROR|INFO|DEBUG)[:\]]"
                          r"|\[[\w ,.-]+ @ 0x[0-9a-fA-F]+\])")


def is_native_line(line: str) -> bool:
    """True for a line a native library (libpng, OpenCV's logger, FFmpeg) printed by itself."""
    return bool(_NATIVE_LINE.match(line.strip()))


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved = -1
_quiet_sink = -1


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Keep what native code prints to fd 2 during the block off the terminal.

    Why: OpenCV 5 builds let libpng print ``libpng error: ...`` itself, a raw line above our
    ``error:`` line (the failure path re-runs the decode under :func:`native_stderr` to fold the
    words into the message).  Cost: two ``dup2`` calls per block.  Blocks may overlap across
    threads (fd 2 is process-wide: the first entrant redirects, the last restores); anything else
    written to fd 2 meanwhile (a progress bar, a Python warning) is passed on when the last block
    ends, only native libraries' own lines are dropped.
    """
    global _quiet_depth, _quiet_saved, _quiet_sink
    redirected = True
    with _quiet_lock:
        if _quiet_depth == 0:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            try:
                if _quiet_sink < 0:
                    _quiet_sink = _sink_fd()
                _quiet_saved = os.dup(2)
                os.dup2(_quiet_sink, 2)
            except OSError:  # no fd 2 (a daemon), no temp dir: decode without the redirect
                if _quiet_saved >= 0:
                    with contextlib.suppress(OSError):
                        os.close(_quiet_saved)
                _quiet_saved = -1
                redirected = False
        if redirected:
            _quiet_depth += 1
    if not redirected:
        yield
        return
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.dup2(_quiet_saved, 2)
                os.close(_quiet_saved)
                _quiet_saved = -1
                _pass_on(_quiet_sink)


def _sink_fd() -> int:
    """An unlinked temporary file's descriptor (kept open for the process's life)."""
    fd, name = tempfile.mkstemp(prefix="cityseg-native-")
    os.unlink(name)
    return fd


def _pass_on(sink: int) -> None:
    """Write what the sink caught, less native libraries' lines, to the real fd 2; empty it."""
    size = os.lseek(sink, 0, os.SEEK_END)
    if not size:
        return
    data = os.pread(sink, size, 0)
    os.ftruncate(sink, 0)
    os.lseek(sink, 0, os.SEEK_SET)
    kept = [ln for ln in data.splitlines(keepends=True)
            if not is_native_line(ln.decode("utf-8", "replace"))]
    if kept:
        with contextlib.suppress(OSError):
            os.write(2, b"".join(kept))


def _short(line: str) -> str:
    """``[ WARN:0@6.6] global grfmt_png.cpp:793 readFromStreamOrBuffer PNG input ...`` → the text."""
    if line.startswith("[") and "]" in line:
        line = line.split("]", 1)[1].strip()
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[0] == "global" and ".cpp:" in parts[1]:
            line = parts[3]
    return line


def native_stderr(call: Callable[[], T]) -> tuple[T | None, str]:
    """Run ``call`` with OpenCV's warnings on and stderr captured: (its result or None, what it said).

    Only for failure paths (a decode that already failed once): capturing fd 2 is process-wide.
    """
    import cv2

    # cv2.utils.logging exists from OpenCV 4.9 (the 4.8 floor run found it missing): without it
    # the level stays as the environment set it, and only what the library prints anyway is kept
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    level = logging.getLogLevel() if logging is not None else None
    result: T | None = None
    with _captured_fd2() as lines:
        if logging is not None:
            logging.setLogLevel(logging.LOG_LEVEL_WARNING)
        try:
            result = call()
        except Exception:  # noqa: BLE001 - the caller reports the failure; we only want the words
            result = None
        finally:
            if logging is not None:
                logging.setLogLevel(level)
    said = "; ".join(dict.fromkeys(_short(ln) for ln in lines))
    return result, said[:200]


_PROBE = ("import sys, cv2\n"
          "cap = cv2.VideoCapture(sys.argv[1])\n"
          "ok = cap.isOpened() and cap.read()[0]\n")


def ffmpeg_says(path: str, timeout_s: float = 20.0) -> str:
    """What FFmpeg says when it opens ``path`` (``moov atom not found``), for a failure message.

    FFmpeg's log level is fixed when OpenCV first starts it (quiet here), so the file is opened
    once more in a child process whose FFmpeg logs errors; only on the failure path.  The child
    runs our fixed probe, never anything from the file.
    """
    import re
    import subprocess

    env = dict(os.environ, OPENCV_FFMPEG_LOGLEVEL="16", OPENCV_LOG_LEVEL="SILENT")  # AV_LOG_ERROR
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", ln).strip()
             for ln in proc.stdout.decode("utf-8", "replace").splitlines()]
    return "; ".join(dict.fromkeys(ln for ln in lines if ln))[:200]
