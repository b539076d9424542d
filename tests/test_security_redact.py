"""Passwords in stream URLs never reach any output (issue 15, security 2).

Every path a source's name can take is driven with ``rtsp://alice:s3cret@...``: the one-line
description, progress bar, per-source summary, warnings (stream lost), the ``error:`` line of an
unopenable stream (real OpenCV/FFmpeg on a closed port, native stderr captured too), list files,
output file and folder names.  The secret must appear nowhere; ``alice:***@`` must.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityseg_deploy.cli import run
from cityseg_deploy.cli import segment as segment_cli
from cityseg_deploy.redact import redact, strip_userinfo
from cityseg_deploy.video import PipelineOptions, VideoSource, run_sources
from test_video_pipeline import FakeCapture
from test_video_support import StandInSegmenter

SECRET = "s3cret"


def _drops_after(n: int):
    """A capture factory: each target streams ``n`` frames once, then refuses to reconnect."""
    seen: set = set()
    real = cv2.VideoCapture  # the writer's read-back check opens the local file it wrote

    def factory(target, *args):
        if isinstance(target, str) and Path(target).is_file():
            return real(target, *args)
        if target in seen:
            return None
        seen.add(target)
        return FakeCapture(n)
    return factory


def _files_under(folder):
    return [str(p) for p in folder.rglob("*")]


@pytest.mark.parametrize("text, shown", [
    ("rtsp://alice:s3cret@cam/live", "rtsp://alice:***@cam/live"),
    ("http://u:s3cret@h:8080/x.mjpg?a=1", "http://u:***@h:8080/x.mjpg?a=1"),
    ("error: rtsps://admin:s3c@r/et@cam:554/s: cannot open", "error: rtsps://admin:***@cam:554/s: cannot open"),
    ("'rtmp://a:s3cret@h/app': bad; http://b:s3cret@i/", "'rtmp://a:***@h/app': bad; http://b:***@i/"),
    ("rtsp://cam/live and /data/a:b@c.png", "rtsp://cam/live and /data/a:b@c.png"),
    ("http:/bob:s3cret@h/x: no such dataset", "http:/bob:***@h/x: no such dataset"),  # via pathlib
])
def test_redact(text, shown):
    assert redact(text) == shown
    assert redact(shown) == shown  # idempotent


@settings(max_examples=200, deadline=None)
@given(user=st.text(st.characters(blacklist_categories=("Zs", "Cc"), blacklist_characters=":/?#@"), max_size=8),
       secret=st.text(st.characters(blacklist_categories=("Zs", "Cc", "Zl", "Zp")), min_size=1, max_size=16),
       scheme=st.sampled_from(["rtsp", "rtsps", "rtmp", "http", "https", "srt", "udp"]),
       prefix=st.sampled_from(["", "error: ", "source 1/2 ", "'"]))
def test_no_generated_password_survives(user, secret, scheme, prefix):
    token = "\u2603PW" + secret  # a marker that cannot occur in the rest of the line
    line = f"{prefix}{scheme}://{user}:{token}@host.example:554/stream/1: cannot open"
    shown = redact(line)
    assert "\u2603PW" not in shown and f"{scheme}://{user}:***@host.example:554/stream/1" in shown
    assert "\u2603PW" not in strip_userinfo(line)


def test_source_name_stem_description_and_warning(tmp_path):
    src = VideoSource(f"rtsp://alice:{SECRET}@cam.local:554/live", reconnect=1,
                      capture_factory=_drops_after(3), sleep=lambda s: None)
    assert src.name == "rtsp://alice:***@cam.local:554/live"
    assert SECRET not in src.stem and "alice" not in src.stem
    src.open()
    (res,) = run_sources([src], StandInSegmenter(), labels_dir=tmp_path / "l",
                         opts=PipelineOptions(realtime=False))
    assert res.frames == 3 and "stream lost" in (res.warning or "")
    for text in (src.describe(), res.source, res.warning):
        assert SECRET not in text and "alice:***@" in text


def test_segment_cli_every_output_is_redacted(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(segment_cli, "_load_segmenter", lambda *a, **k: StandInSegmenter())
    monkeypatch.setattr(cv2, "VideoCapture", _drops_after(4))
    streams = tmp_path / "cams.streams"
    streams.write_text(f"rtsp://alice:{SECRET}@cam1/live\nhttp://alice:{SECRET}@cam2/video.mjpg\n")
    out = tmp_path / "out"
    for source in (f"rtsp://alice:{SECRET}@cam.local:554/live", str(streams)):
        code = run(["segment", source, "--model", "m.pt", "--out", str(out / "o.avi"), "--labels-dir",
                    str(out / "labels"), "--reconnect", "1", "--progress", "--no-realtime"])
        cap = capfd.readouterr()
        assert code == 0, cap.err
        text = cap.out + cap.err
        assert SECRET not in text and "alice:***@" in text and "stream lost" in text
        assert "it/s" in text or "frame/s" in text or "%|" in text  # the progress bar did print
        assert not [p for p in _files_under(out) if SECRET in p or "alice" in p]


def test_unopenable_stream_error_line_is_redacted(tmp_path, capfd):
    # Real OpenCV/FFmpeg against a closed local port: fails at once, native messages included.
    code = run(["segment", f"rtsp://alice:{SECRET}@127.0.0.1:9/live", "--model", "m.pt",
                "--labels-dir", str(tmp_path / "l"), "--reconnect", "0"])
    cap = capfd.readouterr()
    assert code == 2
    assert SECRET not in cap.out + cap.err
    assert "error: rtsp://alice:***@127.0.0.1:9/live: cannot open" in cap.err


def test_cli_error_edge_redacts_any_message(tmp_path, capfd):
    code = run(["data", "check", f"http://bob:{SECRET}@files.example/cityscapes"])
    cap = capfd.readouterr()
    assert code == 2 and SECRET not in cap.out + cap.err and "bob:***@" in cap.err
