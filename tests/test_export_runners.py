"""Export checks what users run: the parity check loads the written file through the runtime.

Why: export used to verify artifacts with runners of its own (onnxruntime sessions, an OpenVINO
compile, a TensorRT and an AOTInductor closure) that could drift from ``runtime.load``; and it
counted MB as 10^6 where bench counted 2^20.  Truth here: the runtime's own Segmenter on the
final file, and the file's byte count from the operating system.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from cityseg_deploy import runtime
from cityseg_deploy.data import CityscapesDataset
from cityseg_deploy.errors import CitysegError
from test_runtime_artifacts import arts  # noqa: F401  (session fixture)


def test_open_artifact_runs_a_temporary_name_as_load_runs_the_file(arts, synth_root, tmp_path):
    """A file at an export's temporary name: ``load`` cannot tell its kind, ``open_artifact`` runs
    it with the runner ``load`` gives for the final file, and the same labels come out."""
    tmp = tmp_path / ".model.onnx.abc123.tmp"
    shutil.copyfile(arts["onnx"], tmp)
    with pytest.raises(CitysegError, match="unknown artifact kind"):
        runtime.load(tmp)
    images = [CityscapesDataset(synth_root, "val")[i][0] for i in range(2)]
    seg = runtime.open_artifact(tmp, "onnx", threads=1)
    assert type(seg) is type(runtime.load(arts["onnx"]))
    np.testing.assert_array_equal(seg.predict(images), runtime.load(arts["onnx"], threads=1).predict(images))


def test_open_artifact_checks_handed_in_metadata_against_the_graph(arts, tmp_path):
    """Metadata handed in (an export's sidecar-to-be) passes the load-time checks a read one does."""
    meta, io = runtime.load(arts["onnx"]).meta, dict(runtime.load(arts["onnx"]).io)
    tmp = tmp_path / ".model.onnx.abc123.tmp"
    shutil.copyfile(arts["onnx"], tmp)
    runtime.open_artifact(tmp, "onnx", metadata=(meta, io))  # the truth loads
    with pytest.raises(CitysegError, match="metadata"):  # load() reads it; never handed in
        runtime.load(arts["onnx"], metadata=(meta, io))
    with pytest.raises(CitysegError, match="size"):
        runtime.open_artifact(tmp, "onnx", metadata=(meta, dict(io, size=[128, 256])))
    with pytest.raises(CitysegError, match="precision"):
        runtime.open_artifact(tmp, "onnx", metadata=(meta, dict(io, precision="int8")))
    with pytest.raises(CitysegError, match="batch"):
        runtime.open_artifact(tmp, "onnx", metadata=(meta, dict(io, batch=0)))


def test_export_parity_is_measured_through_the_runtime_runner(arts, synth_root, tmp_path, monkeypatch):
    """Spoil the runtime's onnxruntime runner: the export's fp32 parity check must see it (it
    runs the file through that runner) and keep no file."""
    from cityseg_deploy.export import export
    from cityseg_deploy.runtime.onnxruntime_backend import OnnxRuntimeSegmenter

    plain = OnnxRuntimeSegmenter.compute
    monkeypatch.setattr(OnnxRuntimeSegmenter, "compute", lambda self, x: plain(self, x) * 1.01)
    out = tmp_path / "spoiled.onnx"
    with pytest.raises(CitysegError, match="differs from PyTorch"):
        export(arts["ckpt"], format="onnx", out=out, data=synth_root, log=None)
    assert not out.exists()


def test_file_size_is_one_unit_in_export_and_bench(arts, tmp_path):
    """MB = 10^6 bytes in export's result and in bench's ``file_mb`` (bench said 2^20)."""
    from cityseg_deploy.bench.benchmark import bench_one
    from cityseg_deploy.fileio import path_mb

    onnx_bytes = arts["onnx"].stat().st_size
    assert path_mb(arts["onnx"]) == round(onnx_bytes / 1e6, 3)
    ir_bytes = sum(p.stat().st_size for p in arts["ov"].rglob("*") if p.is_file())
    assert path_mb(arts["ov"]) == round(ir_bytes / 1e6, 3)
    assert path_mb(tmp_path / "missing.onnx") is None
    row = bench_one(str(arts["onnx"]), warmup=0, iters=1, threads=1)
    assert row["status"] == "ok" and row["file_mb"] == round(onnx_bytes / 1e6, 3)
