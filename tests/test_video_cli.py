"""``cityseg segment`` at the CLI edge: outputs, warnings, exit codes (stand-in and real runtime)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cityseg_deploy.cli import run
from cityseg_deploy.cli import segment as segment_cli
from cityseg_deploy.fileio import read_label
from test_video_support import StandInSegmenter, decode_all, video_info, write_clip


@pytest.fixture
def stand_in(monkeypatch) -> StandInSegmenter:
    seg = StandInSegmenter()
    monkeypatch.setattr(segment_cli, "_load_segmenter", lambda *a, **k: seg)
    return seg


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("cli") / "drive.mp4", n=32)


def test_segment_writes_video_and_labels_and_reports_speed(clip, tmp_path, stand_in, capsys):
    code = run(["segment", str(clip), "--model", "m.pt", "--out", str(tmp_path / "o.mp4"),
                "--labels-dir", str(tmp_path / "l"), "--batch", "4", "--vid-stride", "2"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "32 frames, 96x64, 25.00 fps" in cap.out
    assert "speed: decode" in cap.out and "FPS" in cap.out
    assert video_info(tmp_path / "o.mp4") == (16, 64, 96, 25.0)
    frames = decode_all(clip)
    for i in (0, 2, 30):
        np.testing.assert_array_equal(read_label(tmp_path / "l" / f"frame_{i:06d}.png"), stand_in.rule(frames[i]))


@pytest.mark.parametrize("make", ["missing", "garbage"])
def test_unopenable_source_is_an_error_line_and_exit_2(tmp_path, stand_in, capsys, make):
    src = tmp_path / "bad.mp4"
    if make == "garbage":
        src.write_bytes(b"not a video" * 100)
    code = run(["segment", str(src), "--model", "m.pt", "--out", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "bad.mp4" in err and "Traceback" not in err
    assert not (tmp_path / "o.mp4").exists()


def test_truncated_file_ends_with_a_warning_and_exit_0(tmp_path, stand_in, capsys):
    path = write_clip(tmp_path / "cut.avi", n=32)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code = run(["segment", str(path), "--model", "m.pt", "--labels-dir", str(tmp_path / "l")])
    cap = capsys.readouterr()
    n = len(list((tmp_path / "l").iterdir()))
    assert code == 0 and 0 < n < 32
    assert f"{n} frames" in cap.out and "warning: " in cap.err and "truncated" in cap.err


def test_ctrl_c_exit_130_keeps_the_video(clip, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(segment_cli, "_load_segmenter", lambda *a, **k: StandInSegmenter(raise_after=5))
    code = run(["segment", str(clip), "--model", "m.pt", "--out", str(tmp_path / "o.mp4")])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert video_info(tmp_path / "o.mp4")[0] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["o.mp4"]


def test_show_without_display_is_a_clear_error(clip, stand_in, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert run(["segment", str(clip), "--model", "m.pt", "--show"]) == 2
    assert "error: --show" in capsys.readouterr().err


def test_nothing_to_write_is_an_error(clip, stand_in, capsys):
    assert run(["segment", str(clip), "--model", "m.pt"]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    runtime = pytest.importorskip("cityseg_deploy.runtime", reason="runtime stage not in this checkout yet")
    if not hasattr(runtime, "load"):
        pytest.skip("runtime stage not in this checkout yet (no runtime.load)")
    from cityseg_deploy.labels import CITYSCAPES19
    from cityseg_deploy.models.checkpoint import ModelMeta, save_checkpoint
    from cityseg_deploy.models.registry import build_model, get_default_cfg

    import torch

    torch.manual_seed(0)
    model = build_model("deeplabv3_small", num_classes=19).eval()
    cfg = get_default_cfg("deeplabv3_small")
    meta = ModelMeta(arch="deeplabv3_small", arch_args={"num_classes": 19}, label_set="cityscapes19",
                     class_names=list(CITYSCAPES19.class_names), palette=[list(c) for c in CITYSCAPES19.palette],
                     mean=list(cfg["mean"]), std=list(cfg["std"]), input_size=[64, 96])
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, meta)
    return path


def test_real_runtime_labels_match_predict_on_decoded_frames(clip, tmp_path, tiny_checkpoint, capsys):
    from cityseg_deploy import runtime

    code = run(["segment", str(clip), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o.mp4"),
                "--labels-dir", str(tmp_path / "l"), "--max-frames", "6", "--batch", "3",
                "--label-format", "labelIds", "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    seg = runtime.load(tiny_checkpoint, threads=1)
    frames = np.stack(decode_all(clip)[:6])
    from cityseg_deploy.labels import CITYSCAPES19

    want = CITYSCAPES19.to_label_id_lut()[np.asarray(seg.predict(frames))]
    got = np.stack([read_label(tmp_path / "l" / f"frame_{i:06d}.png") for i in range(6)])
    assert (got == want).mean() > 0.999  # batch-of-3 vs batch-of-6 kernels may differ in the last ulp
    assert video_info(tmp_path / "o.mp4")[:3] == (6, 64, 96)
