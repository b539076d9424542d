"""A deploy folder (``cityseg optimize``'s output) is a MODEL in every command.

The folders here are written with optimize's own writer around an ONNX export of a tiny random
DeepLabV3 (64x128), so each command is seen to run the *recorded* runner (onnxruntime, with the
record's threads and options), not the checkpoint next to it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cityseg_deploy import deploy, runtime
from cityseg_deploy.cli import run
from cityseg_deploy.optimize.record import write_deploy_folder
from cityseg_deploy.system.machine import fingerprint
from support import error_line, random_checkpoint


def make_folder(out: Path, artifact: Path, *, machine: dict | None = None, threads: int | None = 1,
                options: dict | None = None, device: str = "cpu", kind: str = "onnx") -> Path:
    record = {"machine": machine or fingerprint(), "device": device,
              "candidates": [], "refused": [],
              "pick": {"name": "onnx fp32", "kind": kind, "precision": None, "options": options or {},
                       "threads": threads, "device": device, "why": "test"}}
    write_deploy_folder(out, record, artifact, artifact.name)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    from cityseg_deploy.export import export

    root = tmp_path_factory.mktemp("deploy_folder")
    ckpt = random_checkpoint(root / "dl.pt", "deeplabv3_small")
    onnx = Path(export(ckpt, format="onnx", out=root / "dl.onnx", log=None, verify=False).path)
    return {"ckpt": ckpt, "onnx": onnx, "folder": make_folder(root / "dl_deploy", onnx)}


def test_load_runs_the_recorded_runner_with_its_threads_and_options(exported):
    with runtime.load(exported["folder"]) as seg:
        assert seg.backend == "onnxruntime" and seg.threads == 1
        assert Path(seg.path).parent == exported["folder"]  # the copy inside, not the source
    with runtime.load(exported["folder"], threads=2) as seg:
        assert seg.threads == 2  # what the caller says wins over the record
    # the folder's kind and metadata are its artifact's
    from cityseg_deploy.artifacts import artifact_kind, read_artifact_meta

    assert artifact_kind(exported["folder"]) == "onnx"
    assert read_artifact_meta(exported["folder"])[1]["size"] == [64, 128]


def test_recorded_options_reach_the_runner(exported, tmp_path):
    folder = make_folder(tmp_path / "d", exported["onnx"], options={"no_such_option": True})
    with pytest.raises(deploy.CitysegError, match="no_such_option"):
        runtime.load(folder)


def test_every_command_takes_a_deploy_folder(exported, synth_root, tmp_path, capsys):
    folder = str(exported["folder"])
    data = str(synth_root)
    assert run(["eval", folder, "--data", data, "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["model"].endswith("dl_deploy")
    assert run(["predict", folder, "--data", data, "--out", str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred").rglob("*.png"))) == 4
    assert run(["check", str(exported["ckpt"]), folder, "--data", data,
                "--json", str(tmp_path / "c.json")]) == 0
    cand = json.loads((tmp_path / "c.json").read_text())["candidates"][0]
    assert cand["backend"] == "onnxruntime" and cand["agreement"] > 0.99
    assert run(["bench", folder, "--iters", "2", "--warmup", "1", "--no-progress",
                "--json", str(tmp_path / "b.json")]) == 0
    row = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert row["status"] == "ok" and row["backend"] == "onnxruntime"
    assert row["file_mb"] == pytest.approx(exported["onnx"].stat().st_size / 1e6, abs=1e-3)
    assert run(["export", folder, "--format", "triton", "--out", str(tmp_path / "repo")]) == 0
    assert (tmp_path / "repo" / "dl_deploy" / "1" / "model.onnx").is_file()
    from cityseg_deploy.quickstart import write_demo_video

    clip = write_demo_video(tmp_path / "clip.avi", size=(64, 128), frames=3, seed=1)
    assert run(["segment", str(clip), "--model", folder, "--labels-dir", str(tmp_path / "lab")]) == 0
    assert len(list((tmp_path / "lab").glob("*.png"))) == 3
    assert "warning" not in capsys.readouterr().err  # this machine's own record: no warning


def test_serve_takes_a_deploy_folder(exported, monkeypatch):
    """What ``cityseg serve`` does with MODEL before and inside a replica: name the app, check
    batching against the graph (the artifact's, not the folder's), load the recorded runner."""
    pytest.importorskip("ray", reason="the 'scale' extra (ray[serve]) is not installed")
    from cityseg_deploy.scale import serve

    folder = str(exported["folder"])
    assert serve.app_name(folder) == "dl_deploy"
    assert serve.static_batch(folder) == 1  # the static batch-1 ONNX graph inside
    with pytest.raises(deploy.CitysegError, match="static batch-1"):
        serve.check_batching(folder, 4)
    monkeypatch.setattr(serve.ModelReplica, "_report", lambda self: None)  # no Ray board here
    replica = serve.ModelReplica(folder, "cpu", None, 1, 5.0, board=None)
    assert replica.segmenter.backend == "onnxruntime" and replica.segmenter.threads == 1
    replica.segmenter.close()


@pytest.mark.slow
def test_ray_engine_takes_a_deploy_folder(exported, synth_root, tmp_path):
    pytest.importorskip("ray", reason="the 'scale' extra (ray[data]) is not installed")
    single, on_ray = tmp_path / "one.json", tmp_path / "ray.json"
    assert run(["eval", str(exported["folder"]), "--data", str(synth_root), "--json", str(single)]) == 0
    assert run(["eval", str(exported["folder"]), "--data", str(synth_root), "--engine", "ray",
                "--actors", "1", "--json", str(on_ray)]) == 0
    assert json.loads(on_ray.read_text())["confusion"] == json.loads(single.read_text())["confusion"]


def test_a_foreign_record_warns_once_naming_what_differs(exported, tmp_path, monkeypatch):
    said: list[str] = []
    monkeypatch.setattr(deploy, "warn", said.append)
    other = dict(fingerprint(), cpu="Some Other CPU 9000")
    folder = make_folder(tmp_path / "foreign", exported["onnx"], machine=other, threads=1)
    for _ in range(2):
        with runtime.load(folder) as seg:
            assert seg.backend == "onnxruntime"
            assert seg.threads != 1 or seg.threads is None  # another machine's threads are not used
    assert len(said) == 1 and "another machine" in said[0] and "Some Other CPU 9000" in said[0]


@pytest.mark.parametrize("damage", ["not json", "wrong format", "escaping artifact", "missing artifact",
                                    "bad threads"])
def test_a_broken_record_is_one_error_line(exported, tmp_path, capsys, synth_root, damage):
    folder = tmp_path / "broken"
    shutil.copytree(exported["folder"], folder)
    record = json.loads((folder / "deploy.json").read_text())
    if damage == "not json":
        (folder / "deploy.json").write_text("{not json")
    else:
        if damage == "wrong format":
            record["format"] = "something"
        elif damage == "escaping artifact":
            record["pick"]["artifact"] = "../dl.onnx"
        elif damage == "missing artifact":
            (folder / record["pick"]["artifact"]).unlink()
        else:
            record["pick"]["threads"] = "many"
        (folder / "deploy.json").write_text(json.dumps(record))
    assert run(["eval", str(folder), "--data", str(synth_root)]) == 2
    assert "deploy.json" in error_line(capsys)


def test_a_record_for_the_other_device_is_one_error_line(exported, tmp_path, synth_root, capsys):
    folder = make_folder(tmp_path / "gpu", exported["onnx"], device="cuda")
    assert run(["eval", str(folder), "--data", str(synth_root)]) == 2
    assert "--device cuda" in error_line(capsys)


def test_a_checkpoint_deploy_folder_is_a_baseline_that_runs_at_the_candidates_size(exported, synth_root,
                                                                                   tmp_path):
    from cityseg_deploy.evaluation.check import check
    from cityseg_deploy.export import export

    folder = make_folder(tmp_path / "pt", exported["ckpt"], kind="torch")
    small = export(exported["ckpt"], format="onnx", out=tmp_path / "s.onnx", size=(32, 64), log=None,
                   verify=False).path
    report = check(folder, [small], synth_root, progress=False)
    assert report["sizes"]["baseline_ran_at"] == [32, 64] and report["candidates"][0]["agreement"] > 0.9
