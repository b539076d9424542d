"""Recipes, export profiles and bench suites: YAML that ships inside the package.

One copy in the repository: the top-level ``training/``, ``export/`` and ``bench/`` folders
(DESIGN.md's layout).  The package reaches them through ``cityseg_deploy/recipes``,
``cityseg_deploy/profiles`` and ``cityseg_deploy/suites`` (symbolic links to those folders in a
checkout, real folders in a wheel, where setuptools copies the YAML as package data), so a
non-editable install finds them the same way, through :mod:`importlib.resources`.

``--recipe``, ``--profile`` and ``--suite`` take a path or a bare name (``unet_small``,
``smoke``, ``cpu_backends``); :func:`resolve` turns either into a file or says which names exist.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import CitysegError

#: kind → (package folder, option, the repository folder it holds)
KINDS = {"recipe": ("recipes", "--recipe", "training/"),
         "profile": ("profiles", "--profile", "export/"),
         "suite": ("suites", "--suite", "bench/")}
SUFFIXES = (".yaml", ".yml")


def folder(kind: str) -> Path:
    """The package folder holding ``kind`` files (it may be absent in a broken install)."""
    return Path(str(resources.files("cityseg_deploy").joinpath(KINDS[kind][0])))


def available(kind: str) -> dict[str, Path]:
    """Bare names → files of ``kind`` shipped with cityseg, sorted by name."""
    base = folder(kind)
    if not base.is_dir():
        return {}
    return {p.stem: p for p in sorted(base.iterdir()) if p.suffix in SUFFIXES and p.is_file()}


def resolve(kind: str, name_or_path: str | os.PathLike) -> Path:
    """An existing YAML file, or a bare name (``smoke``, ``smoke.yaml``) of a shipped one."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.parent == Path(".") and path.suffix in ("", *SUFFIXES):
        found = available(kind).get(path.stem)
        if found is not None:
            return found
    _, option, repo_folder = KINDS[kind]
    names = ", ".join(available(kind)) or f"none found (is the {repo_folder} data installed?)"
    raise CitysegError(f"{option} {str(name_or_path)!r}: no such file or {kind} name; "
                       f"give a YAML path or one of: {names}")


def is_shipped(path: str | os.PathLike) -> bool:
    """True for a file inside the installed package (a wheel's site-packages), where nothing
    may be written next to it; False in a checkout, where the folders are the repository's."""
    package = Path(str(resources.files("cityseg_deploy"))).resolve()
    return package in Path(path).resolve().parents
