"""Stream outputs are unique per source, named from the source's path (issue 27 item 9).

``segment a/cam.avi b/cam.avi`` wrote both streams to the same outputs; with a third
``cam_1.avi`` the renamed second stream (``cam_1``) was overwritten.  Single-process and
``--engine ray`` share one naming function (``video.sources.unique_stems``).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from cityseg_deploy.cli import run
from cityseg_deploy.cli import segment as segment_cli
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.video import sources_of
from cityseg_deploy.video.pipeline import output_paths
from test_video_support import StandInSegmenter, video_info, write_clip


@pytest.fixture
def stand_in(monkeypatch) -> StandInSegmenter:
    seg = StandInSegmenter()
    monkeypatch.setattr(segment_cli, "_load_segmenter", lambda *a, **k: seg)
    return seg


def _touch_clips(root: Path, names: list[str]) -> list[str]:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")  # sources are named before they are opened
    return [str(root / n) for n in names]


NAME_SETS = [
    ["a/cam.avi", "b/cam.avi"],
    ["a/cam.avi", "b/cam.avi", "cam_1.avi", "cam_2.avi"],
    ["a/cam.avi", "a_cam.avi", "b/cam.avi"],
    ["x/a/cam.avi", "y/a/cam.avi", "a_cam.avi"],
    ["cam.avi", "cam.mp4", "cam.mkv"],
    ["a/b c.avi", "d/b c.avi", "e/b-c.avi"],
]


@pytest.mark.parametrize("names", NAME_SETS)
def test_output_names_are_unique_and_do_not_depend_on_order(tmp_path, names):
    specs = _touch_clips(tmp_path, names)
    named = {}
    for order in itertools.permutations(specs):
        sources = sources_of(list(order))
        stems = [s.stem for s in sources]
        assert len(set(stems)) == len(stems), stems
        outs = [o for o, _ in output_paths(sources, tmp_path / "o.avi", None)]
        assert len(set(outs)) == len(outs)
        for spec, stem in zip(order, stems):
            assert named.setdefault(spec, stem) == stem  # a name comes from the path, not the order


def test_names_stay_readable(tmp_path):
    specs = _touch_clips(tmp_path, ["a/cam.avi", "b/cam.avi", "cam_1.avi", "street.avi"])
    assert [s.stem for s in sources_of(specs)] == ["a_cam", "b_cam", "cam_1", "street"]


def test_the_same_source_twice_is_refused(tmp_path):
    (spec,) = _touch_clips(tmp_path, ["cam.avi"])
    (tmp_path / "l.txt").write_text("cam.avi\n")
    with pytest.raises(CitysegError, match="given more than once"):
        sources_of([spec, str(tmp_path / "l.txt")])


def test_segment_two_cams_and_a_cam_1_writes_three_outputs(tmp_path, stand_in, capsys):
    clips = []
    for name, n in (("a/cam.avi", 5), ("b/cam.avi", 6), ("cam_1.avi", 7)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        clips.append(write_clip(tmp_path / name, n=n))
    code = run(["segment", *map(str, clips), "--model", "m.pt", "--out", str(tmp_path / "o.avi"),
                "--labels-dir", str(tmp_path / "L")])
    assert code == 0, capsys.readouterr().err
    counts = {name: video_info(tmp_path / f"o_{name}.avi")[0] for name in ("a_cam", "b_cam", "cam_1")}
    assert counts == {"a_cam": 5, "b_cam": 6, "cam_1": 7}
    assert {p.name: len(list(p.iterdir())) for p in (tmp_path / "L").iterdir()} == counts
