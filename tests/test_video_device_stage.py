"""segment's inference stage and writers (issue 24 item 4): the device stage's arithmetic, the
overlap of batches in flight, PNG and video writing off the writer's thread.

The device stage runs on any torch device, so its arithmetic is checked here on the CPU against
the independent path every other command uses (``Segmenter.predict`` + the OpenCV renderer); on
a GPU the same stage runs with pinned buffers and events (test_gpu.py, bench/gpu_defaults.py).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from cityseg_deploy import fileio, runtime
from cityseg_deploy.fileio import read_label
from cityseg_deploy.video import PipelineOptions, Renderer, parse_sources, run_source
from cityseg_deploy.video.device_stage import HostStage, TorchDeviceStage, device_stage
from cityseg_deploy.video.encode import ThreadedVideoSink
from cityseg_deploy.video.writers import LabelPngSink, VideoSink
from support import random_checkpoint
from test_video_support import StandInSegmenter, video_info, write_clip

SIZE = (32, 64)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    path = random_checkpoint(tmp_path_factory.mktemp("stage") / "dl.pt", "deeplabv3_small", size=SIZE)
    return runtime.load(path, device="cpu", threads=1)


@pytest.fixture(scope="module")
def frames():
    from cityseg_deploy.data.synth import synth_scene

    return [synth_scene(SIZE, seed=3, t=0.2 * k)[0] for k in range(5)]


@pytest.mark.parametrize("mode", ["overlay", "mask", "side-by-side"])
def test_device_stage_equals_predict_and_the_renderer(seg, frames, mode):
    render = Renderer(seg.meta.palette, mode=mode, alpha=0.4)
    stage = TorchDeviceStage(seg, render, depth=2)
    first = stage.submit(frames[:2])
    second = stage.submit(frames[2:5])    # two batches in flight: each keeps its own slot
    labels2, drawn2 = stage.collect(second)
    labels1, drawn1 = stage.collect(first)
    want = seg.predict(np.stack(frames))
    np.testing.assert_array_equal(np.concatenate([labels1, labels2]), want)
    for image, lab, drawn in zip(frames, want, drawn1 + drawn2):
        ref = render(image, lab)
        assert drawn.shape == ref.shape
        assert np.abs(drawn.astype(int) - ref.astype(int)).max() <= 1  # rounding of the blend


def test_device_stage_resizes_on_the_device(seg, frames):
    big = [cv2.resize(f, (96, 48), interpolation=cv2.INTER_LINEAR) for f in frames[:2]]
    labels, drawn = TorchDeviceStage(seg, None).collect(TorchDeviceStage(seg, None).submit(big))
    assert labels.shape == (2, 48, 96) and drawn is None
    agree = (labels == seg.predict(np.stack(big))).mean()
    assert agree >= 0.97  # torch's bilinear vs OpenCV's: a few boundary pixels differ


def test_cuda_torch_runner_gets_the_device_stage_others_the_host(seg):
    assert isinstance(device_stage(seg, None), HostStage)              # CPU: predict + OpenCV
    assert isinstance(device_stage(StandInSegmenter(), None), HostStage)

    class OnCuda:  # what device_stage reads of a PyTorch runner on a GPU
        backend, torch_device = "torch", type("D", (), {"type": "cuda"})()

    stage = device_stage(OnCuda(), None)
    assert isinstance(stage, TorchDeviceStage) and stage.depth == 2 and stage.cuda


def test_pipeline_keeps_order_with_batches_in_flight(tmp_path, monkeypatch):
    """A stage with depth 3 returns batches later than it takes them; frames stay in order."""
    clip = write_clip(tmp_path / "c.mp4", n=11)
    stand_in = StandInSegmenter()

    class Deferred(HostStage):
        depth = 3
        name = "deferred"

    monkeypatch.setattr("cityseg_deploy.video.pipeline.device_stage", lambda s, r: Deferred(s))
    (src,) = parse_sources(str(clip))
    res = run_source(src.open(), stand_in, labels_dir=tmp_path / "labels", opts=PipelineOptions(batch=2))
    pngs = sorted((tmp_path / "labels").glob("*.png"))
    assert res.frames == 11 and [p.name for p in pngs] == [f"frame_{i:06d}.png" for i in range(11)]
    assert "inference on deferred" in res.speed_line()


def test_label_pngs_do_not_rescan_the_folder_per_frame(tmp_path, monkeypatch):
    """Each PNG used to list the whole folder for stale temporaries: O(frames²) — 8.9 ms a frame
    at 1000 frames, why --labels-dir alone ran slower than a video on the GPU."""
    calls = []
    real = fileio.clean_stale_temporaries
    monkeypatch.setattr(fileio, "clean_stale_temporaries", lambda *a: calls.append(a) or real(*a))
    sink = LabelPngSink(tmp_path / "l", workers=2)
    labels = np.random.default_rng(0).integers(0, 19, (20, 24, 40), dtype=np.uint8)
    for k, lab in enumerate(labels):
        sink.write(k, lab)
    sink.close()
    assert calls == []
    for k, lab in enumerate(labels):
        np.testing.assert_array_equal(read_label(tmp_path / "l" / f"frame_{k:06d}.png"), lab)
    assert not [p for p in (tmp_path / "l").iterdir() if p.name.startswith(".")]


def test_label_png_worker_error_reaches_close(tmp_path):
    sink = LabelPngSink(tmp_path / "l", workers=1)
    sink.write(0, np.zeros((4, 4, 7), np.uint8))  # 7 channels: OpenCV cannot encode it
    with pytest.raises(Exception):
        sink.close()


def test_threaded_video_sink_writes_every_frame_in_order(tmp_path):
    out = tmp_path / "v.avi"
    sink = ThreadedVideoSink(VideoSink(out, 10.0), depth=2)
    shades = list(range(0, 250, 25))
    for v in shades:
        sink.write(np.full((32, 48, 3), v, np.uint8))
    assert sink.close(keep=True) == out
    assert video_info(out)[:3] == (len(shades), 32, 48)
    cap = cv2.VideoCapture(str(out))
    got = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        got.append(int(round(frame.mean())))
    assert np.abs(np.array(got) - np.array(shades)).max() <= 3


def test_threaded_video_sink_error_removes_the_partial_video(tmp_path):
    sink = ThreadedVideoSink(VideoSink(tmp_path / "v.avi", 10.0))
    sink.write(np.zeros((32, 48, 3), np.uint8))
    sink.write("not a frame")
    with pytest.raises(Exception):
        sink.close(keep=True)
    assert not list(tmp_path.iterdir())


def test_speed_line_names_the_encoder(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", n=4)
    (src,) = parse_sources(str(clip))
    res = run_source(src.open(), StandInSegmenter(), out=tmp_path / "o.mp4")
    assert "encoder: mp4v" in res.speed_line() and "own thread" in res.speed_line()
