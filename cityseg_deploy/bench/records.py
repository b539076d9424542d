"""A benchmark's record on disk: ``<stem>.json`` (the figures) and ``<stem>.md`` (the table).

Why one writer: every script in ``bench/`` keeps its results next to the machine they were
measured on, and an interrupted run must never leave half a record (each file is written to a
temporary name and renamed).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..fileio import write_text_atomic


def write_record(stem: str | os.PathLike, doc: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``doc`` as ``stem.json`` and ``markdown`` as ``stem.md``; return both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    write_text_atomic(json_path, json.dumps(doc, indent=2, default=str) + "\n")
    write_text_atomic(md_path, markdown.rstrip("\n") + "\n")
    return json_path, md_path
