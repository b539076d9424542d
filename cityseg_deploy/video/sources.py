"""Where frames come from: video files, image folders/globs, cameras, network streams, list files.

Every source yields RGB uint8 frames with their source frame index, and says up front what is
known about it (name, FPS, size, frame count, whether it is live).  Decoding goes through OpenCV's
FFmpeg backend; the capture object is created by an injectable factory so tests can drive the
reconnect logic with a fake capture instead of a network server.

Damage is not fatal: a file that stops decoding early ends the stream and leaves a warning
(``source.warning``) saying how many of the declared frames were read, so the caller finishes its
outputs with what it has.  A live stream that drops reconnects with exponential back-off, at most
``reconnect`` attempts in a row.
"""
from __future__ import annotations

import glob as _glob
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import cv2
import numpy as np

from ..errors import CitysegError
from ..fileio import read_rgb
from ..redact import redact, strip_userinfo
from ..native_logs import ffmpeg_says

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
LIST_EXTS = (".txt", ".streams")
URL_RE = re.compile(r"^(rtsp|rtsps|rtmp|rtmps|http|https|udp|tcp|srt)://", re.I)
DEFAULT_FPS = 30.0  # used where a source declares none (image folders, some cameras/streams)


@dataclass
class Frame:
    """One decoded frame: its position in the source (before stride) and the RGB pixels."""

    index: int
    image: np.ndarray  # HxWx3 uint8 RGB


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` a source uses (fakes implement just this)."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, Any]: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


def _sane_fps(value: float) -> float:
    """Containers and cameras report 0, NaN or 1000 when they do not know; fall back to 30."""
    return float(value) if value and math.isfinite(value) and 0 < value <= 240 else DEFAULT_FPS


class Source:
    """Base class: ``open()`` then iterate ``frames()``; ``close()`` is idempotent."""

    name: str = ""
    stem: str = "source"
    live: bool = False
    fps: float = DEFAULT_FPS
    size: tuple[int, int] | None = None  # (H, W) when known
    length: int | None = None            # frame count when known
    warning: str | None = None           # set when the stream ended early (damage)

    def open(self) -> "Source":
        return self

    def frames(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        """One line: name, frame count, resolution, FPS (what a user checks first)."""
        count = f"{self.length} frames" if self.length is not None else "live" if self.live else "? frames"
        res = f"{self.size[1]}x{self.size[0]}" if self.size else "?x?"
        return f"{self.name}: {count}, {res}, {self.fps:.2f} fps"


class VideoSource(Source):
    """A video file, a camera index or a network URL, read through a ``cv2.VideoCapture``.

    ``capture_factory(target)`` makes the capture (``cv2.VideoCapture`` by default); ``sleep`` is
    injectable so reconnect back-off does not slow tests.
    """

    def __init__(self, target: str | int, *, reconnect: int = 5, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0,
                 capture_factory: Callable[[str | int], Capture] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.target = target
        self.camera = isinstance(target, int)
        self.url = isinstance(target, str) and bool(URL_RE.match(target))
        self.live = self.camera or self.url
        self.reconnect = max(0, int(reconnect))
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._factory = capture_factory or cv2.VideoCapture
        self._sleep = sleep
        self._cap: Capture | None = None
        self.reconnects = 0  # successful reconnects, reported by the pipeline
        if self.camera:
            self.name, self.stem = f"camera {target}", f"camera{target}"
        elif self.url:
            # Credentials never reach names, stems (file names, progress bars) or messages.
            self.name = redact(str(target))
            tail = re.sub(r"[^A-Za-z0-9_-]+", "_", strip_userinfo(str(target)).split("://", 1)[1]).strip("_")
            self.stem = tail[-40:] or "stream"
        else:
            self.name, self.stem = str(target), Path(str(target)).stem

    def _make(self) -> Capture | None:
        try:
            cap = self._factory(self.target)
        except (cv2.error, OSError):
            return None
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        return cap

    def open(self) -> "VideoSource":
        if self._cap is not None:  # idempotent: the CLI opens the first source early to fail fast
            return self
        if not self.live and not Path(str(self.target)).is_file():
            raise CitysegError(f"{self.target}: no such file, folder, camera or URL; "
                               f"check the path (SOURCE is a video, image folder, glob, camera "
                               f"index, rtsp/rtmp/http URL or a .txt/.streams list)")
        self._cap = self._make()
        if self._cap is None:
            hint = ("check the URL/camera and that it is reachable" if self.live else
                    "the file is corrupt, truncated before its index (an .mp4 cut short loses "
                    "its moov atom), or not a video FFmpeg can decode")
            said = "" if self.live else ffmpeg_says(str(self.target))
            said = f" (FFmpeg: {said})" if said else ""
            raise CitysegError(f"{self.name}: cannot open as a video{said}; {hint}")
        cap = self._cap
        self.fps = _sane_fps(cap.get(cv2.CAP_PROP_FPS))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self.size = (h, w) if h > 0 and w > 0 else None
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.length = int(count) if not self.live and count and count > 0 and math.isfinite(count) else None
        return self

    def _read(self) -> np.ndarray | None:
        assert self._cap is not None
        try:
            ok, image = self._cap.read()
        except cv2.error:
            return None
        return image if ok and image is not None and image.size else None

    def _reopen(self) -> bool:
        """Reconnect with exponential back-off; False once ``reconnect`` attempts in a row failed."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        for attempt in range(self.reconnect):
            self._sleep(min(self.backoff_s * (2 ** attempt), self.max_backoff_s))
            cap = self._make()
            if cap is not None:
                self._cap = cap
                self.reconnects += 1
                return True
        return False

    def frames(self) -> Iterator[Frame]:
        if self._cap is None:
            self.open()
        index = 0
        while True:
            bgr = self._read()
            if bgr is None:
                if self.live and self._reopen():
                    continue
                break
            yield Frame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3
                        else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB))
            index += 1
        if self.live and self.reconnect and self._cap is None:
            self.warning = (f"{self.name}: stream lost after {index} frames; gave up after "
                            f"{self.reconnect} reconnect attempts")
        elif self.length is not None and index < self.length:
            self.warning = (f"{self.name}: decoding stopped at frame {index} of {self.length} "
                            f"declared (file truncated or corrupt); kept the {index} frames read")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageSequenceSource(Source):
    """Sorted image files (a folder or a glob) read as consecutive frames."""

    def __init__(self, paths: list[Path], name: str, stem: str, fps: float = DEFAULT_FPS) -> None:
        self.paths = paths
        self.name, self.stem, self.fps = name, stem, fps
        self.length = len(paths)

    def open(self) -> "ImageSequenceSource":
        if self.size is not None:
            return self
        first = read_rgb(self.paths[0])
        self.size = first.shape[:2]
        return self

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            yield Frame(index, read_rgb(path))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def open_one(spec: str, *, reconnect: int = 5, fps: float | None = None,
             capture_factory: Callable[[str | int], Capture] | None = None) -> Source:
    """Turn one SOURCE string into a :class:`Source` (not yet opened)."""
    spec = spec.strip()
    if re.fullmatch(r"\d+", spec):
        return VideoSource(int(spec), reconnect=reconnect, capture_factory=capture_factory)
    if URL_RE.match(spec):
        return VideoSource(spec, reconnect=reconnect, capture_factory=capture_factory)
    path = Path(spec).expanduser()
    if path.is_dir():
        images = _images_in(path)
        if not images:
            raise CitysegError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTS)}); "
                               f"point SOURCE at a video file or an image folder")
        return ImageSequenceSource(images, str(path), path.name or "images", fps or DEFAULT_FPS)
    if not path.exists() and _is_glob(spec):
        images = sorted(Path(p) for p in _glob.glob(os.path.expanduser(spec))
                        if Path(p).suffix.lower() in IMAGE_EXTS)
        if not images:
            raise CitysegError(f"{spec}: the glob matches no images; check the pattern")
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(spec).parent.name or "images")
        return ImageSequenceSource(images, spec, stem, fps or DEFAULT_FPS)
    if not path.exists():
        raise CitysegError(f"{spec}: no such file, folder, camera or URL; SOURCE is a video, image "
                           f"folder, glob, camera index, rtsp/rtmp/http URL or a .txt/.streams list")
    if path.suffix.lower() in IMAGE_EXTS and path.is_file():
        return ImageSequenceSource([path], str(path), path.stem, fps or DEFAULT_FPS)
    return VideoSource(str(path), reconnect=reconnect, capture_factory=capture_factory)


#: list files may name list files; deeper than this is refused (a generated chain, not a cycle)
MAX_LIST_DEPTH = 16
#: entries all lists of one argument may expand to (lists naming a list 10 times, 16 deep, would
#: be 10^16: the list-file form of a billion-laughs bomb), and the largest list file read
MAX_LIST_ENTRIES = 100_000
MAX_LIST_BYTES = 16 << 20


def _is_list(entry: str) -> bool:
    return Path(entry).suffix.lower() in LIST_EXTS and Path(entry).is_file()


def _list_lines(path: Path) -> list[str]:
    """The list's lines as UTF-8 text; a file in another encoding names its first bad line."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_LIST_BYTES + 1)
    except OSError as exc:
        raise CitysegError(f"{path}: cannot read the list file "
                           f"({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_LIST_BYTES:
        raise CitysegError(f"{path}: a list file over {MAX_LIST_BYTES >> 20} MB; is it a list? "
                           "split it, or name a folder or glob instead")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CitysegError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column "
                           f"{column}; a Latin-1 or other 8-bit file?); save the list as UTF-8") from None
    return text.splitlines()


def read_list(path: Path, *, what: str = "sources", _within: tuple[Path, ...] = (),
              _count: list[int] | None = None) -> list[str]:
    """A list file's entries, one a line (``#`` comments and blank lines skipped); relative
    paths are taken relative to the list file's folder, so a list travels with its files.

    An entry that is itself a list file is expanded in place; a list that names itself, or two
    that name each other, is refused naming the file and line (it used to recurse until
    ``RecursionError``).
    """
    path = Path(path)
    here = path.resolve()
    chain = (*_within, here)
    count = [0] if _count is None else _count  # entries so far, across every nested list
    lines = [ln.strip() for ln in _list_lines(path)]
    numbered = [(i, ln) for i, ln in enumerate(lines, 1) if ln and not ln.startswith("#")]
    if not numbered:
        raise CitysegError(f"{path}: list file names no {what}; put one per line")
    specs: list[str] = []
    for lineno, entry in numbered:
        if not (URL_RE.match(entry) or re.fullmatch(r"\d+", entry) or Path(entry).is_absolute()):
            entry = str(path.parent / entry)
        if _is_list(entry):
            target = Path(entry).resolve()
            if target in chain:
                loop = " -> ".join(str(p) for p in chain[chain.index(target):]) + f" -> {target}"
                raise CitysegError(f"{path}:{lineno}: names {entry}, a list file already being read "
                                   f"({loop}); a list cannot include itself — remove that line")
            if len(chain) >= MAX_LIST_DEPTH:
                raise CitysegError(f"{path}:{lineno}: list files nested more than {MAX_LIST_DEPTH} "
                                   f"deep; name the {what} directly")
            specs.extend(read_list(Path(entry), what=what, _within=chain, _count=count))
            continue
        count[0] += 1
        if count[0] > MAX_LIST_ENTRIES:
            raise CitysegError(f"{path}:{lineno}: the list files expand to more than "
                               f"{MAX_LIST_ENTRIES:,} entries (a list named many times over?); "
                               f"name the {what} directly")
        specs.append(entry)
    return specs


def image_paths(spec: str) -> list[Path]:
    """``predict --images``: a folder (its images, sorted, not recursive), a glob (sorted) or a
    ``.txt`` list file (one image, folder or glob a line, relative to the list's folder).

    Why not :func:`open_one`: predict takes still images only, so a video, camera or URL here
    is a mistake worth one clear line rather than a stream."""
    path = Path(spec).expanduser()
    if path.suffix.lower() in LIST_EXTS and path.is_file():
        return [p for entry in read_list(path, what="images") for p in image_paths(entry)]
    if path.is_dir():
        images = _images_in(path)
        if not images:
            raise CitysegError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTS)})")
        return images
    if not path.exists() and _is_glob(spec):
        images = sorted(Path(p) for p in _glob.glob(os.path.expanduser(spec))
                        if Path(p).suffix.lower() in IMAGE_EXTS and Path(p).is_file())
        if not images:
            raise CitysegError(f"{spec}: the glob matches no images; check the pattern")
        return images
    if not path.exists():
        raise CitysegError(f"{spec}: no such image, folder, glob or .txt list; --images takes one "
                           "of those")
    if path.suffix.lower() in IMAGE_EXTS and path.is_file():
        return [path]
    raise CitysegError(f"{spec}: not an image ({', '.join(IMAGE_EXTS)}), folder, glob or .txt list")


def parse_sources(spec: str, **kwargs: Any) -> list[Source]:
    """SOURCE → sources: a ``.txt``/``.streams`` list file gives several, anything else one.

    List files hold one source per line (``#`` comments, blank lines skipped); relative paths are
    taken relative to the list file.  Stems are made unique so per-source outputs never collide.
    """
    path = Path(spec)
    if path.suffix.lower() in LIST_EXTS and path.is_file():
        sources = [open_one(s, **kwargs) for s in read_list(path, what="sources")]
    else:
        sources = [open_one(spec, **kwargs)]
    unique_stems(sources)
    return sources


def sources_of(specs: list[str] | tuple[str, ...], **kwargs: Any) -> list[Source]:
    """Every SOURCE argument (each a source or a list file) → sources with unique output stems,
    named across all arguments at once (``segment a/cam.avi b/cam.avi`` → ``a_cam``, ``b_cam``)."""
    sources = [src for spec in specs for src in parse_sources(spec, **kwargs)]
    unique_stems(sources)
    return sources


def _identity(src: Source) -> str:
    """What makes a source itself: its absolute path, its URL without credentials, its camera."""
    if isinstance(src, VideoSource):
        if src.camera:
            return f"camera:{src.target}"
        if src.url:
            return strip_userinfo(str(src.target))
        return os.path.abspath(str(src.target))
    return os.path.abspath(src.name) if not _is_glob(src.name) else src.name


def _qualified(src: Source, identity: str, base: str) -> str:
    """``<parent folder>_<stem>`` for a file or folder source; the stem itself otherwise."""
    if isinstance(src, VideoSource) and (src.camera or src.url):
        return base
    parent = Path(identity).parent.name
    parent = re.sub(r"[^A-Za-z0-9_-]+", "_", parent).strip("_")
    return f"{parent}_{base}" if parent else base


def unique_stems(sources: list[Source]) -> None:
    """Give every source an output stem no other source has, derived from its path.

    Why: several sources named ``cam`` wrote the same outputs, and the old counter suffix
    (``cam_1``) collided with a real ``cam_1.avi``.  A stem shared by several sources becomes
    ``<parent folder>_<stem>``; one still shared (``a/cam`` and ``a_cam``) gets 8 hex digits of
    its path's SHA-1 — a name made from what the source is, never from the order it came in, so
    no rename can land on another source's name.  The same source given twice is refused.
    """
    import hashlib
    from collections import Counter

    for src in sources:  # the stem the source came with, kept across calls
        if not hasattr(src, "base_stem"):
            src.base_stem = src.stem
    ids = [_identity(s) for s in sources]
    twice = [i for i, n in Counter(ids).items() if n > 1]
    if twice:
        raise CitysegError(f"{redact(twice[0])}: given more than once (directly or through a list "
                           "file); its outputs would overwrite each other — name each source once")
    names = [s.base_stem for s in sources]
    shared = Counter(names)
    names = [_qualified(s, i, n) if shared[n] > 1 else n for s, i, n in zip(sources, ids, names)]
    shared = Counter(names)
    names = [f"{n}-{hashlib.sha1(i.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
             if shared[n] > 1 else n for i, n in zip(ids, names)]
    clash = [n for n, c in Counter(names).items() if c > 1]
    if clash:  # pragma: no cover - distinct paths whose hashes and names both coincide
        raise CitysegError(f"sources: two would write outputs named {clash[0]!r}; rename one")
    for src, name in zip(sources, names):
        src.stem = name
