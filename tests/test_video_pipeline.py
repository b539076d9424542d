"""Pipeline behaviour on generated clips: counts, labels, outputs, stride, sources, robustness."""
from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from cityseg_deploy.errors import CitysegError
from cityseg_deploy.fileio import read_label
from cityseg_deploy.labels import CITYSCAPES19
from cityseg_deploy.video import PipelineOptions, Renderer, VideoSource, parse_sources, run_source, run_sources
from cityseg_deploy.video.pipeline import END, LatestQueue
from test_video_support import StandInSegmenter, decode_all, moving_frame, video_info, write_clip

N = 40


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "street.mp4", n=N)


def _open(spec) -> VideoSource:
    (src,) = parse_sources(str(spec))
    return src.open()


def _no_temp(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("batch", [1, 4])
def test_video_file_to_video_and_label_pngs(clip, tmp_path, batch):
    seg = StandInSegmenter()
    res = run_source(_open(clip), seg, out=tmp_path / "out.mp4", labels_dir=tmp_path / "labels",
                     opts=PipelineOptions(batch=batch))
    assert res.frames == N and res.decoded == N and res.dropped == 0 and not res.warning
    assert max(seg.batch_sizes) == batch
    pngs = sorted((tmp_path / "labels").glob("*.png"))
    assert [p.name for p in pngs] == [f"frame_{i:06d}.png" for i in range(N)]
    for frame, png in zip(decode_all(clip), pngs):
        np.testing.assert_array_equal(read_label(png), seg.rule(frame))
    assert video_info(tmp_path / "out.mp4") == (N, 64, 96, 25.0)
    assert res.out == tmp_path / "out.mp4" and _no_temp(tmp_path)
    assert "pipeline" in res.speed_line() and "inference" in res.speed_line()


def test_modes_change_the_output_frame(clip, tmp_path):
    seg = StandInSegmenter()
    opts = PipelineOptions(mode="side-by-side", max_frames=3)
    run_source(_open(clip), seg, out=tmp_path / "sbs.avi", opts=opts)
    assert video_info(tmp_path / "sbs.avi")[:3] == (3, 64, 192)
    run_source(_open(clip), seg, out=tmp_path / "mask.mp4", opts=PipelineOptions(mode="mask", max_frames=2))
    assert video_info(tmp_path / "mask.mp4")[:3] == (2, 64, 96)
    first = decode_all(clip)[0]
    labels = seg.rule(first)
    want = CITYSCAPES19.colorize(labels)[..., ::-1]  # the renderer draws BGR for the writer
    np.testing.assert_array_equal(Renderer(seg.meta.palette, mode="mask")(first, labels), want)
    blend = Renderer(seg.meta.palette, mode="overlay", alpha=0.25)(first, labels).astype(int)
    np.testing.assert_allclose(blend, 0.75 * first[..., ::-1] + 0.25 * want, atol=1)


def test_stride_and_max_frames(clip, tmp_path):
    res = run_source(_open(clip), StandInSegmenter(), labels_dir=tmp_path / "l",
                     opts=PipelineOptions(vid_stride=3, max_frames=5, batch=2))
    assert res.frames == 5
    assert sorted(p.name for p in (tmp_path / "l").iterdir()) == [f"frame_{i:06d}.png" for i in (0, 3, 6, 9, 12)]
    res = run_source(_open(clip), StandInSegmenter(), labels_dir=tmp_path / "s",
                     opts=PipelineOptions(vid_stride=7))
    assert res.frames == len(range(0, N, 7))


def test_label_ids_format(clip, tmp_path):
    seg = StandInSegmenter()
    lut = CITYSCAPES19.to_label_id_lut()
    run_source(_open(clip), seg, labels_dir=tmp_path / "ids", opts=PipelineOptions(max_frames=2, label_lut=lut))
    got = read_label(tmp_path / "ids" / "frame_000001.png")
    np.testing.assert_array_equal(got, lut[seg.rule(decode_all(clip)[1])])


def _image_folder(folder: Path, n: int = 6) -> Path:
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), cv2.cvtColor(moving_frame((64, 96), i), cv2.COLOR_RGB2BGR))
    return folder


def test_image_folder_and_glob_sources(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    seg = StandInSegmenter()
    for spec in (folder, f"{folder}/img_*.png"):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}"
        res = run_source(_open(spec), seg, out=out / "v.mp4", labels_dir=out / "l")
        assert res.frames == 6 and video_info(out / "v.mp4")[:3] == (6, 64, 96)
        for i in range(6):  # PNG input is lossless: compare with predict on the image itself
            np.testing.assert_array_equal(read_label(out / "l" / f"frame_{i:06d}.png"),
                                          seg.rule(moving_frame((64, 96), i)))


def test_list_file_processes_each_source_with_suffixed_outputs(clip, tmp_path):
    folder = _image_folder(tmp_path / "imgs", n=4)
    listing = tmp_path / "sources.txt"
    listing.write_text(f"# two sources\n{clip}\n\nimgs\n")
    sources = parse_sources(str(listing))
    assert [s.stem for s in sources] == ["street", "imgs"]
    results = run_sources(sources, StandInSegmenter(), out=tmp_path / "o.mp4", labels_dir=tmp_path / "L",
                          opts=PipelineOptions(max_frames=5))
    assert [r.frames for r in results] == [5, 4]
    assert video_info(tmp_path / "o_street.mp4")[0] == 5 and video_info(tmp_path / "o_imgs.mp4")[0] == 4
    assert len(list((tmp_path / "L" / "street").iterdir())) == 5
    assert len(list((tmp_path / "L" / "imgs").iterdir())) == 4
    assert folder.is_dir()


def test_realtime_drops_stale_frames_with_a_slow_runner(tmp_path):
    fast = write_clip(tmp_path / "fast.avi", n=30, fps=200.0)  # played at 200 fps = 0.15 s
    res = run_source(_open(fast), StandInSegmenter(delay_s=0.03), labels_dir=tmp_path / "l",
                     opts=PipelineOptions(realtime=True))
    assert res.realtime and res.dropped > 0
    assert res.frames + res.dropped == 30 and res.frames == len(list((tmp_path / "l").iterdir()))
    assert "dropped" in res.speed_line()
    res = run_source(_open(fast), StandInSegmenter(delay_s=0.005), opts=PipelineOptions(realtime=False),
                     labels_dir=tmp_path / "all")
    assert res.frames == 30 and res.dropped == 0


def test_latest_queue_keeps_only_the_newest():
    q, stop = LatestQueue(), threading.Event()
    for i in range(5):
        q.put(i, stop)
    q.close(stop)
    assert q.get(stop) == 4 and q.dropped == 4
    assert q.get(stop) is END  # the sentinel after the last item


class FakeCapture:
    """A capture yielding ``frames`` frames, then failing as a dropped stream does."""

    def __init__(self, frames: int, start: int = 0) -> None:
        self.left, self.t = frames, start

    def isOpened(self) -> bool:
        return True

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        self.t += 1
        return True, cv2.cvtColor(moving_frame((32, 48), self.t), cv2.COLOR_RGB2BGR)

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_WIDTH: 48, cv2.CAP_PROP_FRAME_HEIGHT: 32}.get(prop, 0.0)

    def release(self) -> None:
        pass


def test_stream_reconnects_with_exponential_backoff_then_gives_up(tmp_path):
    plan = [FakeCapture(5), None, FakeCapture(3), None, None, None]  # None: connection refused
    sleeps: list[float] = []
    src = VideoSource("rtsp://camera.invalid/live", reconnect=3, backoff_s=0.1,
                      capture_factory=lambda target: plan.pop(0) if plan else None, sleep=sleeps.append)
    assert src.live
    res = run_source(src.open(), StandInSegmenter(), labels_dir=tmp_path / "l", opts=PipelineOptions(realtime=False))
    assert res.frames == 8 and src.reconnects == 1
    assert sleeps == [0.1, 0.2, 0.1, 0.2, 0.4]  # back-off doubles, resets after a good reconnect
    assert "gave up after 3 reconnect attempts" in res.warning


def test_truncated_file_is_read_up_to_the_damage(tmp_path):
    path = write_clip(tmp_path / "cut.avi", n=N)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    res = run_source(_open(path), StandInSegmenter(), out=tmp_path / "o.mp4")
    assert 0 < res.frames < N and "truncated or corrupt" in res.warning
    assert video_info(tmp_path / "o.mp4")[0] == res.frames


def test_truncated_mp4_without_index_is_a_clear_error(clip, tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[:2000])
    with pytest.raises(CitysegError, match="cannot open"):
        _open(cut)


def test_ctrl_c_keeps_a_playable_video_with_the_frames_so_far(clip, tmp_path):
    k = 7
    res = run_source(_open(clip), StandInSegmenter(raise_after=k), out=tmp_path / "o.mp4",
                     labels_dir=tmp_path / "l")
    assert res.interrupted and res.frames == k  # frames segmented before the interrupt are kept
    n, h, w, fps = video_info(tmp_path / "o.mp4")
    assert n == res.frames and (h, w, fps) == (64, 96, 25.0)
    assert _no_temp(tmp_path)


def test_worker_error_reaches_the_main_thread_and_leaves_no_output(clip, tmp_path):
    before = threading.active_count()
    with pytest.raises(RuntimeError):
        run_source(_open(clip), StandInSegmenter(raise_after=3, exc=RuntimeError), out=tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists() and _no_temp(tmp_path)
    assert threading.active_count() == before


def test_source_kinds_are_recognised(tmp_path):
    (cam,) = parse_sources("0")
    (url,) = parse_sources("rtsp://10.0.0.5:554/stream1")
    assert cam.live and cam.camera and cam.stem == "camera0"
    assert url.live and not url.camera
    with pytest.raises(CitysegError, match="no such file"):
        parse_sources(str(tmp_path / "missing.mp4"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(CitysegError, match="names no sources"):
        parse_sources(str(tmp_path / "empty.txt"))


def test_live_source_defaults_to_realtime_and_counts_drops(tmp_path):
    class SlowCamera(FakeCapture):
        def read(self):
            import time

            time.sleep(0.002)  # a 500 fps camera
            return super().read()

    src = VideoSource(0, reconnect=0, capture_factory=lambda target: SlowCamera(60))
    res = run_source(src.open(), StandInSegmenter(delay_s=0.02), labels_dir=tmp_path / "l")
    assert res.realtime and res.dropped > 0 and res.frames + res.dropped == 60
