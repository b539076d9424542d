"""The one ``Segmenter`` every backend implements: images in, trainId maps out.

Why one class with stage hooks: evaluation, checking, benchmarking and video all talk to a
``Segmenter`` and never to a backend's internals (the Polygraphy runner pattern).  The base class
owns what is the same everywhere — validating images, resizing them to the model's size,
normalising from the artifact's metadata, cutting batches to what a static graph accepts,
and resizing label maps back to each input's size with nearest neighbour — and a backend fills
four hooks, each one timed stage of the benchmark:

``preprocess`` (host: build the graph's input from NHWC uint8 at model size) → ``to_device``
(host→device copy) → ``compute`` (the network) → ``to_host`` (argmax on the device, then the
device→host copy of the labels; logits only when asked).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from ..artifacts import check_meta_io, read_artifact_meta
from ..system.timing import NullTimer
from ..errors import CitysegError
from ..models.checkpoint import ModelMeta
from ..precision import PRECISIONS, RUN_PRECISIONS

_NULL = NullTimer()


def check_precision(precision: str | None) -> str | None:
    if precision is not None and precision not in RUN_PRECISIONS:
        raise CitysegError(f"precision {precision!r}: choose one of {', '.join(RUN_PRECISIONS)}")
    return precision


def artifact_metadata(path: str | os.PathLike, kind: str,
                      metadata: tuple[ModelMeta, dict[str, Any]] | None) -> tuple[ModelMeta, dict[str, Any]]:
    """(meta, io) of the artifact: the one handed in (an export checking the file it is about to
    put under its final name, whose sidecar is not written yet), else what the artifact carries.
    Handed-in metadata passes the same field checks as read metadata."""
    if metadata is None:
        return read_artifact_meta(path, kind)
    meta, io = metadata
    check_meta_io(meta, io, f"metadata for {Path(path).name}")
    return meta, dict(io)


def as_image_list(images: Any) -> tuple[list[np.ndarray], bool]:
    """Validate ``images`` (HxWx3 | NxHxWx3 | list of HxWx3, uint8 RGB); return (list, single)."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            items, single = [images], True
        elif images.ndim == 4:
            items, single = list(images), False
        else:
            raise CitysegError(f"image of shape {images.shape}: expected HxWx3 RGB (or NxHxWx3)")
    elif isinstance(images, (list, tuple)):
        items, single = list(images), False
        if not items:
            raise CitysegError("empty list of images")
    else:
        raise CitysegError(f"expected a numpy HxWx3 uint8 RGB image, got {type(images).__name__}")
    for k, image in enumerate(items):
        if not isinstance(image, np.ndarray):
            raise CitysegError(f"image {k}: expected a numpy array, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[-1] != 3:
            channels = 1 if image.ndim == 2 else image.shape[-1]
            raise CitysegError(f"image {k} of shape {image.shape}: expected HxWx3 RGB, got "
                               f"{channels} channel(s); convert it (e.g. cv2.cvtColor) first")
        if image.dtype != np.uint8:
            raise CitysegError(f"image {k}: dtype {image.dtype}, expected uint8 RGB 0..255; "
                               "pass the decoded image, not a normalised tensor")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise CitysegError(f"image {k}: empty image of shape {image.shape}")
    return items, single


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def resize_labels(labels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    h, w = int(size[0]), int(size[1])
    if labels.shape[:2] == (h, w):
        return labels
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)


def normalise_nchw(nhwc: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """NHWC uint8 → NCHW float32 ``(x/255 - mean) / std`` (one fused multiply-add per channel)."""
    n, h, w, _ = nhwc.shape
    out = np.empty((n, 3, h, w), dtype=np.float32)
    for c in range(3):
        scale = np.float32(1.0 / (255.0 * std[c]))
        bias = np.float32(mean[c] / std[c])
        np.multiply(nhwc[..., c], scale, out=out[:, c], dtype=np.float32)
        out[:, c] -= bias
    return out


def device_normaliser(mean: Sequence[float], std: Sequence[float], device) -> Callable[[Any], Any]:
    """NHWC uint8 torch tensor on ``device`` → NCHW float32 ``(x/255 - mean) / std`` there.

    Why on the device: the upload is then 1 byte per channel instead of 4 and the host does no
    float work (onnxruntime-gpu on an H100 spent 2.25 ms of a 6.58 ms DeepLabV3 frame
    normalising on the host).  Same arithmetic as :func:`normalise_nchw`.
    """
    import torch

    scale = 1.0 / (255.0 * torch.tensor(std, device=device).view(1, 3, 1, 1))
    bias = torch.tensor(mean, device=device).view(1, 3, 1, 1) / torch.tensor(std, device=device).view(1, 3, 1, 1)
    return lambda nhwc: nhwc.permute(0, 3, 1, 2).float().mul_(scale).sub_(bias)


def argmax_labels(logits) -> np.ndarray:
    """NCHW logits (numpy or torch, any device) → NxHxW uint8 on the host; argmax where they live.

    On CPU a running maximum over the contiguous class planes replaces ``argmax(1)``: torch's
    argmax over the channel dimension of NCHW is a strided reduction — 83 ms for 19x512x1024 on
    2 AVX2 cores, against 24 ms here (numpy's argmax: 53 ms).  Same labels: a strict ``>`` keeps
    the lowest index on ties, as argmax does.
    """
    import torch

    t = torch.from_numpy(np.ascontiguousarray(logits)) if isinstance(logits, np.ndarray) else logits
    if t.device.type != "cpu":
        return t.argmax(1).to(torch.uint8).cpu().numpy()
    best = t[:, 0].clone()
    labels = torch.zeros((t.shape[0], *t.shape[2:]), dtype=torch.uint8)
    for k in range(1, t.shape[1]):
        plane = t[:, k]
        labels.masked_fill_(plane > best, k)
        torch.maximum(best, plane, out=best)
    return labels.numpy()


def labels_array(y) -> np.ndarray:
    """A graph's label output (N,H,W) or (N,1,H,W), any int type → NxHxW uint8 on the host."""
    import torch

    if isinstance(y, torch.Tensor):
        y = y.to(torch.uint8).cpu().numpy()
    y = np.asarray(y)
    if y.ndim == 4:
        y = y[:, 0]
    return y.astype(np.uint8, copy=False)


_FLAGS = (("channels_last", "channels_last"), ("cuda_graphs", "cuda-graphs"),
          ("cuda_graph", "cuda-graph"), ("compiled", "torch.compile"))


def describe_runner(d: dict[str, Any]) -> str:
    """``describe()`` → ``"torch fp16 channels_last cuda-graphs on cuda:0 (threads n/a)"``.

    Why from the dict: every backend already reports what it runs there (providers, inference
    hints, graphs); one formatter keeps the line the same shape for all of them.  CPU threads
    matter only where the host computes: on a GPU they read ``n/a``.
    """
    words = [str(d.get("backend", "?")), str(d.get("inference_precision") or d.get("precision") or "?")]
    for key, word in _FLAGS:
        value = d.get(key)
        if value:
            words.append(word if value is True else f"{word}={value}")
    if d.get("autocast"):
        words.append(f"autocast-{d['autocast']}")
    device = str(d.get("device", "cpu"))
    where = d.get("ov_device") or device
    gpu = device.startswith("cuda") or str(where).upper().startswith("GPU")
    threads = d.get("threads")
    shown = ("threads n/a" if gpu else f"{threads} thread{'' if threads == 1 else 's'}" if threads
             else "default threads")
    line = f"{' '.join(words)} on {where} ({shown})"
    if d.get("fallback"):
        line += f"; {d['fallback']}"
    return line


def runner_of(segmenter: Any) -> str | None:
    """``segmenter.runner()`` for a Segmenter; None for a stand-in that runs elsewhere (a Ray
    engine's remote model: its actors say what ran)."""
    runner = getattr(segmenter, "runner", None)
    return runner() if callable(runner) else None


class Segmenter:
    """Base runner.  Subclasses set ``backend`` and implement ``compute`` (and the hooks they need).

    Attributes: ``meta`` (ModelMeta), ``io`` (artifact io dict), ``backend``, ``precision``,
    ``device``, ``input_size`` (H, W the network runs at), ``input_format`` ("float_nchw" |
    "uint8_nhwc" as fed to ``compute``), ``outputs_logits``, ``max_batch`` (None = any).
    """

    backend = "base"

    def __init__(self, path: str | os.PathLike, meta: ModelMeta, io: dict[str, Any], *,
                 device: str = "cpu", precision: str | None = None,
                 threads: int | None = None, size: Sequence[int] | None = None):
        self.path = Path(path)
        self.meta = meta
        self.io = dict(io)
        self.device = str(device)
        self.precision = precision or self.io.get("precision", "fp32")
        self.threads = threads
        art_size = tuple(int(v) for v in (self.io.get("size") or meta.input_size))
        if size is not None and tuple(size) != art_size and not self.io.get("dynamic", False):
            raise CitysegError(f"{self.path}: a static graph for {art_size[0]}x{art_size[1]} "
                               f"cannot run at {size[0]}x{size[1]}; re-export with --size "
                               f"{size[0]}x{size[1]} (or --dynamic)")
        self.input_size = tuple(int(v) for v in (size or art_size))
        self.input_format = self.io.get("input", "float_nchw")
        self.outputs_logits = self.io.get("output", "logits") == "logits"
        self.max_batch = None if self.io.get("dynamic", False) else int(self.io.get("batch", 1) or 1)
        self.mean = [float(v) for v in meta.mean]
        self.std = [float(v) for v in meta.std]

    # ---- description ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    def describe(self) -> dict[str, Any]:
        """What actually runs (backend, device, precision, providers, hints ...), for reports."""
        return {"backend": self.backend, "device": self.device, "precision": self.precision,
                "input_size": list(self.input_size), "input": self.input_format,
                "output": "logits" if self.outputs_logits else "labels", "threads": self.threads}

    def runner(self) -> str:
        """What runs, in words, for every command that runs a model (printed as ``runner: …``,
        stored as JSON's ``runner``): ``torch fp16 channels_last cuda-graphs on cuda:0 (threads
        n/a)``, ``onnxruntime int8 on cpu (2 threads)``.  Built from :meth:`describe` only."""
        return describe_runner(self.describe())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path.name!r}, backend={self.backend}, "
                f"device={self.device}, precision={self.precision}, size={self.input_size})")

    def hold_threads(self, torch_threads: int | None) -> None:
        """Hold torch's intra-op pool at ``torch_threads`` while this runner is open (restored by
        :meth:`close`; system/threads.py): the runner's count for torch and AOTInductor, 1 for a
        CPU runner of another library so two pools do not both run at full width."""
        from ..system.threads import TorchThreads

        self._torch_threads = TorchThreads(torch_threads)

    def close(self) -> None:
        """Release backend resources (sessions, engines) and put torch's thread count back.
        Subclasses that free more call ``super().close()``."""
        hold = getattr(self, "_torch_threads", None)
        if hold is not None:
            hold.restore()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- stage hooks (override in backends) -------------------------------------------------
    def preprocess(self, nhwc: np.ndarray) -> Any:
        """NHWC uint8 at model size → what ``to_device`` takes (default: the graph's host input)."""
        if self.input_format == "uint8_nhwc":
            return np.ascontiguousarray(nhwc)
        return normalise_nchw(nhwc, self.mean, self.std)

    def to_device(self, x: Any) -> Any:
        return x

    def compute(self, x: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_host(self, y: Any, want_logits: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(NxHxW uint8 labels, NCHW float32 logits or None) on the host."""
        if not self.outputs_logits:
            return labels_array(y), None
        labels = argmax_labels(y)
        logits = None
        if want_logits:
            import torch

            logits = (y.float().cpu().numpy() if isinstance(y, torch.Tensor)
                      else np.array(y, dtype=np.float32, copy=True))
        return labels, logits

    # ---- the pipeline ----------------------------------------------------------------------
    def _run_chunks(self, nhwc: np.ndarray, want_logits: bool, timer) -> tuple[np.ndarray, np.ndarray | None]:
        """Run NHWC uint8 (model size) through the hooks in batches the graph accepts."""
        n = nhwc.shape[0]
        step = self.max_batch or n
        labels, logits = [], []
        for start in range(0, n, step):
            chunk = nhwc[start:start + step]
            real = chunk.shape[0]
            if self.max_batch and real < self.max_batch:  # pad a static batch with copies
                pad = np.repeat(chunk[-1:], self.max_batch - real, axis=0)
                chunk = np.concatenate([chunk, pad])
            with timer.stage("preprocess"):
                x = self.preprocess(chunk)
            with timer.stage("h2d"):
                xd = self.to_device(x)
            with timer.stage("compute"):
                yd = self.compute(xd)
            with timer.stage("d2h"):
                lab, lg = self.to_host(yd, want_logits)
            labels.append(lab[:real])
            if lg is not None:
                logits.append(lg[:real])
        out_logits = np.concatenate(logits) if logits else None
        return np.concatenate(labels), out_logits

    def run(self, images: Any, *, want_logits: bool = False, timer=None
            ) -> tuple[list[np.ndarray], np.ndarray | None, bool]:
        """Full pipeline: (label maps at each input's size, logits at model size or None, single)."""
        timer = timer or _NULL
        items, single = as_image_list(images)
        with timer.stage("preprocess"):
            resized = [resize_image(im, self.input_size) for im in items]
            # one image: a view, not a copy (the 1.5 MB copy of a 512x1024 frame was ~0.15 ms of
            # a 5.5 ms U-Net frame on an H100); the stages below only read it
            nhwc = resized[0][None] if len(resized) == 1 else np.stack(resized)
        labels, logits = self._run_chunks(nhwc, want_logits, timer)
        with timer.stage("postprocess"):
            out = [resize_labels(lab, im.shape[:2]) for lab, im in zip(labels, items)]
        return out, logits, single

    def predict(self, images: Any) -> np.ndarray | list[np.ndarray]:
        """HxWx3 uint8 RGB → HxW uint8 trainIds at the input's size; batches → NxHxW (a list
        when the images differ in size)."""
        out, _, single = self.run(images)
        if single:
            return out[0]
        if len({o.shape for o in out}) == 1:
            return np.stack(out)
        return out

    def predict_logits(self, images: Any) -> np.ndarray | None:
        """NCHW float32 logits at the model's size, or None where the artifact outputs labels."""
        if not self.outputs_logits:
            return None
        _, logits, _ = self.run(images, want_logits=True)
        return logits

    __call__ = predict
