"""TensorRT runner for a serialized engine (``.engine`` / ``.plan`` / ``.trt``) + sidecar.

TensorRT Python API only: ``deserialize_cuda_engine``, ``set_input_shape``, ``set_tensor_address``
on torch CUDA tensors, ``execute_async_v3`` on the runner's own CUDA stream; pinned host buffers
for the upload.  An engine is tied to the TensorRT version and GPU that built it: where the
sidecar's ``tensorrt_version`` / ``gpu`` / ``compute_capability`` differ from this machine, the
error says both before TensorRT fails with something less readable.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..errors import CitysegError
from ..lazy import lazy_import
from ..models.checkpoint import ModelMeta
from ..trust import read_trusted
from .graph_check import check_pairing
from .base import Segmenter, artifact_metadata, check_precision


def _import_trt():
    return lazy_import("tensorrt", message="TensorRT is not installed (the tensorrt Python package and "
                       "its libraries); install 'cityseg-deploy[gpu]' on a machine with an NVIDIA "
                       "GPU, or run the .onnx artifact instead")


def check_engine_origin(path, io: dict, trt_version: str, gpu: str | None, capability: str | None) -> None:
    """CitysegError when the sidecar says the engine was built by another TensorRT or GPU."""
    problems = []
    built_trt = io.get("tensorrt_version")
    if built_trt and str(built_trt) != str(trt_version):
        problems.append(f"TensorRT {built_trt} (this machine: {trt_version})")
    built_cc = io.get("compute_capability")
    if built_cc and capability and str(built_cc) != str(capability):
        problems.append(f"compute capability {built_cc} (this GPU: {capability})")
    built_gpu = io.get("gpu")
    if built_gpu and gpu and str(built_gpu) != str(gpu) and not problems:
        problems.append(f"GPU {built_gpu} (this machine: {gpu})")
    if problems:
        raise CitysegError(f"{path}: engine built for {'; '.join(problems)}; engines are not "
                           f"portable — rebuild it here with 'cityseg export MODEL.onnx --format trt'")


class TensorRTSegmenter(Segmenter):
    backend = "tensorrt"

    def __init__(self, path: str | os.PathLike, *, device: str = "cuda", precision: str | None = None,
                 threads: int | None = None, size: Sequence[int] | None = None,
                 metadata: tuple[ModelMeta, dict[str, Any]] | None = None,
                 trust_code: bool | None = None):
        meta, io = artifact_metadata(path, "tensorrt", metadata)
        # An engine may carry plugin code: the trust list first, on the bytes deserialized below
        # (before TensorRT is even imported, so the gate holds where TensorRT is missing too).
        plan, digest = read_trusted(path, "tensorrt", trust_code=trust_code)
        check_pairing(path, io, digest)
        precision = check_precision(precision)
        if precision and precision != io.get("precision", "fp32"):
            raise CitysegError(f"{path}: this engine is {io.get('precision', 'fp32')}; build a "
                               f"{precision} engine instead")
        if str(device) == "cpu":
            device = "cuda"  # an engine only runs on a GPU
        trt = _import_trt()
        import torch

        if not torch.cuda.is_available():
            raise CitysegError(f"{path}: a TensorRT engine needs an NVIDIA GPU; none is visible")
        self.torch_device = torch.device(str(device) if ":" in str(device) else "cuda:0")
        props = torch.cuda.get_device_properties(self.torch_device)
        check_engine_origin(path, io, trt.__version__, props.name, f"{props.major}.{props.minor}")
        self.logger = trt.Logger(trt.Logger.ERROR)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.torch_device):
            self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise CitysegError(f"{path}: TensorRT {trt.__version__} cannot deserialize this engine "
                               f"(corrupt, or built by TensorRT {io.get('tensorrt_version', '?')} on "
                               f"{io.get('gpu', '?')}); rebuild it here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) != trt.TensorIOMode.INPUT]
        self.in_name, self.out_name = inputs[0], outputs[0]
        to_torch = lambda n: torch.from_numpy(np.zeros(1, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype
        self.in_dtype, self.out_dtype = to_torch(self.in_name), to_torch(self.out_name)
        shape = tuple(self.engine.get_tensor_shape(self.in_name))
        io = dict(io)
        io["dynamic"] = any(d < 0 for d in shape)
        if not io["dynamic"]:
            io["batch"] = shape[0]
        super().__init__(path, meta, io, device=str(self.torch_device),
                         precision=io.get("precision", "fp32"), threads=threads, size=size)
        self.stream = torch.cuda.Stream(self.torch_device)

    def to_device(self, x: np.ndarray):
        import torch

        host = torch.from_numpy(x).pin_memory()
        return host.to(self.torch_device, non_blocking=True).to(self.in_dtype)

    def compute(self, x):
        import torch

        x = x.contiguous()
        self.context.set_input_shape(self.in_name, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.out_name)), dtype=self.out_dtype,
                          device=self.torch_device)
        self.context.set_tensor_address(self.in_name, x.data_ptr())
        self.context.set_tensor_address(self.out_name, out.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise CitysegError(f"{self.path}: TensorRT execution failed")
        torch.cuda.current_stream().wait_stream(self.stream)
        x.record_stream(self.stream)
        return out

    def close(self) -> None:
        self.context = None
        self.engine = None
        super().close()
