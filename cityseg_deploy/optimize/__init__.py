"""``cityseg optimize``: from a checkpoint to the fastest artifact for this machine within an
mIoU budget, written as a deploy folder (``DIR/deploy.json`` + the artifact).

Steps, each reusing the stage that exists for it: export every candidate that can run on the
device (:mod:`.candidates`, :func:`cityseg_deploy.export.export`), check them all against the
torch fp32 baseline on the val split in one pass each (:func:`cityseg_deploy.evaluation.check.check`:
Tables 1–2, pixel agreement), time them round-robin (:mod:`cityseg_deploy.bench.interleaved`),
apply the rule (:mod:`.pick`) and write the record (:mod:`.record`).  Re-running into the same
DIR skips the exports and checks whose inputs did not change.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import CitysegError
from ..fileio import check_writable_folder
from .candidates import candidates_for
from .pick import pick as apply_rule
from .record import State, data_digest, digest, make_record, write_deploy_folder
from .steps import check_all, export_all, progress_bar, suffix, time_all

DEFAULT_MAX_DROP = 0.5


def _validate(checkpoint: Path, data: Path, device: str, max_drop: float, out: Path):
    """Every input checked before the first export (which may take minutes)."""
    from ..artifacts import artifact_kind
    from ..data.cityscapes import find_samples
    from ..evaluation.evaluate import label_set_of_model
    from ..models.checkpoint import read_meta

    if not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop) and max_drop >= 0):
        raise CitysegError(f"--max-drop {max_drop}: must be a number of mIoU points >= 0")
    if not (device == "cpu" or str(device).startswith("cuda")):
        raise CitysegError(f"--device {device!r}: choose cpu or cuda")
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CitysegError(f"--device {device}: no CUDA device here (torch {torch.__version__} "
                               "sees none); run optimize on the GPU machine, or --device cpu")
    if not checkpoint.is_file():
        raise CitysegError(f"{checkpoint}: no such file; optimize starts from a cityseg checkpoint (.pt)")
    if artifact_kind(checkpoint) != "torch":
        raise CitysegError(f"{checkpoint}: optimize starts from a cityseg checkpoint (.pt), "
                           "the source of every candidate it exports")
    meta = read_meta(checkpoint)
    label_set_of_model(meta, where=str(checkpoint))  # scoring needs ground truth in its classes
    samples = find_samples(data, "val")
    if out.exists() and not out.is_dir():
        raise CitysegError(f"--out {out}: an existing file; optimize writes a folder")
    check_writable_folder(out, what=f"--out {out}")
    return meta, samples


def optimize(checkpoint: str | os.PathLike, data: str | os.PathLike, *, device: str = "cpu",
             max_drop: float = DEFAULT_MAX_DROP, out: str | os.PathLike | None = None,
             threads: int | None = None, candidates: Sequence[str] | None = None,
             rounds: int = 20, warmup: int = 3, budget_s: float | None = 30.0, progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export, check, time and pick; returns the deploy record written to ``out/deploy.json``.

    ``candidates``: slugs of :mod:`.candidates` to try (default: all of the device's; the
    torch fp32 baseline always runs).  ``rounds``/``warmup``: the interleaved timing, which stops
    early (after 5 rounds at least) once it has taken ``budget_s`` seconds.
    """
    from ..models.checkpoint import file_sha256
    from ..system.machine import fingerprint, load_average

    checkpoint, data = Path(checkpoint), Path(data)
    out = Path(out) if out else checkpoint.with_name(f"{checkpoint.stem}_deploy")
    device = "cuda" if str(device).startswith("cuda") and ":" not in str(device) else str(device)
    meta, samples = _validate(checkpoint, data, device, max_drop, out)
    chosen = candidates_for(device, list(candidates) if candidates else None)
    work = out / "candidates"
    work.mkdir(parents=True, exist_ok=True)
    state = State(work)
    here = fingerprint()
    base_key = {"checkpoint": file_sha256(checkpoint), "data": data_digest(data),
                "versions": here["versions"], "device": device}
    keys = {c.slug: digest({**base_key, **c.describe()}) for c in chosen}
    rows: dict[str, dict[str, Any]] = {c.slug: {**c.describe(), "status": "pending", "reason": None}
                                       for c in chosen}
    runnable = []
    for c in chosen:
        why_not = c.unavailable()
        if why_not:
            rows[c.slug].update(status="skipped", reason=why_not)
        else:
            runnable.append(c)
    load_start = load_average()
    cpu_start = time.process_time()
    bar = progress_bar(len([c for c in runnable if c.format]) + 2, progress)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 2)
        clock = now

    try:
        artifacts = export_all(runnable, checkpoint, data, work, state, keys, rows, bar, log)
        lap("export")
        checked = check_all(runnable, checkpoint, data, device, threads, state, keys, rows,
                             artifacts, bar)
        lap("check")
        time_all(checked, artifacts, device, threads, (rounds, warmup, budget_s), state, keys, rows, bar)
        lap("timing")
    finally:
        if bar is not None:
            bar.close()
    base_name = chosen[0].name
    table = [dict(rows[c.slug]) for c in chosen]
    verdict = apply_rule(table, baseline=base_name, max_drop=max_drop)
    winner = next(c for c in chosen if c.name == verdict.name)
    source = artifacts.get(winner.slug, checkpoint)
    name = (checkpoint.name if winner.format is None
            else f"{checkpoint.stem}_{winner.slug}{suffix(winner.format)}")
    from .. import formats

    kind = formats.get(winner.format).name if winner.format else "torch"  # trt → tensorrt
    record = make_record(
        source={"checkpoint": str(checkpoint.resolve()), "sha256": base_key["checkpoint"],
                "arch": meta.arch, "label_set": meta.label_set, "num_classes": meta.num_classes,
                "input_size": list(meta.input_size)},
        data={"root": str(data.resolve()), "split": "val", "images": len(samples)},
        device=device, max_drop=max_drop, threads=threads,
        timing={"method": "interleaved round-robin, end to end (uint8 in, labels out)",
                "rounds": rounds, "warmup": warmup, "budget_s": budget_s, "batch": 1,
                "size": list(meta.input_size)},
        candidates=table, verdict=verdict,
        # precision baked into an ONNX graph / engine: the runner reads it there
        winner={"name": winner.name, "slug": winner.slug, "kind": kind,
                "precision": None if kind in ("onnx", "tensorrt") else winner.precision,
                "options": dict(winner.options)},
        load_average={"start": load_start, "end": load_average()})
    record["seconds"] = {**seconds, "total": round(sum(seconds.values()), 2),
                         "cpu": round(time.process_time() - cpu_start, 2)}
    record["pick"]["artifact"] = name
    write_deploy_folder(out, record, source, name)
    record["path"] = str(out / "deploy.json")
    return record


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value else "–"


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The table and verdict ``cityseg optimize`` prints (one row per candidate)."""
    lines = ["| candidate | status | ΔmIoU (pts) | agreement % | median ms | x torch fp32 | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in record["candidates"]:
        d = r.get("delta_miou_pts")
        agree = r.get("agreement")
        ms = (r.get("latency_ms") or {}).get("median")
        note = r.get("refused") or r.get("reason") or ("chosen" if r["name"] == record["pick"]["name"] else "")
        lines.append(f"| {r['name']} | {r['status']} | {'–' if d is None else f'{d:+.2f}'} | "
                     f"{'–' if agree is None else f'{100 * agree:.2f}'} | "
                     f"{'–' if ms is None else f'{ms:.2f}'} | "
                     f"{_ratio(r.get('speedup'))} | {note} |")
    if record["refused"]:
        lines.append(f"refused by --max-drop {record['max_drop']:g}: " + ", ".join(
            f"{r['name']} (-{r['drop_pts']:.2f} pts)" for r in record["refused"]))
    return lines


__all__ = ["DEFAULT_MAX_DROP", "optimize", "summary_lines"]
