"""Where results go: an annotated video, per-frame label PNGs, a window.

The video is written under a hidden temporary name in the target folder and renamed when it is
closed, so a reader never sees a half-written file under the final name.  ``close(keep=True)``
(normal end, Ctrl-C, a truncated input) finalises the container — the file stays playable with the
frames so far; ``close(keep=False)`` (an error) removes it.  The temporary keeps the final suffix
because OpenCV picks the container from the extension.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ..errors import CitysegError
from ..fileio import clean_stale_temporaries, free_bytes, new_file_mode, storage_error, write_png
from ..png_pool import PngPool

#: below this much free space the encoder's next writes fail (FFmpeg drops them silently)
MIN_FREE_BYTES = 256 * 1024

# Container suffix -> FourCC OpenCV's bundled FFmpeg can encode (avc1/H.264 needs an encoder the
# pip wheels lack; ask for it with --fourcc avc1 where your OpenCV has one).
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


class VideoSink:
    """A ``cv2.VideoWriter`` opened on the first frame (its size) and renamed into place on close."""

    def __init__(self, path: str | os.PathLike, fps: float, *, fourcc: str | None = None,
                 params: list[int] | None = None) -> None:
        self.path = Path(path)
        self.params = list(params or [])  # VideoWriter parameters (a hardware encoder request)
        suffix = self.path.suffix.lower()
        if fourcc is None:
            if suffix not in FOURCC_BY_SUFFIX:
                raise CitysegError(f"--out {self.path}: unknown video suffix {suffix!r}; use one of "
                                   f"{', '.join(FOURCC_BY_SUFFIX)} (or pass --fourcc)")
            fourcc = FOURCC_BY_SUFFIX[suffix]
        if len(fourcc) != 4:
            raise CitysegError(f"--fourcc {fourcc!r}: a FourCC has four characters, e.g. mp4v")
        self.fourcc, self.fps = fourcc, fps
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (H, W)
        self.tmp: Path | None = None
        self._writer: cv2.VideoWriter | None = None

    def _open(self, h: int, w: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prefix, suffix = f".{self.path.stem}.", f".partial{self.path.suffix}"
        clean_stale_temporaries(self.path.parent, prefix, (suffix,))  # a killed run's leftovers
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)
        if self.params:
            writer = cv2.VideoWriter(str(self.tmp), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*self.fourcc),
                                     self.fps, (w, h), self.params)
        else:
            writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
        if not writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
            raise CitysegError(f"--out {self.path}: OpenCV cannot encode {self.fourcc!r} into "
                               f"{self.path.suffix}; use .mp4 (mp4v) or .avi (MJPG)")
        self._writer, self.size = writer, (h, w)

    def write(self, frame_bgr: np.ndarray) -> None:
        h, w = frame_bgr.shape[:2]
        if self._writer is None:
            self._open(h, w)
        elif (h, w) != self.size:  # image folders may mix sizes; a video cannot
            frame_bgr = cv2.resize(frame_bgr, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
        self._writer.write(frame_bgr)  # returns nothing: a failed write is seen only on disk
        self.frames += 1
        free = free_bytes(self.tmp)
        if free is not None and free < MIN_FREE_BYTES:
            self.close(keep=False)
            raise CitysegError(f"--out {self.path}: cannot write ({os.strerror(errno.ENOSPC)}); "
                               f"{free / 1e6:.1f} MB free on its filesystem after frame "
                               f"{self.frames} — free some space or write elsewhere"
                               + ("; the previous file is kept" if self.path.exists() else ""))

    def close(self, *, keep: bool = True) -> Path | None:
        """Finish the container; rename it into place (``keep``) or delete it.  Idempotent."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        tmp, self.tmp = self.tmp, None
        if tmp is None:
            return None
        if keep and self.frames:
            try:
                self._verify(tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            # mkstemp made it 0600; a video gets the bits every other artifact gets (the umask's).
            os.chmod(tmp, self.path.stat().st_mode & 0o777 if self.path.is_file() else new_file_mode())
            os.replace(tmp, self.path)
            return self.path
        tmp.unlink(missing_ok=True)
        return None

    def _verify(self, tmp: Path) -> None:
        """Reopen the finished file and check it holds every frame written, before it replaces
        anything under the final name.

        Why: ``cv2.VideoWriter.write`` reports nothing; on a full disk ``segment`` said "60 frames
        -> v.mp4" for an unplayable 100 KB file and had replaced a good ``v.mp4`` with it.  The
        count comes from the container's index, and the last frame is decoded to prove the data
        behind it is there.
        """
        cap = cv2.VideoCapture(str(tmp))
        try:
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
            last_ok = False
            if count == self.frames:
                cap.set(cv2.CAP_PROP_POS_FRAMES, count - 1)
                ok, image = cap.read()
                last_ok = bool(ok) and image is not None and image.shape[:2] == self.size
        finally:
            cap.release()
        if count == self.frames and last_ok:
            return
        kept = "; the previous file is kept" if self.path.exists() else ""
        full = storage_error(OSError(errno.ENOSPC, "")) if (free_bytes(tmp) or 0) < MIN_FREE_BYTES else None
        if full is not None:
            raise CitysegError(f"--out {self.path}: cannot write ({os.strerror(errno.ENOSPC)}); "
                               f"{(free_bytes(tmp) or 0) / 1e6:.1f} MB free on its filesystem — the "
                               f"encoded file holds {count} of {self.frames} frames{kept}")
        raise CitysegError(f"--out {self.path}: the encoded file reads back {count} of "
                           f"{self.frames} frames (a failing disk or encoder?){kept}; nothing was "
                           "written under that name")


class LabelPngSink:
    """One single-channel PNG per frame: ``<dir>/frame_<source frame index:06d>.png``.

    Values are trainIds of the model's label set, or official label ids through ``lut``.  Each PNG
    is written atomically, so an interrupted run leaves only complete files.

    Why ``workers``: a 512x1024 PNG costs ~4 ms to encode, serial in the pipeline's writer it
    capped ``segment --labels-dir`` below the model's speed on a GPU; frames are written by a
    :class:`~cityseg_deploy.png_pool.PngPool` (at most ``2 * workers`` in flight; :meth:`close`
    waits for them and raises the first error).
    No per-frame scan for stale temporaries (it listed the whole folder on every write, O(frames²):
    8.9 ms a frame at 1000 frames): the run starts from an empty folder or one
    :func:`clear_labels_dir` emptied of frames and their temporaries (:func:`check_labels_dir`).
    """

    def __init__(self, folder: str | os.PathLike, *, lut: np.ndarray | None = None,
                 pattern: str = "frame_{:06d}.png", workers: int = 0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lut, self.pattern = lut, pattern
        self.frames = 0
        self._pool = PngPool(workers)
        self.workers = self._pool.workers

    def _write_one(self, index: int, labels: np.ndarray) -> None:
        if self.lut is not None:
            labels = cv2.LUT(np.ascontiguousarray(labels, dtype=np.uint8), self.lut)
        write_png(self.folder / self.pattern.format(index), labels, clean_stale=False)

    def write(self, index: int, labels: np.ndarray) -> None:
        self._pool.submit(self._write_one, index, labels)  # an earlier frame's error raises here
        self.frames += 1

    def close(self) -> None:
        """Wait for the frames in flight; the first failed write raises here.  Idempotent."""
        self._pool.close()


def check_labels_dir(folder: str | os.PathLike, *, overwrite: bool) -> None:
    """Refuse to mix a new run's frames with an earlier run's: a non-empty folder needs ``overwrite``.

    Why: frames are named by source index, so a shorter or strided second run left the first
    run's ``frame_*.png`` beside its own, and nothing told them apart.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CitysegError(f"--labels-dir {folder}: a file is in the way; give a folder path")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise CitysegError(f"--labels-dir {folder}: not empty (an earlier run's frames?); choose an "
                           "empty or new folder, or pass --overwrite to replace its frames")


def clear_labels_dir(folder: str | os.PathLike, pattern: str = "frame_{:06d}.png") -> int:
    """Delete the frame PNGs (and their hidden temporaries) a new run would replace; return the count."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    head, tail = pattern.split("{", 1)[0], pattern.rsplit("}", 1)[1]
    removed = 0
    for entry in folder.iterdir():
        name = entry.name.lstrip(".")
        if entry.is_file() and name.startswith(head) and (name.endswith(tail) or name.endswith(".tmp")):
            entry.unlink()
            removed += 1
    return removed


class Window:
    """``--show``: a resizable window; ``q`` or Esc asks to stop."""

    def __init__(self, title: str = "cityseg") -> None:
        self.title = title
        if os.name != "nt" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise CitysegError("--show: no display here (DISPLAY is not set); drop --show and "
                               "write the result with --out instead")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise CitysegError("--show: this OpenCV build has no GUI (opencv-python-headless); "
                               "install opencv-python for windows, or use --out") from None

    def show(self, frame_bgr: np.ndarray) -> bool:
        """Show a frame; False when the user pressed q/Esc."""
        cv2.imshow(self.title, frame_bgr)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass
