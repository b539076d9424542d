"""Options declared once: the export option table drives the CLI, profiles, ExportJob and help;
an option that does not apply (a misspelt runtime option, a TensorRT option given to ONNX, an
unknown profile key) is refused, naming it, instead of being dropped without a word."""
from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from cityseg_deploy import runtime
from cityseg_deploy.cli import app, run
from cityseg_deploy.cli.export import read_profile
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.export import FORMATS, export
from cityseg_deploy.export.job import ExportJob
from cityseg_deploy.export.options import OPTIONS
from test_export_cli import ckpt, files  # noqa: F401  (module fixture: a denseaspp_small checkpoint)
from test_runtime_artifacts import arts  # noqa: F401  (session fixture)


# ---- runtime.load ---------------------------------------------------------------------------
def test_unknown_runtime_option_names_it_and_what_the_backend_takes(ckpt):
    with pytest.raises(CitysegError) as err:
        runtime.load(ckpt, bogus=1)
    msg = str(err.value)
    assert "'bogus'" in msg and "torch runner" in msg and "cuda_graphs" in msg
    with pytest.raises(CitysegError, match="did you mean 'cuda_graphs'"):
        runtime.load(ckpt, cuda_graph=True)  # onnxruntime's spelling, given to the torch runner


def test_unknown_runtime_option_for_onnx(arts):
    with pytest.raises(CitysegError, match="'allow_emulated_bf16' does not apply to the onnx runner"):
        runtime.load(arts["onnx"], allow_emulated_bf16=True)


def test_check_emulate_bf16_with_an_onnx_candidate(arts, synth_root, tmp_path, no_native_bf16):
    """--emulate-bf16 is a torch-runner option: check passes it to the checkpoint only, so an
    ONNX candidate next to CKPT@bf16 still runs (the runner would refuse it now)."""
    js = tmp_path / "c.json"
    assert run(["check", str(arts["ckpt"]), f"{arts['ckpt']}@bf16", str(arts["onnx"]), "--data",
                str(synth_root), "--threads", "1", "--no-progress", "--emulate-bf16",
                "--json", str(js)]) == 0
    bf16, onnx = json.loads(js.read_text())["candidates"]
    assert bf16["precision"] == "bf16 (emulated)" and onnx["precision"] == "fp32"


# ---- export: options that do not apply ------------------------------------------------------
@pytest.mark.parametrize("argv, fragment", [
    (["--workspace", "2"], "--workspace applies to --format trt only"),
    (["--device", "cuda"], "--device applies to --format aoti or triton only"),
    (["--calib-images", "4"], "--calib-images applies to --precision int8 only"),
    (["--format", "aoti", "--opset", "17"], "--opset applies to --format onnx, trt, openvino or triton only"),
])
def test_option_for_another_format_is_refused(ckpt, argv, fragment, capsys):
    before = files(ckpt.parent)
    assert run(["export", str(ckpt), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err
    assert files(ckpt.parent) == before


def test_unknown_export_keyword_names_it(ckpt):
    with pytest.raises(CitysegError, match="unknown option 'opst'; did you mean 'opset'"):
        export(ckpt, format="onnx", opst=17, log=None)


# ---- profiles -------------------------------------------------------------------------------
def test_misspelt_profile_key_names_the_closest(ckpt, tmp_path, capsys):
    prof = tmp_path / "p.yaml"
    prof.write_text("calib_imags: 4\nexports:\n  - {format: onnx, precision: int8}\n")
    assert run(["export", str(ckpt), "--profile", str(prof)]) == 2
    err = capsys.readouterr().err
    assert "unknown keys ['calib_imags']" in err and "did you mean 'calib_images'" in err


def test_profile_keys_go_to_the_exports_they_apply_to(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("calib_images: 4\nworkspace_gb: 2\nexports:\n  - {format: onnx}\n"
                    "  - {format: onnx, precision: int8}\n  - {format: trt, precision: fp16}\n")
    fp32, int8, trt = read_profile(str(prof))
    assert "calib_images" not in fp32 and int8["calib_images"] == 4 and "calib_images" not in trt
    assert trt["workspace_gb"] == 2 and "workspace_gb" not in fp32 and "workspace_gb" not in int8


def test_profile_key_that_applies_nowhere_fails_before_any_export(ckpt, tmp_path, capsys):
    prof = tmp_path / "p.yaml"
    prof.write_text("exports:\n  - {format: onnx}\n  - {format: onnx, workspace_gb: 2}\n")
    before = files(ckpt.parent)
    assert run(["export", str(ckpt), "--profile", str(prof)]) == 2
    err = capsys.readouterr().err
    assert "export 2 (onnx fp32): --workspace applies to --format trt only" in err
    assert files(ckpt.parent) == before  # the first export did not run either


# ---- one table --------------------------------------------------------------------------------
def test_help_lists_every_declared_option_and_the_format_table():
    text = CliRunner().invoke(app, ["export", "--help"], terminal_width=200).output
    for opt in OPTIONS:
        assert (opt.flag if opt.cli else opt.name) in text, opt.name
    for fmt in FORMATS:
        assert f"| {fmt.cli} | {', '.join(fmt.other_names) or '-'} | {fmt.suffix or 'REPO/<name>/'} |" in text


def test_docs_format_table_is_the_derived_one():
    from pathlib import Path

    from cityseg_deploy.export import format_table

    assert format_table() in (Path(__file__).resolve().parents[1] / "docs" / "export.md").read_text()


def test_export_job_fields_and_defaults_come_from_the_table():
    fields = {f.name: f.default for f in dataclasses.fields(ExportJob)}
    for opt in OPTIONS:
        if opt.job and opt.name != "size":  # size is required: the checkpoint's when not given
            assert fields[opt.name] == opt.default, opt.name
    job_options = {o.name for o in OPTIONS if o.job}
    internal = {"source", "meta", "source_sha256", "source_onnx", "ignored_scope", "log", "_model"}
    assert set(fields) == job_options | internal


def test_precision_names_are_one_tuple():
    from cityseg_deploy import artifacts, precision
    from cityseg_deploy.cli.options import option
    from cityseg_deploy.runtime import base

    assert artifacts.PRECISIONS is precision.PRECISIONS is base.PRECISIONS

    @option("precision")
    def f(precision):  # pragma: no cover - only its option is read
        pass

    # the run-stage option takes what a runner can be asked for: the artifact precisions + tf32
    assert tuple(f.__click_params__[0].type.choices) == precision.RUN_PRECISIONS
    assert precision.RUN_PRECISIONS[:len(precision.PRECISIONS)] == precision.PRECISIONS
