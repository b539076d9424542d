"""Video encoding off the writer's thread, on the hardware encoder where OpenCV has one.

Why: encoding a 512x1024 mp4v frame took ~12 ms on the H200 machine's CPU, in the pipeline's
main thread — the stage that capped ``segment`` at 73 FPS while the network ran at ~285.  Two
things help, and the speed line names which one ran:

- **hardware**: OpenCV's FFmpeg backend can ask for a hardware encoder
  (``VIDEOWRITER_PROP_HW_ACCELERATION``); whether it got one is read back from the writer, never
  assumed (the pip wheels of OpenCV usually have none: then the request is dropped).
- **threaded CPU encoder**: :class:`ThreadedVideoSink` runs the sink in its own thread behind a
  bounded queue; ``cv2.VideoWriter.write`` releases the GIL, so encoding overlaps decoding,
  inference and PNG writing instead of adding to them.
"""
from __future__ import annotations

import os
import queue
import tempfile
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

_END = object()


def hardware_params() -> list[int]:
    """The VideoWriter parameters that ask OpenCV for any hardware encoder (empty if it has no
    such property, as older builds)."""
    prop = getattr(cv2, "VIDEOWRITER_PROP_HW_ACCELERATION", None)
    accel = getattr(cv2, "VIDEO_ACCELERATION_ANY", None)
    return [] if prop is None or accel is None else [int(prop), int(accel)]


def probe_hardware(fourcc: str, size: tuple[int, int] = (64, 64), fps: float = 25.0) -> str | None:
    """Name of the hardware acceleration OpenCV grants for ``fourcc`` here, else None.

    Opens a writer on a throw-away file with :func:`hardware_params` and reads the property
    back: only a non-zero answer counts (asking is not getting)."""
    params = hardware_params()
    if not params:
        return None
    fd, name = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        writer = cv2.VideoWriter(name, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), fps,
                                 (size[1], size[0]), params)
        if not writer.isOpened():
            return None
        got = int(writer.get(params[0]))
        writer.release()
        if got <= 0:
            return None
        names = {getattr(cv2, n, None): n.split("_", 2)[-1].lower()
                 for n in ("VIDEO_ACCELERATION_D3D11", "VIDEO_ACCELERATION_VAAPI", "VIDEO_ACCELERATION_MFX")}
        return names.get(got, f"hw{got}")
    except cv2.error:
        return None
    finally:
        Path(name).unlink(missing_ok=True)


class ThreadedVideoSink:
    """A video sink written from its own thread: ``write`` enqueues (blocking when ``depth``
    frames wait), ``close`` drains the queue, then closes the sink.  The first encoder error is
    raised by the next ``write`` or by ``close``."""

    def __init__(self, sink: Any, *, depth: int = 8) -> None:
        self.sink = sink
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cityseg-encode", daemon=True)
        self._thread.start()

    @property
    def frames(self) -> int:
        return self.sink.frames

    def _run(self) -> None:
        while True:
            frame = self._q.get()
            if frame is _END:
                return
            if self._error is None:
                try:
                    self.sink.write(frame)
                except BaseException as exc:  # noqa: BLE001 - handed to the writer's thread
                    self._error = exc

    def write(self, frame_bgr: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(frame_bgr)

    def close(self, *, keep: bool = True) -> Path | None:
        """Finish the frames queued, then close the sink (``keep`` as :meth:`VideoSink.close`)."""
        if self._thread.is_alive():
            self._q.put(_END)
            self._thread.join()
        if self._error is not None:
            self.sink.close(keep=False)
            error, self._error = self._error, None
            raise error
        return self.sink.close(keep=keep)


__all__ = ["ThreadedVideoSink", "hardware_params", "probe_hardware"]
