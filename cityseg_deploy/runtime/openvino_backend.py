"""OpenVINO runner for an IR folder (or its .xml).

- PrePostProcessor: the compiled model takes **uint8 NHWC** and does the conversion, layout change
  and normalisation itself (folded into the graph), so the host only resizes.
- Precision is explicit: ``INFERENCE_PRECISION_HINT`` = f32 for fp32 and int8 IRs (OpenVINO would
  otherwise run fp32 in bf16 on AMX CPUs), bf16 for ``precision="bf16"`` — refused where the CPU
  has no native bf16, because OpenVINO would silently fall back to f32 and the row would lie.
- Argmax runs inside the compiled model (TopK on the logits → uint8 labels, a second output), so
  the labels come out of OpenVINO's own threads; the logits output is read only when asked.
- Latency mode (one request) for single images; for batches a second compilation in throughput
  mode with several streams and an ``AsyncInferQueue`` (``mode="auto"``, the default; or force
  ``mode="latency" | "throughput"``; ``streams=N``; ``threads=N`` = INFERENCE_NUM_THREADS).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifacts import openvino_files
from ..errors import CitysegError, first_line
from ..lazy import lazy_import
from ..system.machine import cpu_flags, has_native_bf16
from ..system.threads import default_threads
from ..models.checkpoint import ModelMeta
from .base import Segmenter, artifact_metadata, check_precision, labels_array, normalise_nchw
from .graph_check import check_openvino

#: precision → INFERENCE_PRECISION_HINT, for the runner, the export (IR rt_info) and bench's plain
#: row alike; int8 IRs run their float layers in f32
HINT = {"fp32": "f32", "int8": "f32", "fp16": "f16", "bf16": "bf16"}
DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU", "auto": "AUTO"}


def _import_ov():
    return lazy_import("openvino")


class OpenVINOSegmenter(Segmenter):
    backend = "openvino"

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", precision: str | None = None,
                 threads: int | None = None, size: Sequence[int] | None = None,
                 mode: str = "auto", streams: int | str | None = None,
                 metadata: tuple[ModelMeta, dict[str, Any]] | None = None):
        ov = _import_ov()
        meta, io = artifact_metadata(path, "openvino", metadata)
        ir_precision = io.get("precision", "fp32")
        precision = check_precision(precision) or ir_precision
        if ir_precision == "int8" and precision != "int8":
            raise CitysegError(f"{path}: an int8 IR runs as int8; export an fp32 IR for {precision}")
        if precision == "int8" and ir_precision != "int8":
            raise CitysegError(f"{path}: an {ir_precision} IR; export an int8 IR "
                               "('cityseg export CKPT --format openvino --precision int8')")
        ov_device = DEVICES.get(str(device).split(":")[0].lower())
        if ov_device is None:
            raise CitysegError(f"device {device!r}: OpenVINO runs on cpu (or an Intel gpu/npu), "
                               "not on CUDA; use an ONNX or TensorRT artifact for NVIDIA GPUs")
        if ov_device == "CPU" and precision == "bf16" and not has_native_bf16():
            raise CitysegError("precision bf16 on CPU: this CPU has no native bf16 (needs avx512_bf16 "
                               f"or amx_bf16; it has {', '.join(cpu_flags()) or 'neither'}); "
                               "OpenVINO would silently run f32 — use fp32 here")
        if mode not in ("auto", "latency", "throughput"):
            raise CitysegError(f"mode {mode!r}: choose auto, latency or throughput")
        xml, binary, _meta = openvino_files(path)
        self.core = ov.Core()
        try:
            model = self.core.read_model(str(xml), str(binary))
        except Exception as exc:
            raise CitysegError(f"{xml}: OpenVINO cannot read this IR ({type(exc).__name__}: "
                               f"{first_line(exc, 200)}); re-export it") from None
        check_openvino(f"{_meta} (for {xml.name})", model, meta, io)
        io = dict(io)
        pshape = model.inputs[0].get_partial_shape()
        if pshape.is_dynamic:
            io["dynamic"] = True
        super().__init__(path, meta, io, device=str(device), precision=precision, threads=threads,
                         size=size)
        model = self._fold_preprocessing(ov, model)
        self.input_format = "uint8_nhwc"  # what compute() takes after the PrePostProcessor
        self.model = model
        self.ov_device = ov_device
        self.mode = mode
        self.streams = streams
        base_config = {"INFERENCE_PRECISION_HINT": HINT[precision]} if ov_device == "CPU" else {}
        if threads or ov_device == "CPU":  # default: the CPUs this process may use
            base_config["INFERENCE_NUM_THREADS"] = int(threads or default_threads())
        if ov_device == "CPU":
            self.hold_threads(1)  # torch idle beside OpenVINO's pool (system/threads.py)
        self.base_config = base_config
        self.compiled = self._compile("LATENCY")
        self.request = self.compiled.create_infer_request()
        self._throughput = None

    def _add_argmax(self, model):
        """Append TopK(k=1) over classes → uint8 labels as a second result (logits stay output 0)."""
        try:
            import openvino.opset13 as ops
        except ImportError:  # OpenVINO before 2025 (the 2024.4 floor) keeps it under runtime
            import openvino.runtime.opset13 as ops

        src = model.get_results()[0].input_value(0)
        topk = ops.topk(src, ops.constant(np.int64(1)), axis=1, mode="max", sort="none",
                        index_element_type=_import_ov().Type.i32)
        labels = ops.convert(ops.squeeze(topk.output(1), ops.constant(np.int64(1))), _import_ov().Type.u8)
        model.add_results([ops.result(labels)])
        return model

    def _fold_preprocessing(self, ov, model):
        """uint8 NHWC in; convert, transpose and normalise inside the graph (float NCHW IRs)."""
        if self.outputs_logits:
            model = self._add_argmax(model)
        if self.io.get("input", "float_nchw") != "float_nchw":
            return model
        from openvino.preprocess import PrePostProcessor

        ppp = PrePostProcessor(model)
        ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        ppp.input().model().set_layout(ov.Layout("NCHW"))
        ppp.input().preprocess().convert_element_type(ov.Type.f32) \
            .mean([255.0 * m for m in self.mean]).scale([255.0 * s for s in self.std])
        return ppp.build()

    def _compile(self, hint: str):
        config = dict(self.base_config, PERFORMANCE_HINT=hint)
        if hint == "THROUGHPUT" and self.streams:
            config["NUM_STREAMS"] = str(self.streams)
        try:
            return self.core.compile_model(self.model, self.ov_device, config)
        except Exception as exc:
            raise CitysegError(f"{self.path}: OpenVINO could not compile it for {self.ov_device} "
                               f"({type(exc).__name__}: {first_line(exc, 200)})") from None

    def actual_precision(self, compiled=None) -> str | None:
        try:
            value = (compiled or self.compiled).get_property("INFERENCE_PRECISION_HINT")
            return value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        except Exception:
            return None

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(ov_device=self.ov_device, inference_precision=self.actual_precision(), mode=self.mode)
        if self.ov_device == "CPU" and d.get("threads") is None:  # the count it compiled with, read back
            try:
                d["threads"] = int(self.compiled.get_property("INFERENCE_NUM_THREADS")) or None
            except Exception:  # a plugin without the property: the line says "default threads"
                pass
        if self._throughput is not None:
            d["streams"] = int(self._throughput.get_property("NUM_STREAMS"))
        return d

    def preprocess(self, nhwc: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(nhwc)

    def compute(self, x: np.ndarray):
        self.request.infer({0: x}, share_inputs=True, share_outputs=True)
        return self.request

    def _read(self, request, want_logits: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.outputs_logits:
            return labels_array(np.array(request.get_output_tensor(0).data, copy=True)), None
        labels = np.array(request.get_output_tensor(1).data, copy=True)
        logits = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True) if want_logits else None
        return labels, logits

    def to_host(self, request, want_logits: bool):
        return self._read(request, want_logits)

    def _run_chunks(self, nhwc, want_logits, timer):
        n = nhwc.shape[0]
        if self.mode == "latency" or (n <= (self.max_batch or 1) and self.mode == "auto"):
            return super()._run_chunks(nhwc, want_logits, timer)
        return self._run_throughput(nhwc, want_logits, timer)

    def _run_throughput(self, nhwc, want_logits, timer):
        """Images through an AsyncInferQueue of a throughput-mode compilation (several streams)."""
        ov = _import_ov()
        if self._throughput is None:
            self._throughput = self._compile("THROUGHPUT")
            jobs = int(self._throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self._queue = ov.AsyncInferQueue(self._throughput, max(1, jobs))
        n = nhwc.shape[0]
        step = self.max_batch or 1
        results: dict[int, tuple] = {}

        def done(request, index):
            results[index] = self._read(request, want_logits)

        self._queue.set_callback(done)
        with timer.stage("compute"):
            for start in range(0, n, step):
                chunk = nhwc[start:start + step]
                if chunk.shape[0] < step:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - chunk.shape[0], 0)])
                self._queue.start_async({0: np.ascontiguousarray(chunk)}, start)
            self._queue.wait_all()
        with timer.stage("d2h"):
            order = sorted(results)
            labels = np.concatenate([results[s][0] for s in order])[:n]
            logits = np.concatenate([results[s][1] for s in order])[:n] if want_logits and self.outputs_logits else None
        return labels, logits

    def close(self) -> None:
        self.request = None
        self._throughput = None
        super().close()


class PlainOpenVINO:
    """Bench's reference row: raw ``core.compile_model`` + ``infer`` on a pre-normalised float tensor.

    No resize, no normalisation, no argmax: what OpenVINO alone does with the same IR, to show
    what the project's Segmenter adds end to end (uint8 image in, labels out).
    """

    backend = "openvino-plain"

    def __init__(self, path, *, threads: int | None = None, precision: str | None = None, **_):
        ov = _import_ov()
        self.meta, self.io = artifact_metadata(path, "openvino", None)
        self.path = Path(path)
        self.device = "cpu"
        self.precision = check_precision(precision) or self.io.get("precision", "fp32")
        xml, _, _ = openvino_files(path)
        config = {"INFERENCE_PRECISION_HINT": HINT[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = ov.Core().compile_model(str(xml), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_size = tuple(self.io.get("size") or self.meta.input_size)
        self._x = None

    def run(self, images, *, want_logits=False, timer=None):
        if self._x is None or self._x.shape[0] != len(images):
            self._x = normalise_nchw(np.asarray(images), self.meta.mean, self.meta.std)
        with timer.stage("compute"):
            self.request.infer({0: self._x})
        return None, None, False

    def describe(self):
        return {"backend": self.backend, "precision": self.precision}

    def close(self):
        self.request = None
