"""``--backend auto``: pick the fastest runner for this model on this machine, by measuring it.

Why measure instead of a rule: which runner wins depends on the GPU, the network and the shape
(H200, 512x1024: torch.compile 2.49 ms for DeepLabV3-R50, channels_last + CUDA graphs 3.52 ms,
onnxruntime NHWC + CUDA graph 3.47 ms; NCHW loses for U-Net but ties for DeepLabV3 at 1024x2048 —
bench/results/gpu_models_h200.md).  Each candidate is timed end to end (uint8 image in, labels
out) with the project's own ``bench_one``; the result is cached per machine, model file, shape
and batch, so the measurement is paid once.  The cache is a JSON file (no code): a missing,
unreadable or stale entry only means measuring again.  Candidates are timed at the thread count
asked for (``--threads``), and the cache is keyed by it: the fastest runner on 1 thread need not
be the fastest on 16.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import CitysegError
from ..fileio import write_text_atomic


@dataclass(frozen=True)
class Candidate:
    """One way to run a model: artifact path, precision and runner options, with a readable name."""

    name: str
    spec: str
    precision: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Choice:
    candidate: Candidate
    reason: str
    measured: dict[str, float | str]  # candidate name -> median end-to-end ms, or the failure
    cached: bool
    row: dict[str, Any] | None = None  # the winner's full bench row, when measured in this process


def default_candidates(model: str | os.PathLike, device: str, *, compile: bool = False,
                       extra: Sequence[str | os.PathLike] = ()) -> list[Candidate]:
    """What ``auto`` tries for ``model`` on ``device``: for a checkpoint on CUDA the PyTorch
    runners at its precision (``MODEL@fp32``; fp16 when none is given) — channels_last and
    NCHW, both from CUDA graphs; torch.compile when ``compile``, since compiling costs 30-60 s
    once; on CPU the checkpoint as it is.  ``extra`` artifacts (an .onnx, an OpenVINO IR ...)
    join as they are, with onnxruntime's CUDA graph on CUDA.  Any of them may carry
    ``@precision`` (it used to be taken for a file name: "no such file")."""
    from ..artifacts import artifact_kind
    from ..runtime import parse_model_spec

    spec, asked = parse_model_spec(model)
    path = Path(spec)
    cuda = str(device).startswith("cuda")
    found: list[Candidate] = []
    if artifact_kind(path) == "torch" and cuda:
        p = asked or "fp16"
        found += [Candidate(f"torch {p} channels_last + CUDA graphs", str(path), p, {"cuda_graphs": True}),
                  Candidate(f"torch {p} NCHW + CUDA graphs", str(path), p,
                            {"cuda_graphs": True, "channels_last": False})]
        if compile:
            found.append(Candidate(f"torch {p} torch.compile + CUDA graphs", str(path), p,
                                   {"compile": True, "cuda_graphs": True}))
    else:
        found.append(Candidate(f"{artifact_kind(path)} {path.name}" + (f"@{asked}" if asked else ""),
                               str(path), asked))
    for other_spec in extra:
        other_spec, other_asked = parse_model_spec(other_spec)
        other = Path(other_spec)
        kind = artifact_kind(other)
        if cuda and kind == "onnx":  # NHWC kernels won on the H200 for DeepLabV3 (3.47 vs 3.74 ms)
            found += [Candidate(f"onnx {other.name} + CUDA graph", str(other), other_asked, {"cuda_graph": True}),
                      Candidate(f"onnx {other.name} NHWC + CUDA graph", str(other), other_asked,
                                {"cuda_graph": True, "cuda_options": {"prefer_nhwc": "1"}})]
        else:
            found.append(Candidate(f"{kind} {other.name}" + (f"@{other_asked}" if other_asked else ""),
                                   str(other), other_asked))
    return found


def cache_path() -> Path:
    root = os.environ.get("CITYSEG_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cityseg")
    return Path(root) / "auto_backend.json"


def _file_id(path: Path) -> str:
    """Size + mtime of the file (or of every file of an IR folder): a changed model is re-measured."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamp = [(str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size,
              p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]


def cache_key(candidates: Sequence[Candidate], device: str, size: Sequence[int] | None,
              batch: int, threads: int | None = None) -> str:
    from ..system.machine import machine_info

    info = machine_info()
    where = (info.get("gpu") or {}).get("name") if str(device).startswith("cuda") else info.get("cpu")
    parts = {"device": str(device), "where": where, "size": list(size) if size else None,
             "batch": int(batch), "threads": threads, "versions": info.get("versions"),
             "candidates": [(c.name, c.spec, c.precision, sorted(c.options.items()),
                             _file_id(Path(c.spec))) for c in candidates]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def choose(candidates: Sequence[Candidate], *, device: str, size: Sequence[int] | None = None,
           batch: int = 1, threads: int | None = None, warmup: int = 5, iters: int = 20,
           refresh: bool = False, measure: Callable[..., dict[str, Any]] | None = None) -> Choice:
    """The candidate with the lowest median end-to-end latency, from the cache or measured now
    (timed with torch and each runner at ``threads``; None = the default)."""
    from ..system.threads import torch_threads

    if not candidates:
        raise CitysegError("--backend auto: no runner to choose from")
    by_name = {c.name: c for c in candidates}
    store = cache_path()
    key = cache_key(candidates, device, size, batch, threads)
    entry = None if refresh else _read_cache(store).get(key)
    if isinstance(entry, dict) and entry.get("pick") in by_name and isinstance(entry.get("measured"), dict):
        return Choice(by_name[entry["pick"]], entry.get("reason", ""), entry["measured"], cached=True)
    if measure is None:
        from .benchmark import bench_one as measure
    measured: dict[str, float | str] = {}
    rows: dict[str, dict[str, Any]] = {}
    with torch_threads(threads):
        for c in candidates:
            row = measure(c.spec, device=device, batch=batch, size=size, warmup=warmup, iters=iters,
                          threads=threads, precision=c.precision, label=c.name, options=dict(c.options))
            rows[c.name] = row
            measured[c.name] = (round(row["latency_ms"]["median"], 3) if row.get("status") == "ok"
                                else f"failed: {row.get('error')}")
    timed = {n: v for n, v in measured.items() if isinstance(v, float)}
    if not timed:
        raise CitysegError("--backend auto: every candidate failed (" +
                           "; ".join(f"{n}: {v}" for n, v in measured.items()) + ")")
    pick = min(timed, key=timed.get)
    others = sorted((v, n) for n, v in timed.items() if n != pick)
    reason = (f"fastest of {len(timed)} measured end to end ({timed[pick]:.2f} ms median"
              + (f"; next: {others[0][1]} {others[0][0]:.2f} ms" if others else "") + ")")
    data = _read_cache(store)
    data[key] = {"pick": pick, "reason": reason, "measured": measured}
    store.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(store, json.dumps(data, indent=2) + "\n")
    return Choice(by_name[pick], reason, measured, cached=False, row=rows[pick])
