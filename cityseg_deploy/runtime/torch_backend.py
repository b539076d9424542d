"""PyTorch runner for checkpoints: eager, fp16/bf16, CUDA graphs and torch.compile.

The runner's model is its own inference copy, loaded from the checkpoint: every BatchNorm that
directly follows a convolution is folded into it (``fuse_bn=True``, :mod:`..models.fuse`; the
count is in ``describe()["bn_folded"]``), which removes a normalisation pass per conv; the BNs
left (pre-activation ones) become one elementwise affine each (``bn_affine``), and DenseNet
blocks concatenate into one buffer (``concat_in_place``) — ``describe()["rewrites"]``.

On CUDA: uint8 NHWC goes up (4x fewer bytes than float), normalisation runs on the device,
``channels_last`` + ``cudnn.benchmark``.  ``precision`` fp16/bf16 casts the inference copy's
weights to that dtype and feeds it half input; ``autocast=True`` keeps fp32 weights under
``torch.autocast`` instead (the old path).  Why: on an H100, DenseASPP-161 512x1024 under autocast
fp16 + channels_last spent 66 % of its GPU time in cuDNN's mixed-precision NHWC BatchNorm kernel
(bench/results/gpu_denseaspp_profile.txt: 23.88 ms, against 12.47 ms with ``model.half()`` +
channels_last).  Logits come back to the host as float32 either way.  CUDA graphs
(``cuda_graphs=True``, one graph per input shape) and ``torch.compile`` (``compile=True``, or a
mode name such as ``"max-autotune"``).  ``fp32`` on CUDA means IEEE fp32: cuDNN's TF32 tensor-core
path (on by default in PyTorch, ~1e-3 relative error) is used only with ``tf32=True``, so a row
called fp32 is fp32.
On CPU: fp32 eager; ``precision="bf16"`` = autocast bf16 (always autocast on CPU, whatever
``autocast`` says) + channels_last where the CPU computes bf16 natively (AVX-512 BF16 / AMX), else
a CitysegError (``allow_emulated_bf16=True`` runs it anyway on oneDNN's emulation, which is
slower than fp32).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..artifacts import default_io
from ..system.machine import cpu_flags, has_native_bf16
from ..system.threads import default_threads
from ..errors import CitysegError
from ..models.checkpoint import load_checkpoint
from ..models.fuse import fold_batchnorm, optimise_for_inference
from .base import Segmenter, check_precision, device_normaliser
from .torch_defaults import fp16_fallback, torch_run_plan

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class CastPlan:
    """How the inference copy runs: its weights' dtype (also the input's), autocast dtype or None."""

    weights: torch.dtype
    autocast: torch.dtype | None
    channels_last: bool


def cast_plan(device_type: str, precision: str, *, autocast: bool = False,
              channels_last: bool | None = None) -> CastPlan:
    """fp32: fp32 weights, no autocast.  fp16/bf16 on CUDA: weights cast to that dtype, unless
    ``autocast`` (fp32 weights under torch.autocast).  bf16 on CPU: always autocast.
    ``channels_last`` defaults to on for CUDA and for any half precision."""
    half = HALF.get(precision)
    if half is None:
        plan_weights, plan_autocast = torch.float32, None
    elif device_type == "cuda" and not autocast:
        plan_weights, plan_autocast = half, None
    else:
        plan_weights, plan_autocast = torch.float32, half
    if channels_last is None:
        channels_last = device_type == "cuda" or half is not None
    return CastPlan(plan_weights, plan_autocast, bool(channels_last))


def overflowing_parameters(model: torch.nn.Module, dtype: torch.dtype) -> list[str]:
    """Names of the parameters that are not finite once cast to ``dtype`` (fp16 tops out at 65504;
    a folded BN with a tiny variance can push a conv weight past it)."""
    return [n for n, p in model.named_parameters() if not torch.isfinite(p.detach().to(dtype)).all()]


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
                 compile: bool | str = False, cuda_graphs: bool | None = None, tf32: bool = False,
                 channels_last: bool | None = None, allow_emulated_bf16: bool = False,
                 fuse_bn: bool = True, autocast: bool = False, bn_affine: bool = True,
                 concat_in_place: bool = True, cudnn_benchmark_limit: int | None = None):
        dev = resolve_device(device)
        run = torch_run_plan(dev.type, check_precision(precision), cuda_graphs=cuda_graphs, tf32=tf32)
        precision = run.precision
        model, meta = load_checkpoint(path)
        super().__init__(path, meta, default_io(meta, dynamic=True, precision=precision),
                         device=str(dev), precision=precision, threads=threads, size=size)
        self.fallback: str | None = None  # why the default precision was not used, if it was not
        self.hold_threads(threads or (default_threads() if dev.type == "cpu" else None))
        if precision == "int8":
            raise CitysegError(f"{path}: the PyTorch runner has no int8 path; export an int8 graph "
                               f"('cityseg export {path} --format onnx --precision int8')")
        if dev.type == "cpu" and precision == "fp16":
            raise CitysegError("precision fp16 on CPU: PyTorch has no fast fp16 CPU kernels; "
                               "use bf16 (where the CPU supports it) or an OpenVINO/ONNX artifact")
        self.emulated_bf16 = dev.type == "cpu" and precision == "bf16" and not has_native_bf16()
        if self.emulated_bf16 and not allow_emulated_bf16:
            raise CitysegError(
                "precision bf16 on CPU: this CPU has no native bf16 (needs avx512_bf16 or amx_bf16; "
                f"it has {', '.join(cpu_flags()) or 'neither'}); use fp32 here, or `cityseg check "
                "--emulate-bf16` for bf16 accuracy (not speed) on this CPU")
        if dev.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise CitysegError("precision bf16: this GPU does not support bf16; use fp16")
        self.torch_device = dev
        model.eval()
        self.bn_folded = 0
        if fuse_bn:  # in place: this model is the runner's own copy, fresh from the checkpoint file
            model, self.bn_folded = fold_batchnorm(model, inplace=True)
        self.rewrites = optimise_for_inference(model, bn_affine=bn_affine, concat_in_place=concat_in_place)
        if run.precision == "fp16" and not autocast:
            # fp16 overflow, checked on the fp32 weights before any cast (folding BN can push a
            # weight past fp16's 65504): the default falls back to fp32, an explicit fp16 refuses
            bad = overflowing_parameters(model, torch.float16)
            if bad:
                fallback = fp16_fallback(run)
                if fallback is None:
                    raise CitysegError(f"{path}: {len(bad)} parameter(s) overflow in fp16 "
                                       f"(first: {bad[0]}); use autocast=True, fuse_bn=False or fp32")
                self.fallback = (f"fp16 overflows in {len(bad)} parameter(s) (first: {bad[0]}); "
                                 "running IEEE fp32")
                run = fallback
                self.precision = self.io["precision"] = run.precision
        self.run_plan = run
        self.plan = cast_plan(dev.type, run.precision, autocast=autocast, channels_last=channels_last)
        self.memory_format = torch.channels_last if self.plan.channels_last else torch.contiguous_format
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
            if cudnn_benchmark_limit is not None:  # 0 = time every cuDNN algorithm (default: 10)
                torch.backends.cudnn.benchmark_limit = int(cudnn_benchmark_limit)
        self.tf32 = run.tf32
        if run.tf32:
            self.precision = "tf32"  # fp32 weights, TF32 products: reported as what runs
        self.model = model.to(dev).to(self.plan.weights, memory_format=self.memory_format)
        if self.plan.weights != torch.float32:  # bf16 (and anything the check above let through)
            bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                raise CitysegError(f"{path}: {len(bad)} parameter(s) overflow in {self.precision} "
                                   f"(first: {bad[0]}); use autocast=True or fuse_bn=False")
        self._normalise = device_normaliser(self.mean, self.std, dev)
        if compile:
            mode = compile if isinstance(compile, str) else None
            if dev.type == "cuda":  # autotuning results survive the process: one cache per GPU model
                gpu = torch.cuda.get_device_name(dev).replace(" ", "_")
                os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
                    os.path.expanduser("~"), ".cache", "cityseg", "inductor", gpu))
            self._forward = torch.compile(self.model, mode=mode)
        else:
            self._forward = self.model
        self.compiled = compile if isinstance(compile, str) else bool(compile)
        self.cuda_graphs = run.cuda_graphs
        self._graphs: dict[tuple, tuple] = {}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(channels_last=self.memory_format is torch.channels_last, compiled=self.compiled,
                 bn_folded=self.bn_folded, rewrites=self.rewrites, weights=DTYPE_NAMES[self.plan.weights],
                 autocast=DTYPE_NAMES[self.plan.autocast] if self.plan.autocast else None,
                 tf32=self.tf32 if self.torch_device.type == "cuda" else None,
                 cuda_graphs=self.cuda_graphs, threads=torch.get_num_threads(),
                 emulated_bf16=self.emulated_bf16, default_precision=self.run_plan.defaulted)
        if self.fallback:
            d["fallback"] = self.fallback
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
        x = self._normalise(x)
        x = x.to(self.plan.weights, memory_format=self.memory_format)
        if self.torch_device.type == "cuda":  # per call: other Segmenters may share the process
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
        if self.plan.autocast is not None:
            with torch.autocast(self.torch_device.type, dtype=self.plan.autocast):
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
        super().close()
