"""One ``Segmenter`` over every artifact kind: ``load(path, device=...)``.

The backend is picked by artifact kind from the formats registry (``cityseg_deploy/formats.py``:
each record names its runner class); adding a backend is one runner file here and one record there.  ``"model.onnx@int8"``-style specs (bench, check) are split by
:func:`parse_model_spec`.
"""
from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any

from .. import formats
from ..artifacts import artifact_kind
from ..deploy import is_deploy_folder, resolve as resolve_deploy
from ..errors import CitysegError
from ..models.checkpoint import ModelMeta
from ..precision import RUN_PRECISIONS
from ..trust import NATIVE_KINDS
from .base import PRECISIONS, Segmenter, check_precision



def backends() -> dict[str, str]:
    """Artifact kind → the runner's dotted name, from the formats registry (read at call time,
    so a format registered later is seen)."""
    return {f.name: f.runner for f in formats.runnable()}


def backend_class(kind: str) -> type[Segmenter]:
    return formats.get(kind).runner_class()


def __getattr__(name: str) -> Any:
    if name == "BACKENDS":  # the old table's name, derived
        return backends()
    raise AttributeError(name)


def backend_options(cls: type[Segmenter]) -> tuple[str, ...]:
    """The options a backend takes besides ``device``/``precision``/``threads`` (and ``metadata``,
    :func:`open_artifact`'s): the keyword parameters of its constructor (declared once, there)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY
                 and p.name not in ("device", "precision", "threads", "metadata", "trust_code"))


def takes_option(spec: str | os.PathLike, name: str) -> bool:
    """Whether the runner of ``spec`` (a path or ``path@precision``) takes option ``name``; for
    callers with an option that means something to some backends only (``check --emulate-bf16``)."""
    kind = artifact_kind(Path(parse_model_spec(spec)[0]))
    return name in backend_options(backend_class(kind))


def check_options(path: str | os.PathLike, kind: str, options: dict[str, Any]) -> None:
    """Refuse an option the backend for ``kind`` does not take, naming it (a misspelt option
    used to be dropped without a word)."""
    takes = backend_options(backend_class(kind))
    for name in sorted(set(options) - set(takes)):
        close = difflib.get_close_matches(name, takes, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise CitysegError(f"{path}: option {name!r} does not apply to the {kind} runner{hint} "
                           f"(it takes {', '.join(takes)})")


def check_run_precision(path: str | os.PathLike, kind: str, precision: str | None) -> None:
    """Refuse a run-only precision (``tf32``) for a runner that cannot honour it: exported graphs
    run the precision they hold, so ``model.onnx@tf32`` would be an fp32 row under another name."""
    if precision == "tf32" and kind != "torch":
        raise CitysegError(f"{path}: tf32 is a run mode of the PyTorch runner on CUDA (a checkpoint, "
                           f"CKPT@tf32); a {kind} artifact runs the precision its graph holds")


def parse_model_spec(spec: str | os.PathLike) -> tuple[str, str | None]:
    """``"ckpt.pt@bf16"`` → ``("ckpt.pt", "bf16")``; a plain path → ``(path, None)``."""
    text = str(spec)
    head, sep, tail = text.rpartition("@")
    if sep and tail in RUN_PRECISIONS and head:
        return head, tail
    return text, None


def load(path: str | os.PathLike, *, device: str = "cpu", precision: str | None = None,
         threads: int | None = None, trust_code: bool | None = None, **options: Any) -> Segmenter:
    """The ``Segmenter`` for any artifact (checkpoint, .onnx, engine, .pt2, OpenVINO IR) or
    deploy folder (``cityseg optimize``: its artifact, precision, runner options and threads).

    ``precision``: for a checkpoint fp32 | tf32 | fp16 | bf16 (None: fp16 + channels_last + CUDA
    graphs on CUDA, fp32 on CPU — :mod:`.torch_defaults`); for OpenVINO fp32 | bf16
    (inference precision hint); graphs with baked-in precision refuse another.
    ``threads``: CPU threads.  ``options`` go to the backend (e.g. ``size=(H, W)``,
    ``compile=True``, ``cuda_graphs=True`` for torch; ``mode``/``streams`` for OpenVINO); one
    the backend does not take is a CitysegError naming it (:func:`backend_options` lists them).
    ``trust_code``: for native-code artifacts (.pt2, TensorRT engines) not written by this
    machine's export — True loads them anyway, None follows ``--trust-code`` (``trust.py``).
    """
    path, spec_precision = parse_model_spec(path)
    if is_deploy_folder(path):  # cityseg optimize's folder: its pick, with its runner options
        path, spec_precision, threads, options = _from_deploy_folder(path, device, spec_precision,
                                                                     threads, options)
    precision = check_precision(precision or spec_precision)
    kind = artifact_kind(Path(path))
    check_options(path, kind, options)
    check_run_precision(path, kind, precision)
    if kind in NATIVE_KINDS:
        options["trust_code"] = trust_code
    return backend_class(kind)(Path(path), device=device, precision=precision, threads=threads,
                               **options)


def _from_deploy_folder(folder: str, device: str, precision: str | None, threads: int | None,
                        options: dict[str, Any]) -> tuple[str, str | None, int | None, dict[str, Any]]:
    """(artifact, precision, threads, options) of a deploy folder; what the caller gave wins.

    The record's device must be the one asked for: its runner options (CUDA graphs, a CUDA
    execution provider) mean nothing on the other, and a CPU pick on a GPU is not "fastest".
    """
    found = resolve_deploy(folder)
    asked = "cuda" if str(device).startswith("cuda") else "cpu"
    if found.device != asked:
        raise CitysegError(f"{folder}: optimized for --device {found.device}, asked to run on {device}; "
                           f"pass --device {found.device}, or run 'cityseg optimize ... --device {asked}'")
    return (str(found.artifact), precision or found.precision,
            threads if threads is not None else found.threads, {**found.options, **options})


def open_artifact(path: str | os.PathLike, kind: str, *,
                  metadata: tuple[ModelMeta, dict[str, Any]] | None = None, device: str = "cpu",
                  precision: str | None = None, threads: int | None = None,
                  trust_code: bool | None = None, **options: Any) -> Segmenter:
    """The ``Segmenter`` :func:`load` would give for an artifact not (yet) under its final name.

    Why: export checks the file it wrote, at its temporary name, through the runner users get.
    ``kind`` says what the suffix cannot; ``metadata`` is the (meta, io) about to go into the
    sidecar (TensorRT, AOTInductor) — without it the file's own metadata is read (ONNX, OpenVINO).
    The backend's load-time checks (metadata against the graph) run as for :func:`load`.
    """
    graphs = [k for k in backends() if k != "torch"]
    if kind not in graphs:
        raise CitysegError(f"{path}: open_artifact runs exported graphs "
                           f"({', '.join(graphs)}), not {kind!r}")
    check_options(path, kind, options)
    check_run_precision(path, kind, precision)
    if kind in NATIVE_KINDS:  # export checks what it just built: trust_code=True (verify.runner)
        options["trust_code"] = trust_code
    return backend_class(kind)(Path(path), device=device, precision=check_precision(precision),
                               threads=threads, metadata=metadata, **options)


__all__ = ["Segmenter", "backend_class", "backends", "backend_options", "load", "open_artifact",
           "takes_option", "parse_model_spec"]
