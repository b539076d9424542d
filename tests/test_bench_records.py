"""bench/ scripts write their records through one writer: both files, whole, replacing the old."""
from __future__ import annotations

import json

from cityseg_deploy.bench.records import write_record


def test_record_is_json_and_markdown_side_by_side_and_replaces_the_old(tmp_path):
    stem = tmp_path / "results" / "ray_batch"
    write_record(stem, {"rows": [1, 2]}, "# old")
    json_path, md_path = write_record(stem, {"rows": [3], "path": tmp_path}, "# new\n\n| a |")
    assert json.loads(json_path.read_text()) == {"rows": [3], "path": str(tmp_path)}
    assert md_path.read_text() == "# new\n\n| a |\n"
    assert sorted(p.name for p in stem.parent.iterdir()) == ["ray_batch.json", "ray_batch.md"]
