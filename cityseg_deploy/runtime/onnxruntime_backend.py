"""ONNX Runtime runner: CPU EP, or CUDA/TensorRT EPs with I/O binding when onnxruntime-gpu is there.

Precision lives in the graph (fp32, fp16 with fp32 I/O, int8 QDQ); the runner reads it from the
metadata and refuses a request for another.  On CUDA the input is uploaded once into a torch CUDA
tensor and bound, the output is bound to a torch CUDA tensor, and argmax runs there: nothing
bounces through the host but the final uint8 labels.  On CPU an int8 graph is reshaped in memory
for onnxruntime's integer kernels (uint8 activations, ReLUs folded; ``ort_int8``), 2x faster.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..errors import CitysegError, first_line
from ..lazy import lazy_import
from ..system.threads import default_threads, spinning_allowed
from ..models.checkpoint import ModelMeta
from .base import Segmenter, artifact_metadata, check_precision, device_normaliser
from ..graphs.ort_int8 import onnxruntime_cpu_graph
from .graph_check import check_onnx

# A parallel loop's work in shrinking blocks that idle threads claim, instead of one fixed share
# per thread: a thread the OS runs late (a shared machine) then holds up less of the loop.
# 4: never slower in our A/Bs on 2 CPUs, quiet or with two busy processes; int8 DeepLabV3-small
# through the runner 13.6 vs 13.9 ms loaded (bench/results/ort_spinning_ab.md), the bare session
# 6.3 vs 8.2 ms (bench/results/ort_dynamic_block_notes.md).
DYNAMIC_BLOCK_BASE = 4

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _import_ort():
    return lazy_import("onnxruntime")


class OnnxRuntimeSegmenter(Segmenter):
    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", precision: str | None = None,
                 threads: int | None = None, size: Sequence[int] | None = None,
                 tensorrt_ep: bool = False, providers: list | None = None,
                 cpu_int8_rewrite: bool = True, cuda_graph: bool = False,
                 cuda_options: dict[str, Any] | None = None,
                 dynamic_block_base: int | None = None,
                 metadata: tuple[ModelMeta, dict[str, Any]] | None = None):
        ort = _import_ort()
        meta, io = artifact_metadata(path, "onnx", metadata)
        check_onnx(path, meta, io)  # the metadata must describe this graph (graph_check)
        precision = check_precision(precision)
        if precision and precision != io.get("precision", "fp32"):
            hint = (f"re-export it with --precision {precision}" if precision != "bf16" else
                    "ONNX graphs are fp32, fp16 or int8 — for bf16 use the checkpoint (CKPT@bf16) "
                    "or an OpenVINO IR exported with --precision bf16")
            raise CitysegError(f"{path}: this ONNX graph is {io.get('precision', 'fp32')}; precision "
                               f"is fixed by the graph — {hint}")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.pool_threads = None
        if threads or not str(device).startswith("cuda"):  # default: the CPUs this process may use
            so.intra_op_num_threads = self.pool_threads = int(threads or default_threads())
            so.inter_op_num_threads = 1
        self.spinning = spinning_allowed()
        if not self.spinning:  # the pool sleeps between operators, as OpenMP's do (system/threads.py)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.dynamic_block_base = int(dynamic_block_base if dynamic_block_base is not None else
                                      (0 if self.spinning or str(device).startswith("cuda") else
                                       DYNAMIC_BLOCK_BASE))
        if self.dynamic_block_base > 0:
            so.add_session_config_entry("session.dynamic_block_base", str(self.dynamic_block_base))
        self.session_options = so
        available = ort.get_available_providers()
        self.cuda = str(device).startswith("cuda")
        if providers is None:
            if self.cuda:
                if "CUDAExecutionProvider" not in available:
                    raise CitysegError(f"device {device}: this onnxruntime has no CUDA provider "
                                       f"(has {', '.join(available)}); pip install onnxruntime-gpu")
                dev_id = int(str(device).split(":")[1]) if ":" in str(device) else 0
                cuda_ep = {"device_id": dev_id, **(cuda_options or {})}
                if cuda_graph:  # replays the captured run; needs fixed input/output addresses
                    cuda_ep["enable_cuda_graph"] = "1"
                providers = [("CUDAExecutionProvider", cuda_ep), "CPUExecutionProvider"]
                if tensorrt_ep and "TensorrtExecutionProvider" in available:
                    providers.insert(0, ("TensorrtExecutionProvider", {"device_id": dev_id,
                                                                       "trt_fp16_enable": io.get("precision") == "fp16"}))
            elif str(device) != "cpu":
                raise CitysegError(f"device {device!r}: use cpu or cuda")
            else:
                providers = ["CPUExecutionProvider"]
        source: Any = str(path)
        self.int8_rewrite: dict[str, int] = {}
        try:
            if cpu_int8_rewrite and providers == ["CPUExecutionProvider"] and io.get("precision") == "int8":
                source, self.int8_rewrite = onnxruntime_cpu_graph(path)  # see ort_int8's module doc
            self.session = ort.InferenceSession(source, so, providers=providers)
        except Exception as exc:
            raise CitysegError(f"{path}: onnxruntime cannot load this graph ({type(exc).__name__}: "
                               f"{first_line(exc, 200)}); re-export it") from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.in_name, self.out_name = inp.name, out.name
        self.in_dtype = ORT_TYPES.get(inp.type, np.float32)
        self.out_dtype = ORT_TYPES.get(out.type, np.float32)
        self.out_rank = len(out.shape)
        dynamic = any(not isinstance(d, int) for d in inp.shape)
        io = dict(io)
        io["dynamic"] = bool(io.get("dynamic", False) or dynamic)
        if io.get("input") is None:
            io["input"] = "uint8_nhwc" if self.in_dtype == np.uint8 else "float_nchw"
        if not dynamic and isinstance(inp.shape[0], int):
            io["batch"] = inp.shape[0]
        super().__init__(path, meta, io, device=str(device), precision=io.get("precision", "fp32"),
                         threads=threads, size=size)
        self.cuda_graph = bool(cuda_graph) and self.cuda
        if not self.cuda:
            self.hold_threads(1)  # torch idle beside onnxruntime's pool (system/threads.py)
        self._static: dict[tuple, tuple] = {}
        if self.cuda:
            import torch

            self.torch_device = torch.device(str(device) if ":" in str(device) else "cuda:0")
            self._normalise = device_normaliser(self.mean, self.std, self.torch_device)
            self._torch_in_dtype, self._torch_out_dtype = (
                torch.from_numpy(np.zeros(1, dt)).dtype for dt in (self.in_dtype, self.out_dtype))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["providers"] = self.session.get_providers()
        d["threads"] = self.pool_threads
        d["spinning"] = self.spinning
        d["dynamic_block_base"] = self.dynamic_block_base
        d["cuda_graph"] = self.cuda_graph
        if self.int8_rewrite:
            d["int8_rewrite"] = dict(self.int8_rewrite)
        return d

    def preprocess(self, nhwc: np.ndarray):
        if self.cuda:  # uint8 goes up; to_device normalises on the GPU
            return np.ascontiguousarray(nhwc)
        return super().preprocess(nhwc)

    def to_device(self, x: np.ndarray):
        if not self.cuda:
            return x
        import torch

        t = torch.from_numpy(x).pin_memory().to(self.torch_device, non_blocking=True)
        if self.input_format == "uint8_nhwc":
            return t
        return self._normalise(t).to(self._torch_in_dtype).contiguous()

    def _out_shape(self, n: int) -> tuple[int, ...]:
        h, w = self.input_size
        if self.outputs_logits:
            return (n, self.num_classes, h, w)
        return (n, 1, h, w) if self.out_rank == 4 else (n, h, w)

    def compute(self, x):
        if not self.cuda:
            return self.session.run([self.out_name], {self.in_name: x})[0]
        import torch

        x = x.contiguous()
        if self.cuda_graph:
            return self._replay(x)
        out = torch.empty(self._out_shape(x.shape[0]), device=self.torch_device,
                          dtype=self._torch_out_dtype)
        binding = self._bind(x, out)
        torch.cuda.current_stream().synchronize()  # the upload must land before ORT's stream reads it
        self.session.run_with_iobinding(binding)
        return out

    def _bind(self, x, out):
        binding = self.session.io_binding()
        idx = self.torch_device.index or 0
        binding.bind_input(self.in_name, "cuda", idx, self.in_dtype, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.out_name, "cuda", idx, self.out_dtype, tuple(out.shape), out.data_ptr())
        return binding

    def _replay(self, x):
        """onnxruntime's CUDA graph: the first run captures, later runs replay with the same
        buffers, so the input is copied into a static tensor and the output read from one."""
        import torch

        key = tuple(x.shape)
        if key not in self._static:
            if self._static:
                raise CitysegError(f"{self.path}: onnxruntime's CUDA graph holds one input shape "
                                   f"({next(iter(self._static))}); got {key}")
            static_in = torch.empty_like(x)
            static_out = torch.empty(self._out_shape(x.shape[0]), device=self.torch_device,
                                     dtype=self._torch_out_dtype)
            self._static[key] = (static_in, static_out, self._bind(static_in, static_out))
        static_in, static_out, binding = self._static[key]
        static_in.copy_(x)
        torch.cuda.current_stream().synchronize()
        self.session.run_with_iobinding(binding)
        return static_out

    def close(self) -> None:
        self._static.clear()
        self.session = None
        super().close()
