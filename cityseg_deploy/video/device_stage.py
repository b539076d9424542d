"""The inference stage of ``segment``: frames in, (labels, drawn frame or None) out, overlapped.

Two implementations behind one ``submit`` / ``collect`` pair, so the pipeline's structure is the
same on every device:

- :class:`HostStage` (any runner, the CPU path): ``Segmenter.predict`` per batch; drawing is left
  to the pipeline's renderer thread (OpenCV, which releases the GIL).  ``depth`` 1: nothing to
  overlap inside the stage — the reader, renderer and writer threads already run beside it.
- :class:`TorchDeviceStage` (the PyTorch runner on CUDA): uint8 frames go into a pinned host
  slot, up with ``non_blocking``; resize, normalise, the network (its CUDA graph), argmax,
  colourise and overlay all run on the device; labels and the drawn frame come back into pinned
  slots, and an event marks them done.  ``depth`` batches are in flight (double buffering): the
  host decodes, writes and enqueues batch k+1 while the GPU computes batch k, so the GPU does not
  wait for the host's per-frame work (on an H200 the inference stage of ``segment`` took 13-17 ms
  a frame where the network alone took 4.5: pinning and argmax synchronised every frame).

One CUDA stream (the current one) orders everything: a CUDA graph's static output is read by
argmax before the next replay overwrites it; the overlap is host against device.  The stage runs
on any torch device (on a CPU the pinning and events drop out), which is how its arithmetic is
tested without a GPU.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .overlay import Renderer


class HostStage:
    """``predict`` per batch on the calling thread; the renderer thread draws."""

    depth = 1
    draws = False
    name = "host"

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter

    def warm_up(self, batch: int) -> None:
        """Nothing to prepare: the host runners have no capture step worth taking off the clock."""

    def submit(self, images: Sequence[np.ndarray]) -> np.ndarray:
        same = all(im.shape == images[0].shape for im in images)
        labels = self.segmenter.predict(np.stack(images) if same else list(images))
        if isinstance(labels, np.ndarray):
            return labels[None] if labels.ndim == 2 else labels
        return labels  # frames of different sizes: a list of maps

    def collect(self, handle: Any) -> tuple[Any, list[np.ndarray] | None]:
        return handle, None


class _Slot:
    """Pinned host buffers of one batch in flight and the event that says its download is done."""

    def __init__(self) -> None:
        self.frames = None    # pinned uint8 N x H x W x 3 (upload source)
        self.labels = None    # pinned uint8 N x H x W (download target)
        self.drawn = None     # pinned uint8 N x H x W' x 3, or None
        self.event = None
        self.n = 0

    def buffer(self, name: str, shape: tuple[int, ...], pin: bool):
        import torch

        buf = getattr(self, name)
        if buf is None or tuple(buf.shape) != shape:
            buf = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
            setattr(self, name, buf)
        return buf


class TorchDeviceStage:
    """Frames → labels (+ drawn BGR frames) on the PyTorch runner's device, ``depth`` batches in
    flight.  ``render`` None: labels only (``--labels-dir``)."""

    draws = True

    def __init__(self, segmenter: Any, render: Renderer | None, *, depth: int = 2) -> None:
        import torch

        self.torch = torch
        self.seg = segmenter
        self.device = segmenter.torch_device
        self.cuda = self.device.type == "cuda"
        self.render = render
        self.depth = max(1, int(depth))
        self.draws = render is not None
        self.name = f"{self.device.type} (uint8 up, {'overlay ' if render else ''}labels down, "\
                    f"{self.depth} in flight)"
        self._slots = [_Slot() for _ in range(self.depth)]
        self._next = 0
        if render is not None:
            self._lut = torch.from_numpy(np.ascontiguousarray(render.lut)).to(self.device)  # 256x3 BGR

    def warm_up(self, batch: int) -> None:
        """One blank batch at the model's size before the first frame: cuDNN's algorithm search
        and the CUDA graph capture (seconds for a large network) happen here, not inside the
        run's clock and not as a stall of the first frames."""
        h, w = self.seg.input_size
        self.collect(self.submit([np.zeros((h, w, 3), np.uint8)] * max(1, int(batch))))

    def submit(self, images: Sequence[np.ndarray]):
        torch = self.torch
        slot = self._slots[self._next]
        self._next = (self._next + 1) % self.depth
        if slot.event is not None:   # the batch that used this slot before must be down
            slot.event.synchronize()
        n, (h, w) = len(images), images[0].shape[:2]
        host = slot.buffer("frames", (n, h, w, 3), self.cuda)
        host_np = host.numpy()
        for k, im in enumerate(images):
            host_np[k] = im
        frames = host.to(self.device, non_blocking=True)
        with torch.inference_mode():
            labels = self._labels(frames)
            drawn = self._draw(frames, labels) if self.render is not None else None
        out = slot.buffer("labels", tuple(labels.shape), self.cuda)
        out.copy_(labels, non_blocking=True)
        if drawn is not None:
            slot.buffer("drawn", tuple(drawn.shape), self.cuda).copy_(drawn, non_blocking=True)
        slot.n = n
        if self.cuda:
            slot.event = torch.cuda.Event()
            slot.event.record()
        return slot

    def collect(self, slot: _Slot) -> tuple[np.ndarray, list[np.ndarray] | None]:
        if slot.event is not None:
            slot.event.synchronize()
            slot.event = None
        labels = slot.labels.numpy()[: slot.n].copy()
        drawn = list(slot.drawn.numpy()[: slot.n].copy()) if self.render is not None else None
        return labels, drawn

    # ---- on the device -----------------------------------------------------------------------
    def _labels(self, frames):
        """uint8 NHWC frames at their size → uint8 NHW trainIds at their size."""
        torch = self.torch
        import torch.nn.functional as F

        seg = self.seg
        h, w = frames.shape[1:3]
        mh, mw = seg.input_size
        x = frames
        if (h, w) != (mh, mw):  # bilinear like cv2.INTER_LINEAR (half-pixel centres), back to uint8
            x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(mh, mw), mode="bilinear",
                              align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
            x = x.permute(0, 2, 3, 1).contiguous()
        n = x.shape[0]
        if seg.max_batch and n < seg.max_batch:  # a static batch: pad with copies of the last
            x = torch.cat([x, x[-1:].expand(seg.max_batch - n, *x.shape[1:])])
        y = seg.compute(x)[:n]
        labels = y.argmax(1).to(torch.uint8) if seg.outputs_logits else y.reshape(n, mh, mw).to(torch.uint8)
        if (h, w) != (mh, mw):  # nearest, like cv2.INTER_NEAREST
            labels = F.interpolate(labels[:, None], size=(h, w), mode="nearest")[:, 0]
        return labels

    def _draw(self, frames, labels):
        """BGR frames to write: the colour mask, the overlay (alpha blend) or side by side."""
        torch = self.torch
        mask = self._lut[labels.long()]                       # N x H x W x 3 BGR
        if self.render.mode == "mask":
            return mask
        bgr = frames.flip(-1)
        if self.render.mode == "side-by-side":
            return torch.cat([bgr, mask], dim=2)
        a = self.render.alpha
        blend = bgr.float().mul_(1.0 - a).add_(mask.float().mul_(a)).round_()
        return blend.clamp_(0, 255).to(torch.uint8)


def device_stage(segmenter: Any, render: Renderer | None) -> HostStage | TorchDeviceStage:
    """The stage for ``segmenter``: on the device for the PyTorch runner on CUDA, else the host's."""
    device = getattr(segmenter, "torch_device", None)
    if getattr(segmenter, "backend", None) == "torch" and device is not None and device.type == "cuda":
        return TorchDeviceStage(segmenter, render)
    return HostStage(segmenter)


__all__ = ["HostStage", "TorchDeviceStage", "device_stage"]
