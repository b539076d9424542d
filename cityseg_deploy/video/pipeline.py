"""reader → runner → renderer → writer, each in its own thread, joined by bounded queues.

Why threads: decoding (FFmpeg), inference (torch/onnxruntime/...) and encoding (FFmpeg, PNG) all
release the GIL, so overlapping them makes the pipeline run at the speed of its slowest stage —
the model — instead of the sum of all stages.  Bounded queues keep memory flat and make a fast
stage wait for a slow one.

Two queue kinds:
- files (``realtime=False``): a bounded FIFO; every frame is processed, the reader waits.
- live sources (``realtime=True``): a one-slot "newest frame" queue; the reader overwrites a frame
  the runner has not taken yet and counts it as dropped, so the output tracks the present instead
  of lagging further and further behind.

Shutdown: every stage ends its output with an ``END`` sentinel; all blocking waits use short
timeouts and check a shared ``stop`` event, so an error anywhere stops every thread.  The first
exception of a worker is re-raised in the main thread.  A KeyboardInterrupt raised by the runner
(a cancelling backend) ends only the input: frames already segmented are still rendered and
written, then the run reports itself interrupted.  The writer
runs in the main thread (where Ctrl-C lands and where ``cv2.imshow`` must run): on Ctrl-C it
finishes the video so the file stays playable with the frames so far; on an error it removes it.
"""
from __future__ import annotations

import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from ..fileio import child_path
from ..errors import CitysegError
from ..png_pool import default_workers
from .device_stage import HostStage, TorchDeviceStage, device_stage
from .encode import ThreadedVideoSink, hardware_params, probe_hardware
from .overlay import Renderer
from .sources import Frame, Source
from .writers import FOURCC_BY_SUFFIX, LabelPngSink, VideoSink, Window, check_labels_dir, clear_labels_dir

END = object()   # sentinel closing a stage's output
POLL_S = 0.05    # how often a blocked stage re-checks the stop event


class SegmenterLike(Protocol):
    """What the pipeline needs of ``runtime.Segmenter``: ``predict`` on an NHWC batch, ``meta``."""

    meta: Any

    def predict(self, images: Any) -> np.ndarray: ...


class _Stopped(Exception):
    """Raised inside a worker when another stage failed or the run was cancelled."""


class FifoQueue:
    """Bounded FIFO with stop-aware blocking put/get (files: keep every frame)."""

    def __init__(self, maxsize: int) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.dropped = 0

    def put(self, item: Any, stop: threading.Event) -> None:
        while True:
            if stop.is_set():
                raise _Stopped
            try:
                self._q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def close(self, stop: threading.Event) -> None:
        self.put(END, stop)

    def get(self, stop: threading.Event) -> Any:
        while True:
            if stop.is_set():
                raise _Stopped
            try:
                return self._q.get(timeout=POLL_S)
            except queue.Empty:
                continue


class LatestQueue:
    """One slot holding the newest item: ``put`` never blocks, it replaces (and counts) a stale one.

    The end is a flag, not an item, so closing never overwrites the last frame.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False
        self.dropped = 0

    def put(self, item: Any, stop: threading.Event) -> None:
        with self._cond:
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify()

    def close(self, stop: threading.Event) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def get(self, stop: threading.Event) -> Any:
        with self._cond:
            while not self._full and not self._closed:
                if stop.is_set():
                    raise _Stopped
                self._cond.wait(POLL_S)
            if self._full:
                item, self._item, self._full = self._item, None, False
                return item
            return END


@dataclass
class PipelineOptions:
    """Knobs of one run (the CLI's options, minus where results go)."""

    batch: int = 1
    vid_stride: int = 1
    max_frames: int | None = None
    realtime: bool | None = None          # None: on for live sources, off for files
    mode: str = "overlay"
    alpha: float = 0.5
    label_lut: np.ndarray | None = None   # trainId -> written value (labelIds); None = trainIds
    fourcc: str | None = None
    queue_frames: int = 8                 # per bounded queue, in frames (at least 2 batches)
    progress: bool = False
    overwrite: bool = False               # --labels-dir may hold an earlier run's frames: replace them
    png_workers: int | None = None        # label PNG writers (None: from the CPUs, 0: in the writer)
    threaded_encode: bool = True          # encode the video in its own thread


@dataclass
class SourceResult:
    """What one source produced, and how fast each stage was."""

    source: str
    frames: int = 0                       # frames segmented and written
    decoded: int = 0                      # frames decoded (before stride/drops)
    dropped: int = 0                      # stale frames skipped in realtime mode
    size: tuple[int, int] | None = None   # (H, W) of the source frames
    fps: float = 0.0
    out: Path | None = None
    labels_dir: Path | None = None
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("decode", "inference", "render", "encode"), 0.0))
    wall_s: float = 0.0
    warning: str | None = None
    interrupted: bool = False             # Ctrl-C: outputs kept with the frames so far
    quit: bool = False                    # q pressed in the --show window
    realtime: bool = False
    encoder: str | None = None            # what encoded the video (hardware / threaded CPU ...)
    stage: str | None = None              # where inference and drawing ran

    @property
    def pipeline_fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def ms_per_frame(self, stage: str) -> float:
        n = self.decoded if stage == "decode" else self.frames
        return 1000.0 * self.seconds[stage] / n if n else 0.0

    def speed_line(self) -> str:
        stages = ", ".join(f"{s} {self.ms_per_frame(s):.1f} ms" for s in self.seconds)
        line = (f"speed: {stages} per frame; pipeline {self.pipeline_fps:.1f} FPS "
                f"({self.frames} frames in {self.wall_s:.2f} s)")
        if self.stage:
            line += f"; inference on {self.stage}"
        if self.encoder:
            line += f"; encoder: {self.encoder}"
        if self.realtime:
            line += f"; realtime: dropped {self.dropped} stale frames"
        return line


def _pace(start: float, index: int, fps: float) -> None:
    """Play a file in real time (``--realtime`` on a file): wait for the frame's timestamp."""
    delay = start + index / fps - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def _expected_frames(source: Source, opts: PipelineOptions) -> int | None:
    n = math.ceil(source.length / opts.vid_stride) if source.length is not None else None
    if opts.max_frames is not None:
        n = opts.max_frames if n is None else min(n, opts.max_frames)
    return n


@dataclass
class _Stages:
    """One source's reader, runner and renderer threads, and what they share: the queues between
    them, the ``stop`` / ``halt`` events, the result they count into, the first error or interrupt.
    """

    source: Source
    segmenter: SegmenterLike
    opts: PipelineOptions
    result: SourceResult
    render: Renderer | None
    batch: int
    stride: int
    q_frames: FifoQueue | LatestQueue
    q_labels: FifoQueue
    q_render: FifoQueue
    infer: HostStage | TorchDeviceStage
    # stop: everything ends now (error, main-thread Ctrl-C, q)
    # halt: only the reader ends; later stages finish what they hold
    stop: threading.Event = field(default_factory=threading.Event)
    halt: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    interrupts: list[BaseException] = field(default_factory=list)

    @classmethod
    def for_source(cls, source: Source, segmenter: SegmenterLike, opts: PipelineOptions,
                   result: SourceResult, *, draw: bool) -> _Stages:
        """Queues sized for the batch: a newest-frame slot for realtime, else bounded FIFOs."""
        batch = 1 if result.realtime else max(1, int(opts.batch))
        cap = max(opts.queue_frames, 2 * batch)
        render = Renderer(segmenter.meta.palette, mode=opts.mode, alpha=opts.alpha) if draw else None
        infer = device_stage(segmenter, render)
        result.stage = infer.name
        return cls(source=source, segmenter=segmenter, opts=opts, result=result, render=render,
                   batch=batch, stride=max(1, int(opts.vid_stride)),
                   q_frames=LatestQueue() if result.realtime else FifoQueue(cap),
                   q_labels=FifoQueue(cap), q_render=FifoQueue(cap), infer=infer)

    def threads(self) -> list[threading.Thread]:
        return [threading.Thread(target=self._guarded, args=(fn, down),
                                 name=f"cityseg-{fn.__name__}", daemon=True)
                for fn, down in ((self.reader, None), (self.runner, self.q_labels),
                                 (self.renderer, self.q_render))]

    def reader(self) -> None:
        """Decode, keep every ``stride``-th frame up to ``max_frames``, pace a realtime file."""
        source, opts, secs = self.source, self.opts, self.result.seconds
        try:
            frames = iter(source.frames())
            kept, start = 0, time.perf_counter()
            while opts.max_frames is None or kept < opts.max_frames:
                t0 = time.perf_counter()
                frame = next(frames, None)
                secs["decode"] += time.perf_counter() - t0
                if frame is None or self.halt.is_set():
                    break
                self.result.decoded += 1
                if frame.index % self.stride:
                    continue
                if self.result.realtime and not source.live:
                    _pace(start, frame.index, source.fps)
                self.q_frames.put(frame, self.halt)
                kept += 1
            self.q_frames.close(self.halt)
        finally:
            source.close()

    def runner(self) -> None:
        """Segment batches of frames; pass (frame, labels, drawn or None) on in order.

        Up to ``infer.depth`` batches are in flight: batch k+1 is submitted before batch k is
        collected, so a device computes while this thread feeds it (depth 1: one at a time)."""
        in_flight: list[tuple[list[Frame], Any]] = []
        ended = False
        while not ended or in_flight:
            items: list[Frame] = []
            if not ended:
                items, ended = self._next_batch()
                if items:
                    t0 = time.perf_counter()
                    in_flight.append((items, self.infer.submit([f.image for f in items])))
                    self.result.seconds["inference"] += time.perf_counter() - t0
            if in_flight and (len(in_flight) >= self.infer.depth or ended or not items):
                done, handle = in_flight.pop(0)
                t0 = time.perf_counter()
                labels, drawn = self.infer.collect(handle)
                self.result.seconds["inference"] += time.perf_counter() - t0
                for k, frame in enumerate(done):
                    self.q_labels.put((frame, labels[k], drawn[k] if drawn is not None else None),
                                      self.stop)
        self.q_labels.close(self.stop)

    def _next_batch(self) -> tuple[list[Frame], bool]:
        """Up to ``batch`` frames, and whether the input ended after them."""
        first = self.q_frames.get(self.stop)
        if first is END:
            return [], True
        items: list[Frame] = [first]
        while len(items) < self.batch:
            nxt = self.q_frames.get(self.stop)
            if nxt is END:
                return items, True
            items.append(nxt)
        return items, False

    def renderer(self) -> None:
        """Draw each frame's labels (overlay / side-by-side / mask) when a video or window wants it."""
        while True:
            item = self.q_labels.get(self.stop)
            if item is END:
                break
            frame, lab, drawn = item
            if drawn is None and self.render is not None:  # the host draws (the device did not)
                t0 = time.perf_counter()
                drawn = self.render(frame.image, lab)
                self.result.seconds["render"] += time.perf_counter() - t0
            self.q_render.put((frame.index, lab, drawn), self.stop)
        self.q_render.close(self.stop)

    def _guarded(self, fn: Callable[[], None], downstream: FifoQueue | None) -> None:
        """Run a stage; a KeyboardInterrupt raised inside it (a runner told to cancel) ends the
        input, lets the later stages write what is already done, then the main thread reports it;
        any other exception stops every stage and is re-raised in the main thread."""
        try:
            fn()
        except _Stopped:
            pass
        except KeyboardInterrupt as exc:
            self.interrupts.append(exc)
            self.halt.set()
            try:
                if downstream is not None:
                    downstream.close(self.stop)
            except _Stopped:
                pass
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            self.errors.append(exc)
            self.halt.set()
            self.stop.set()

    def next_drawn(self) -> Any:
        """The renderer's next (index, labels, drawn) or END; a stage's error is raised here."""
        if self.errors:
            raise self.errors[0]
        try:
            return self.q_render.get(self.stop)
        except _Stopped:
            raise self.errors[0] if self.errors else RuntimeError("pipeline stopped without an error")

    def shut_down(self, threads: list[threading.Thread]) -> None:
        self.halt.set()
        self.stop.set()
        for t in threads:
            t.join(timeout=5.0)


def _write(stages: _Stages, video: VideoSink | None, pngs: LabelPngSink | None,
           window: Window | None, bar: Any) -> None:
    """The writer stage, in the main thread: encode, save label PNGs, show; until END or q."""
    result = stages.result
    while True:
        item = stages.next_drawn()
        if item is END:
            return
        index, lab, drawn = item
        t0 = time.perf_counter()
        if video is not None:
            video.write(drawn)
        if pngs is not None:
            pngs.write(index, lab)
        keep_going = window.show(drawn) if window is not None else True
        result.seconds["encode"] += time.perf_counter() - t0
        result.frames += 1
        bar.update(1)
        if not keep_going:
            result.quit = True
            return


def run_source(source: Source, segmenter: SegmenterLike, *, out: str | os.PathLike | None = None,
               labels_dir: str | os.PathLike | None = None, window: Window | None = None,
               opts: PipelineOptions | None = None) -> SourceResult:
    """Segment every (kept) frame of an opened ``source``; write the video / PNGs / window.

    Returns when the source ends, ``max_frames`` is reached, q is pressed or Ctrl-C arrives (then
    ``interrupted`` is set and the outputs hold the frames so far).  Worker exceptions propagate,
    and then the partial video is removed.
    """
    opts = opts or PipelineOptions()
    realtime = source.live if opts.realtime is None else bool(opts.realtime)
    result = SourceResult(source=source.name, size=source.size, fps=source.fps, realtime=realtime)
    stages = _Stages.for_source(source, segmenter, opts, result,
                                draw=out is not None or window is not None)
    video, result.encoder = open_video(out, source.fps, opts) if out is not None else (None, None)
    pngs = (LabelPngSink(labels_dir, lut=opts.label_lut, workers=png_workers(opts))
            if labels_dir is not None else None)
    result.labels_dir = Path(labels_dir) if labels_dir is not None else None
    threads = stages.threads()
    from tqdm import tqdm

    bar = tqdm(total=_expected_frames(source, opts), unit="frame", desc=source.stem,
               disable=not opts.progress, leave=False)
    ok = False
    stages.infer.warm_up(stages.batch)
    start = time.perf_counter()
    try:
        for t in threads:
            t.start()
        _write(stages, video, pngs, window, bar)
        if stages.interrupts:
            raise stages.interrupts[0]
        ok = True
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        stages.shut_down(threads)
        bar.close()
        _close_sinks(result, video, pngs, keep=ok or result.interrupted, raising=ok)
        result.wall_s = time.perf_counter() - start  # with the frames still queued for writing
    result.dropped = stages.q_frames.dropped
    result.warning = source.warning
    return result


def png_workers(opts: PipelineOptions) -> int:
    """Label PNG writer threads: as asked, else :func:`cityseg_deploy.png_pool.default_workers`."""
    if opts.png_workers is not None:
        return max(0, int(opts.png_workers))
    return default_workers()


def open_video(out: str | os.PathLike, fps: float, opts: PipelineOptions
               ) -> tuple[VideoSink | ThreadedVideoSink, str]:
    """The video sink and the name of its encoder: hardware where OpenCV grants one for the
    FourCC (read back, never assumed), else the CPU encoder — in its own thread unless
    ``threaded_encode`` is off."""
    fourcc = opts.fourcc or FOURCC_BY_SUFFIX.get(Path(out).suffix.lower())
    hardware = probe_hardware(fourcc) if fourcc and len(fourcc) == 4 else None
    sink = VideoSink(out, fps, fourcc=opts.fourcc, params=hardware_params() if hardware else None)
    name = f"{sink.fourcc} {'hardware (' + hardware + ')' if hardware else 'CPU'}"
    if not opts.threaded_encode:
        return sink, name
    return ThreadedVideoSink(sink), name + ", own thread"


def _close_sinks(result: SourceResult, video, pngs, *, keep: bool, raising: bool) -> None:
    """Drain and close the sinks; their errors raise only when the run itself succeeded (else
    the run's own error is the one to see, and the partial video goes)."""
    try:
        if pngs is not None:
            pngs.close()
    except BaseException:
        keep = False
        if raising:
            if video is not None:
                video.close(keep=False)
            raise
    if video is not None:
        try:
            result.out = video.close(keep=keep)
        except BaseException:
            if raising:
                raise


def output_paths(sources: list[Source], out: str | os.PathLike | None,
                 labels_dir: str | os.PathLike | None) -> list[tuple[Path | None, Path | None]]:
    """One source: the paths as given.  Several: ``<out-stem>_<source-stem><suffix>`` and
    ``<labels-dir>/<source-stem>/`` so outputs of a list file never collide."""
    if len(sources) == 1:
        return [(Path(out) if out is not None else None, Path(labels_dir) if labels_dir is not None else None)]
    paths = []
    for src in sources:
        o = Path(out) if out is not None else None
        what = f"source {src.name}"
        paths.append((child_path(o.parent, f"{o.stem}_{src.stem}{o.suffix}", what=what) if o is not None else None,
                      child_path(labels_dir, src.stem, what=what) if labels_dir is not None else None))
    return paths


def run_sources(sources: list[Source], segmenter: SegmenterLike, *, out: str | os.PathLike | None = None,
                labels_dir: str | os.PathLike | None = None, window: Window | None = None,
                opts: PipelineOptions | None = None,
                echo: Callable[[str], None] = lambda s: None) -> list[SourceResult]:
    """Process sources one after another; stop early on Ctrl-C or q.  Opens each source lazily so
    an unopenable one fails before anything is written for it."""
    opts = opts or PipelineOptions()
    paths = output_paths(sources, out, labels_dir)
    check_outputs(paths, overwrite=opts.overwrite)
    results: list[SourceResult] = []
    for i, (src, (o, ld)) in enumerate(zip(sources, paths), 1):
        src.open()
        prefix = f"source {i}/{len(sources)} " if len(sources) > 1 else "source "
        echo(prefix + src.describe())
        created = ld is not None and not ld.exists()
        if ld is not None and opts.overwrite:
            clear_labels_dir(ld)  # before the first new frame: never old frames beside new ones
        res = run_source(src, segmenter, out=o, labels_dir=ld, window=window, opts=opts)
        results.append(res)
        if res.interrupted or res.quit:
            break
        if res.decoded == 0:
            if created and ld.is_dir() and not any(ld.iterdir()):
                ld.rmdir()
            why = f" ({src.warning})" if src.warning else ""
            raise CitysegError(f"{src.name}: no frame could be decoded{why}; an empty or corrupt "
                               "video — check the file (ffprobe) or re-encode it")
    return results


def check_outputs(paths: list[tuple[Path | None, Path | None]], *, overwrite: bool) -> None:
    """Refuse, before any work, label folders that hold an earlier run's frames (unless overwrite)."""
    for _, ld in paths:
        if ld is not None:
            check_labels_dir(ld, overwrite=overwrite)


def iter_results_summary(results: Iterable[SourceResult]) -> SourceResult:
    """Sum several sources' results into one (for the closing speed line)."""
    total = SourceResult(source="all")
    for r in results:
        total.frames += r.frames
        total.decoded += r.decoded
        total.dropped += r.dropped
        total.wall_s += r.wall_s
        total.realtime = total.realtime or r.realtime
        total.stage = total.stage or r.stage        # one runner for every source
        total.encoder = total.encoder or r.encoder
        for k, v in r.seconds.items():
            total.seconds[k] += v
    return total
