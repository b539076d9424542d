"""A deploy folder (``cityseg optimize``'s output) as a MODEL: ``resolve(path)`` → what to run.

A deploy folder holds ``deploy.json`` and the artifact it chose.  Every command takes MODEL
through :func:`cityseg_deploy.runtime.load` and :func:`cityseg_deploy.artifacts.artifact_kind` /
``read_artifact_meta``, and those call :func:`resolve` here, so one seam makes the folder a MODEL
everywhere: the artifact, its precision, runner options and thread count come from the record.
A record measured on another machine (its fingerprint differs) is still used — the artifact is
correct anywhere, only "fastest" may not hold — with one warning per folder and process naming
what differs.  A damaged record is one error naming the folder.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import CitysegError
from .precision import RUN_PRECISIONS as PRECISIONS  # tf32 too: a run precision

RECORD = "deploy.json"
FORMAT = "cityseg-deploy"
VERSION = 1

#: Where the one-line foreign-machine warning goes (the CLI's stderr; tests may swap it).
warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
_warned: set[str] = set()


@dataclass(frozen=True)
class Resolved:
    """What a deploy folder says to run."""

    folder: Path
    artifact: Path
    precision: str | None
    options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    device: str = "cpu"
    record: dict[str, Any] = field(default_factory=dict)
    differences: tuple[str, ...] = ()   # how this machine differs from the record's


def is_deploy_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / RECORD).is_file()


def _bad(folder: Path, what: str) -> CitysegError:
    return CitysegError(f"{folder / RECORD}: {what}; re-run 'cityseg optimize' to write it again")


def read_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed, checked ``deploy.json`` of ``folder`` (a CitysegError when damaged)."""
    folder = Path(folder)
    try:
        data = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _bad(folder, f"unreadable deploy record ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _bad(folder, f"not a cityseg deploy record (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise _bad(folder, f"deploy record version {data.get('version')!r}, this cityseg reads {VERSION}")
    pick = data.get("pick")
    if not isinstance(pick, dict):
        raise _bad(folder, "no \"pick\" block")
    artifact = pick.get("artifact")
    if not isinstance(artifact, str) or Path(artifact).name != artifact or artifact in ("", ".", "..") \
            or "\\" in artifact:
        raise _bad(folder, "\"pick.artifact\" must be the name of a file or folder inside it")
    if pick.get("precision") not in (None, *PRECISIONS):
        raise _bad(folder, f"\"pick.precision\" must be one of {', '.join(PRECISIONS)} or null")
    options = pick.get("options", {})
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise _bad(folder, "\"pick.options\" must be a mapping of runner options")
    threads = pick.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or not 1 <= threads <= 4096):
        raise _bad(folder, "\"pick.threads\" must be an integer from 1 to 4096 or null")
    if pick.get("device", "cpu") not in ("cpu", "cuda"):
        raise _bad(folder, "\"pick.device\" must be cpu or cuda")
    if not isinstance(data.get("machine", {}), dict):
        raise _bad(folder, "\"machine\" must be a mapping")
    return data


def _chosen(path: str | os.PathLike) -> tuple[Path, dict[str, Any], dict[str, Any], Path]:
    """(folder, record, its pick, the pick's artifact path), the artifact checked to be there."""
    folder = Path(path)
    data = read_record(folder)
    pick = data["pick"]
    artifact = folder / pick["artifact"]
    if not artifact.exists():
        raise _bad(folder, f"the chosen artifact {pick['artifact']!r} is missing from the folder")
    if is_deploy_folder(artifact):
        raise _bad(folder, "the chosen artifact is itself a deploy folder")
    return folder, data, pick, artifact


def resolve(path: str | os.PathLike, *, quiet: bool = False) -> Resolved:
    """The artifact, precision, runner options and threads a deploy folder names.

    Threads come from the record only when this machine is the one it was measured on (another
    machine's core count means nothing here).  ``quiet``: no warning (metadata look-ups that
    precede the load, so the user reads it once).
    """
    from .system.machine import fingerprint, fingerprint_differences

    folder, data, pick, artifact = _chosen(path)
    differences = tuple(fingerprint_differences(data.get("machine") or {}, fingerprint()))
    key = str(folder.resolve())
    if differences and not quiet and key not in _warned:
        _warned.add(key)
        warn(f"warning: {folder} was optimized on another machine ({'; '.join(differences[:3])}"
             f"{'; …' if len(differences) > 3 else ''}); running its pick {pick.get('name') or pick['artifact']!r} "
             "anyway — 'cityseg optimize' here finds this machine's fastest")
    return Resolved(folder=folder, artifact=artifact, precision=pick.get("precision"),
                    options=dict(pick.get("options") or {}),
                    threads=None if differences else pick.get("threads"),
                    device=pick.get("device", "cpu"), record=data, differences=differences)


def artifact_of(path: str | os.PathLike) -> Path:
    """``path`` itself, or the artifact inside it when it is a deploy folder (no warning, and no
    machine fingerprint: only the path is wanted)."""
    return _chosen(path)[3] if is_deploy_folder(path) else Path(path)


__all__ = ["RECORD", "Resolved", "artifact_of", "is_deploy_folder", "read_record", "resolve"]
