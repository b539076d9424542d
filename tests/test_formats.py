"""formats.py: one record per artifact format, and every table derives from it.

A hypothetical format added with one record (plus its exporter and runner, here in this file)
is an ``export --format`` choice, gets a default output name, is found by ``artifact_kind`` and
opened by ``runtime.load`` with its own runner options checked by name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cityseg_deploy import formats, runtime
from cityseg_deploy.artifacts import artifact_kind, default_io, read_artifact_meta, write_sidecar
from cityseg_deploy.cli import run
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.export import export
from cityseg_deploy.export.formats import default_output, get_format
from cityseg_deploy.export.result import ExportResult
from cityseg_deploy.models.checkpoint import ModelMeta, save_checkpoint
from cityseg_deploy.models.registry import build_model
from cityseg_deploy.runtime.base import Segmenter, artifact_metadata

SIZE = (32, 64)


def export_fake(job, out: Path, precision: str = "fp32") -> ExportResult:
    """The hypothetical format's exporter: a file holding the class count, metadata in a sidecar."""
    out.write_bytes(b"FAKE")
    write_sidecar(out, job.meta, default_io(job.meta, size=list(job.size)))
    return ExportResult(out, "fake", precision, 0.0, 0.0)


class FakeSegmenter(Segmenter):
    """The hypothetical format's runner: every pixel is class ``label``."""

    backend = "fake"

    def __init__(self, path, *, device="cpu", precision=None, threads=None, size=None, metadata=None,
                 label: int = 0):
        meta, io = artifact_metadata(path, "fake", metadata)
        super().__init__(path, meta, io, device=device, precision=precision, threads=threads, size=size)
        self.label = label

    def compute(self, x):
        logits = np.zeros((x.shape[0], self.num_classes, *self.input_size), np.float32)
        logits[:, self.label] = 1.0
        return logits


FAKE = formats.Format("fake", ("fk",), (".fake",), metadata="sidecar", precisions=("fp32",),
                      exporter=f"{__name__}:export_fake", runner=f"{__name__}:FakeSegmenter",
                      description="a format added by a test")


@pytest.fixture()
def fake_format():
    formats.register(FAKE)
    yield FAKE
    formats.unregister("fake")


@pytest.fixture()
def ckpt(tmp_path):
    torch.manual_seed(0)
    meta = ModelMeta.for_arch("unet_small", input_size=SIZE)
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("unet_small", **meta.arch_args).eval(), meta)
    return path


def test_one_record_adds_a_format_everywhere(fake_format, ckpt, capsys):
    assert get_format("fk") is FAKE and "fake" in formats.export_names()
    assert run(["export", str(ckpt), "--format", "fak"]) == 2  # a misspelling names it
    assert "did you mean 'fake'?" in capsys.readouterr().err
    assert default_output(ckpt, FAKE, "fp32") == ckpt.with_name("m.fake")
    result = export(ckpt, format="fk", log=None)
    assert result.path == ckpt.with_name("m.fake") and artifact_kind(result.path) == "fake"
    assert read_artifact_meta(result.path)[0].arch == "unet_small"
    with runtime.load(result.path, label=3) as seg:
        assert isinstance(seg, FakeSegmenter)
        assert (seg.predict(np.zeros((40, 50, 3), np.uint8)) == 3).all()
    with pytest.raises(CitysegError, match="did you mean 'label'"):
        runtime.load(result.path, labell=3)


def test_registered_names_and_suffixes_must_be_new():
    with pytest.raises(CitysegError, match="already belong to tensorrt"):
        formats.register(formats.Format("other", ("trt",), (".x",)))
    with pytest.raises(CitysegError, match="already belong to onnx"):
        formats.register(formats.Format("other", (), (".onnx",)))
    assert formats.find("other") is None


def test_tensorrt_trt_and_engine_are_one_format():
    assert get_format("tensorrt") is get_format("trt") is get_format("engine") is formats.get("tensorrt")
    assert formats.kind_by_suffix()[".engine"] == "tensorrt" == formats.get("trt").name


def test_triton_is_an_export_format(tmp_path, capsys):
    assert get_format("triton").metadata == "repository"
    assert run(["export", str(tmp_path / "m.pt"), "--format", "tritn"]) == 2
    err = capsys.readouterr().err
    assert "triton" in err and "did you mean 'triton'?" in err
    assert formats.triton_platforms()["tensorrt"][1] == "tensorrt_plan"


def test_a_profile_can_name_triton(tmp_path):
    from cityseg_deploy.cli.export import read_profile

    prof = tmp_path / "p.yaml"
    prof.write_text("exports:\n  - {format: triton, batch: 4}\n  - {format: tensorrt, precision: fp16}\n")
    jobs = read_profile(str(prof))
    assert [get_format(j["format"]).name for j in jobs] == ["triton", "tensorrt"]
