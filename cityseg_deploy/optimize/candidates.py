"""The runners ``cityseg optimize`` tries for a device: what to export and how to run it.

Why a table: which runner wins changes with the machine (AVX2-only EPYC, AVX-512 BF16, AMX; an
H200 with or without TensorRT), so optimize measures every one that can run here.  A candidate
that cannot run here (no native bf16, NNCF, onnxruntime-gpu or TensorRT missing) is listed as
skipped with the reason, so deploy.json says what was not tried and why.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import CitysegError


@dataclass(frozen=True)
class Candidate:
    """One way to run the network: an export (or the checkpoint itself) and a runner setting."""

    name: str                                   # shown in tables: "onnx int8 (onnxruntime layout)"
    slug: str                                   # file names and --candidates: "onnx_int8_ort"
    format: str | None                          # export format; None: the checkpoint as it is
    export_precision: str = "fp32"
    export_options: dict[str, Any] = field(default_factory=dict)
    precision: str | None = None                # runner precision (checkpoint autocast, OV hint)
    options: dict[str, Any] = field(default_factory=dict)  # runner options (runtime.load)
    device: str = "cpu"
    needs: Callable[[], str | None] | None = field(default=None, compare=False, repr=False)

    def unavailable(self) -> str | None:
        """Why this candidate cannot run on this machine, or None."""
        return self.needs() if self.needs else None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "slug": self.slug, "format": self.format or "checkpoint",
                "export_precision": self.export_precision if self.format else None,
                "export_options": dict(self.export_options), "precision": self.precision,
                "options": dict(self.options), "device": self.device}


def _no_native_bf16() -> str | None:
    from ..system.machine import has_native_bf16

    return None if has_native_bf16() else "no native bf16 on this CPU (avx512_bf16 / amx_bf16 absent)"


def _missing(module: str, what: str) -> Callable[[], str | None]:
    def check() -> str | None:
        return None if importlib.util.find_spec(module) else f"{what} is not installed"
    return check


def _no_ort_cuda() -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return None


def _no_tensorrt() -> str | None:
    return None if importlib.util.find_spec("tensorrt") else "TensorRT is not installed (pip extra 'gpu')"


#: The reference every candidate is checked and timed against: the checkpoint, torch fp32.
BASELINE = Candidate("torch fp32", "torch_fp32", None)

CPU: tuple[Candidate, ...] = (
    BASELINE,
    Candidate("torch bf16", "torch_bf16", None, precision="bf16", needs=_no_native_bf16),
    Candidate("onnx fp32", "onnx_fp32", "onnx"),
    Candidate("onnx int8 (tensorrt layout, reshaped at load)", "onnx_int8", "onnx", "int8",
              {"int8_layout": "tensorrt"}),
    Candidate("onnx int8 (onnxruntime layout)", "onnx_int8_ort", "onnx", "int8",
              {"int8_layout": "onnxruntime"}),
    Candidate("openvino fp32", "openvino_fp32", "openvino", precision="fp32"),
    Candidate("openvino bf16", "openvino_bf16", "openvino", precision="bf16", needs=_no_native_bf16),
    Candidate("openvino int8 (QDQ graph)", "openvino_int8", "openvino", "int8", {"int8_method": "qdq"}),
    Candidate("openvino int8 (NNCF)", "openvino_int8_nncf", "openvino", "int8", {"int8_method": "nncf"},
              needs=_missing("nncf", "NNCF (pip extra 'cpu')")),
)

CUDA: tuple[Candidate, ...] = (
    Candidate("torch fp32", "torch_fp32", None, device="cuda", precision="fp32"),
    Candidate("torch fp16 channels_last + CUDA graphs", "torch_fp16_graphs", None, precision="fp16",
              options={"channels_last": True, "cuda_graphs": True}, device="cuda"),
    Candidate("torch fp16 torch.compile + CUDA graphs", "torch_fp16_compile", None, precision="fp16",
              options={"compile": True, "cuda_graphs": True}, device="cuda"),
    Candidate("onnxruntime-gpu fp16 + CUDA graph", "onnx_fp16_cuda", "onnx", "fp16",
              options={"cuda_graph": True}, device="cuda", needs=_no_ort_cuda),
    Candidate("TensorRT fp16", "trt_fp16", "trt", "fp16", device="cuda", needs=_no_tensorrt),
    Candidate("TensorRT int8", "trt_int8", "trt", "int8", device="cuda", needs=_no_tensorrt),
)


def candidates_for(device: str, only: list[str] | None = None) -> list[Candidate]:
    """The candidates of ``device`` (cpu | cuda[:N]); ``only``: their slugs (the baseline is
    always kept: it is what every drop and speed-up is measured against)."""
    table = CUDA if str(device).startswith("cuda") else CPU
    if not only:
        return list(table)
    known = {c.slug for c in table}
    unknown = [s for s in only if s not in known]
    if unknown:
        raise CitysegError(f"--candidates {','.join(unknown)}: unknown on {device} "
                           f"(choose from {', '.join(sorted(known))})")
    return [c for c in table if c is table[0] or c.slug in only]


__all__ = ["BASELINE", "CPU", "CUDA", "Candidate", "candidates_for"]
