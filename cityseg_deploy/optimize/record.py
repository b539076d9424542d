"""What ``cityseg optimize`` keeps on disk: its resume state and the deploy folder it writes.

- ``DIR/candidates/state.json``: per candidate, the key of its inputs (checkpoint hash, data
  files, export settings, library versions) and what its export and check produced; a re-run
  skips every step whose key is unchanged and whose files still exist (like quickstart).
- ``DIR/deploy.json`` + the chosen artifact beside it (docs/INTERFACES.md): the artifact is
  copied (hard-linked where possible) in under a temporary name and renamed, then the record is
  written atomically, then an earlier pick it replaces is removed — a kill at any point leaves
  the previous deploy folder whole or the new one whole.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..deploy import FORMAT, RECORD, VERSION
from ..fileio import atomic_path, write_text_atomic

STATE = "state.json"


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:24]


def data_digest(root: Path) -> str:
    """Names, sizes and times of the files optimize reads (train images calibrate, val scores)."""
    stamp = []
    for sub in ("leftImg8bit/train", "leftImg8bit/val", "gtFine/val"):
        folder = root / sub
        if folder.is_dir():
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    st = p.stat()
                    stamp.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return digest(stamp)


class State:
    """``DIR/candidates/state.json``: ``{"candidates": {slug: {...}}, "timing": {...}}``."""

    def __init__(self, folder: Path):
        self.path = folder / STATE
        self.data: dict[str, Any] = {"candidates": {}, "timing": None}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict) and isinstance(loaded.get("candidates"), dict):
                self.data = loaded
        except (OSError, ValueError):
            pass  # no state or a damaged one: only costs a re-run

    def get(self, slug: str, key: str, step: str) -> dict[str, Any] | None:
        """What ``step`` (export | check) of ``slug`` produced for inputs ``key``, if still valid."""
        entry = self.data["candidates"].get(slug)
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get(step), dict):
            return None
        artifact = entry.get("export", {}).get("artifact")
        if artifact and not Path(artifact).exists():
            return None
        return entry[step]

    def put(self, slug: str, key: str, step: str, value: dict[str, Any]) -> None:
        entry = self.data["candidates"].get(slug)
        if not isinstance(entry, dict) or entry.get("key") != key:
            entry = {"key": key}
        entry[step] = value
        self.data["candidates"][slug] = entry
        self.save()

    def timing(self, key: str) -> dict[str, Any] | None:
        t = self.data.get("timing")
        return t["rows"] if isinstance(t, dict) and t.get("key") == key else None

    def put_timing(self, key: str, rows: dict[str, Any]) -> None:
        self.data["timing"] = {"key": key, "rows": rows}
        self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=2, default=str) + "\n")


def _copy_in(src: Path, dst: Path) -> None:
    """``src`` (file or folder) to ``dst``, hard links where the file system allows."""
    def copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir():
        shutil.copytree(src, dst, copy_function=copy)
    else:
        copy(str(src), str(dst))


def sidecars(path: Path) -> list[Path]:
    """Files that travel with an artifact (TensorRT/AOTInductor metadata ``<file>.json``)."""
    side = path.with_name(path.name + ".json")
    return [side] if path.is_file() and side.is_file() else []


def make_record(*, source: dict[str, Any], data: dict[str, Any], device: str, max_drop: float,
                threads: int | None, timing: dict[str, Any], candidates: list[dict[str, Any]],
                verdict: Any, winner: dict[str, Any], load_average: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """The deploy record (docs/INTERFACES.md) from the candidates' rows and the rule's verdict.

    Why one builder: ``cityseg optimize`` and the quickstart's "which artifact to deploy" write
    the same record, which every command then reads through :mod:`cityseg_deploy.deploy`.
    ``winner``: ``{"name", "slug", "kind", "precision", "options"}`` of the picked candidate.
    """
    from ..system.machine import fingerprint

    by_name = {r["name"]: r for r in candidates}
    base = candidates[0]
    base_ms = (base.get("latency_ms") or {}).get("median")
    refused = {r["name"]: r["reason"] for r in verdict.refused}
    for row in candidates:
        ms = (row.get("latency_ms") or {}).get("median")
        row["speedup"] = round(base_ms / ms, 3) if ms and base_ms else None
        if row["name"] in refused:
            row["refused"] = refused[row["name"]]
    cuda = str(device).startswith("cuda")
    return {
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": source, "data": data, "device": device, "max_drop": max_drop,
        "machine": fingerprint(), "threads": threads, "load_average": load_average,
        "timing": timing,
        "baseline": {"name": base["name"], "miou": base.get("miou"), "per_pixel": base.get("per_pixel"),
                     "median_ms": base_ms},
        "candidates": candidates,
        "refused": verdict.refused,
        "pick": {**winner, "threads": threads, "device": "cuda" if cuda else "cpu",
                 "median_ms": verdict.median_ms, "drop_pts": round(verdict.drop_pts, 3),
                 "speedup": (round(base_ms / verdict.median_ms, 3)
                             if base_ms and verdict.median_ms else None),
                 "delta_miou_pts": by_name.get(verdict.name, {}).get("delta_miou_pts"),
                 "why": verdict.why},
    }


def write_deploy_folder(out: Path, record: dict[str, Any], source: Path, name: str) -> Path:
    """Put ``source`` into ``out`` as ``name`` and write ``out/deploy.json`` = ``record``.

    ``record["pick"]["artifact"]`` is set to ``name``.  The previous record's artifact, if it is
    another name, is removed only after the new record is in place.
    """
    out.mkdir(parents=True, exist_ok=True)
    old = None
    try:
        old = json.loads((out / RECORD).read_text())["pick"]["artifact"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for src, dst in [(source, out / name), *[(s, out / (name + ".json")) for s in sidecars(source)]]:
        with atomic_path(dst, is_dir=src.is_dir()) as tmp:
            tmp.rmdir() if src.is_dir() else tmp.unlink()  # _copy_in makes it (a link if it can)
            _copy_in(src, tmp)
    record = {"format": FORMAT, "version": VERSION, **record}
    record["pick"] = {**record["pick"], "artifact": name}
    write_text_atomic(out / RECORD, json.dumps(record, indent=2, default=str) + "\n")
    if isinstance(old, str) and old != name and Path(old).name == old:
        for stale in (out / old, out / (old + ".json")):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            elif stale.is_file():
                stale.unlink()
    return out / RECORD


__all__ = ["State", "data_digest", "digest", "make_record", "write_deploy_folder"]
