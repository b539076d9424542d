"""PyTorch runner for checkpoints: eager, or autocast fp16/bf16, CUDA graphs and torch.compile.

On CUDA: uint8 NHWC goes up (4x fewer bytes than float), normalisation runs on the device,
``channels_last`` + ``cudnn.benchmark``, fp16/bf16 autocast by ``precision``, CUDA graphs
(``cuda_graphs=True``, one graph per input shape) and ``torch.compile`` (``compile=True``, or a
mode name such as ``"max-autotune"``).  ``fp32`` on CUDA means IEEE fp32: cuDNN's TF32 tensor-core
path (on by default in PyTorch, ~1e-3 relative error) is used only with ``tf32=True``, so a row
called fp32 is fp32.
On CPU: fp32 eager; ``precision="bf16"`` = autocast bf16 + channels_last where the CPU computes
bf16 natively (AVX-512 BF16 / AMX), else a CitysegError (``allow_emulated_bf16=True`` runs it
anyway on oneDNN's emulation, which is slower than fp32).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from ..artifacts import default_io
from ..bench.machine import cpu_flags, has_native_bf16
from ..errors import CitysegError
from ..models.checkpoint import load_checkpoint
from .base import Segmenter, check_precision

AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CitysegError(f"device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CitysegError(f"device {device!r}: no CUDA GPU visible to this torch "
                           f"({torch.__version__}); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise CitysegError(f"device {device!r}: the PyTorch runner supports cpu and cuda")
    return dev


class TorchSegmenter(Segmenter):
    backend = "torch"

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", precision: str | None = None,
                 threads: int | None = None, size: Sequence[int] | None = None,
                 compile: bool | str = False, cuda_graphs: bool = False, tf32: bool = False,
                 channels_last: bool | None = None, allow_emulated_bf16: bool = False,
                 **_: Any):
        precision = check_precision(precision) or "fp32"
        dev = resolve_device(device)
        model, meta = load_checkpoint(path)
        super().__init__(path, meta, default_io(meta, dynamic=True, precision=precision),
                         device=str(dev), precision=precision, threads=threads, size=size)
        if threads:
            torch.set_num_threads(int(threads))
        if precision == "int8":
            raise CitysegError(f"{path}: the PyTorch runner has no int8 path; export an int8 graph "
                               f"('cityseg export {path} --format onnx --precision int8')")
        if dev.type == "cpu" and precision == "fp16":
            raise CitysegError("precision fp16 on CPU: PyTorch has no fast fp16 CPU kernels; "
                               "use bf16 (where the CPU supports it) or an OpenVINO/ONNX artifact")
        if dev.type == "cpu" and precision == "bf16" and not (has_native_bf16() or allow_emulated_bf16):
            raise CitysegError(
                "precision bf16 on CPU: this CPU has no native bf16 (needs avx512_bf16 or amx_bf16; "
                f"it has {', '.join(cpu_flags()) or 'neither'}); use fp32 here")
        if dev.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise CitysegError("precision bf16: this GPU does not support bf16; use fp16")
        self.torch_device = dev
        self.autocast = AUTOCAST.get(precision)
        if channels_last is None:
            channels_last = dev.type == "cuda" or self.autocast is not None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.tf32 = bool(tf32)
        self.model = model.to(dev).to(memory_format=self.memory_format).eval()
        mean = torch.tensor(self.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=dev).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._bias = mean / std
        if compile:
            mode = compile if isinstance(compile, str) else None
            self._forward = torch.compile(self.model, mode=mode)
        else:
            self._forward = self.model
        self.compiled = compile if isinstance(compile, str) else bool(compile)
        self.cuda_graphs = bool(cuda_graphs) and dev.type == "cuda"
        self._graphs: dict[tuple, tuple] = {}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(channels_last=self.memory_format is torch.channels_last, compiled=self.compiled,
                 tf32=self.tf32 if self.torch_device.type == "cuda" else None,
                 cuda_graphs=self.cuda_graphs, threads=torch.get_num_threads())
        return d

    # uint8 NHWC travels; normalisation happens on the device
    def preprocess(self, nhwc: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(nhwc)

    def to_device(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)
        if self.torch_device.type == "cuda":
            t = t.pin_memory().to(self.torch_device, non_blocking=True)
        return t

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float().mul_(self._scale).sub_(self._bias)
        x = x.contiguous(memory_format=self.memory_format)
        if self.torch_device.type == "cuda":  # per call: other Segmenters may share the process
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
        if self.autocast is not None:
            with torch.autocast(self.torch_device.type, dtype=self.autocast):
                return self._forward(x)
        return self._forward(x)

    @torch.inference_mode()
    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cuda_graphs:
            return self._network(x)
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up (cudnn.benchmark picks kernels) before capture
                    self._network(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._network(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def close(self) -> None:
        self._graphs.clear()
