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

from ..errors import CitysegError, first_line
from .candidates import BASELINE, Candidate, candidates_for
from .pick import pick as apply_rule
from .record import State, data_digest, digest, make_record, write_deploy_folder

DEFAULT_MAX_DROP = 0.5
SUFFIX = {"onnx": ".onnx", "openvino": "_openvino_model", "trt": ".engine", "aoti": ".pt2"}


class _CandidateRunners:
    """The ``engine`` :func:`check` loads its models through: each load gets the runner options
    of the next candidate (specs alone cannot say ``cuda_graphs=True``), in check's order."""

    def __init__(self, options: Sequence[dict[str, Any]]):
        self.queue = [dict(o) for o in options]

    def load(self, spec: str, *, device: str, threads: int | None, **options: Any):
        from .. import runtime

        return runtime.load(spec, device=device, threads=threads, **{**self.queue.pop(0), **options})

    @staticmethod
    def run_split(*args: Any, **kwargs: Any):
        from ..evaluation.evaluate import run_split

        return run_split(*args, **kwargs)


def _spec(path: Path | str, precision: str | None) -> str:
    return f"{path}@{precision}" if precision else str(path)


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
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CitysegError(f"--out {out}: {parent} is a file, not a folder; choose a path in a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CitysegError(f"--out {out}: cannot write in {parent} (permission denied)")
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
    bar = _bar(len([c for c in runnable if c.format]) + 2, progress)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 2)
        clock = now

    try:
        artifacts = _export_all(runnable, checkpoint, data, work, state, keys, rows, bar, log)
        lap("export")
        checked = _check_all(runnable, checkpoint, data, device, threads, state, keys, rows,
                             artifacts, bar)
        lap("check")
        _time_all(checked, artifacts, device, threads, (rounds, warmup, budget_s), state, keys, rows, bar)
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
            else f"{checkpoint.stem}_{winner.slug}{SUFFIX[winner.format]}")
    kind = winner.format or "torch"
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
                "precision": None if kind in ("onnx", "trt") else winner.precision,
                "options": dict(winner.options)},
        load_average={"start": load_start, "end": load_average()})
    record["seconds"] = {**seconds, "total": round(sum(seconds.values()), 2),
                         "cpu": round(time.process_time() - cpu_start, 2)}
    record["pick"]["artifact"] = name
    write_deploy_folder(out, record, source, name)
    record["path"] = str(out / "deploy.json")
    return record


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="optimize", unit="step", dynamic_ncols=True)


def _step(bar, text: str) -> None:
    if bar is not None:
        bar.set_postfix_str(text)


def _done(bar) -> None:
    if bar is not None:
        bar.update(1)


def _export_all(runnable: list[Candidate], checkpoint: Path, data: Path, work: Path, state: State,
                keys: dict[str, str], rows: dict[str, dict], bar, log) -> dict[str, Path]:
    """Export every candidate that needs it (cached ones reused); their artifact paths."""
    from ..export import export
    from ..fileio import path_mb

    artifacts: dict[str, Path] = {}
    for c in runnable:
        if c.format is None:
            artifacts[c.slug] = checkpoint
            continue
        _step(bar, f"export {c.name}")
        done = state.get(c.slug, keys[c.slug], "export")
        if done is None:
            target = work / f"{c.slug}{SUFFIX[c.format]}"
            start = time.perf_counter()
            try:
                result = export(checkpoint, format=c.format, precision=c.export_precision, out=target,
                                calib_data=data, verify=False, log=None, **c.export_options)
                done = {"artifact": str(result.path), "seconds": round(time.perf_counter() - start, 2),
                        "size_mb": path_mb(result.path)}
            except Exception as exc:  # one format failing must not sink the others
                done = {"error": first_line(exc, 300) if isinstance(exc, CitysegError)
                        else f"{type(exc).__name__}: {first_line(exc, 300)}"}
            state.put(c.slug, keys[c.slug], "export", done)
        else:
            done = {**done, "reused": True}
        rows[c.slug]["export"] = done
        if "error" in done:
            rows[c.slug].update(status="failed", reason=f"export: {done['error']}")
        else:
            artifacts[c.slug] = Path(done["artifact"])
        _done(bar)
    return artifacts


def _check_all(runnable: list[Candidate], checkpoint: Path, data: Path, device: str,
               threads: int | None, state: State, keys: dict[str, str], rows: dict[str, dict],
               artifacts: dict[str, Path], bar) -> list[Candidate]:
    """Check the candidates not checked before against the baseline; the ones with a score."""
    base = runnable[0]
    exported = [c for c in runnable[1:] if c.slug in artifacts]
    pending = [c for c in exported if state.get(c.slug, keys[c.slug], "check") is None]
    _step(bar, f"check {len(pending)} candidate(s) on val")
    if pending or state.get(base.slug, keys[base.slug], "check") is None:
        _run_checks(base, pending, checkpoint, data, device, threads, state, keys, rows, artifacts)
    checked = []
    for c in [base, *exported]:
        result = state.get(c.slug, keys[c.slug], "check")
        if result is None:
            continue
        rows[c.slug].update(result)
        if "error" in result:
            rows[c.slug].update(status="failed", reason=f"check: {result['error']}")
        else:
            checked.append(c)
    _done(bar)
    return checked


def _run_checks(base: Candidate, pending: list[Candidate], checkpoint: Path, data: Path, device: str,
                threads: int | None, state: State, keys: dict[str, str], rows: dict[str, dict],
                artifacts: dict[str, Path]) -> None:
    """One :func:`check` over the baseline and ``pending``; a candidate that breaks it is checked
    alone so that the others still get their scores."""
    from ..evaluation.check import check

    def run(group: list[Candidate]) -> dict:
        specs = [_spec(artifacts[c.slug], c.precision) for c in group]
        engine = _CandidateRunners([base.options] + [c.options for c in group])
        return check(_spec(checkpoint, base.precision), specs or [_spec(checkpoint, base.precision)],
                     data, device=device, threads=threads, progress=False, engine=engine)

    def store_base(report: dict) -> None:
        b = report["baseline"]
        state.put(base.slug, keys[base.slug], "check",
                  {"miou": b["miou"], "per_pixel": b["per_pixel"], "delta_miou_pts": 0.0, "agreement": 1.0})

    def store(c: Candidate, doc: dict) -> None:
        err = doc.get("logit_error") or {}
        state.put(c.slug, keys[c.slug], "check",
                  {"miou": doc["miou"], "per_pixel": doc["per_pixel"],
                   "delta_miou_pts": round(100 * doc["delta"]["miou"], 4),
                   "agreement": doc["agreement"], "logit_max_abs": err.get("max_abs"),
                   "backend": doc.get("backend")})

    try:
        report = run(pending)
    except CitysegError:
        if not pending:
            raise  # the baseline itself cannot run on this data: one error line
        report = None
    if report is not None:
        store_base(report)
        for c, doc in zip(pending, report["candidates"]):
            store(c, doc)
        return
    for c in pending:
        try:
            report = run([c])
        except Exception as exc:
            state.put(c.slug, keys[c.slug], "check", {"error": first_line(exc, 300)})
            continue
        store_base(report)
        store(c, report["candidates"][0])


def _time_all(checked: list[Candidate], artifacts: dict[str, Path], device: str, threads: int | None,
              timing: tuple[int, int, float | None], state: State, keys: dict[str, str],
              rows: dict[str, dict], bar) -> None:
    """Time every checked candidate in one interleaved run (reused when none of them changed)."""
    from ..bench.interleaved import Entry, time_interleaved

    rounds, warmup, budget_s = timing
    _step(bar, f"time {len(checked)} runner(s), {rounds} interleaved rounds")
    key = digest({"candidates": sorted(keys[c.slug] for c in checked), "threads": threads,
                  "rounds": rounds, "warmup": warmup, "budget_s": budget_s})
    timed = state.timing(key)
    if timed is None:
        entries = [Entry(c.name, str(artifacts[c.slug]), c.precision, dict(c.options)) for c in checked]
        timed = time_interleaved(entries, device=device, threads=threads, rounds=rounds, warmup=warmup,
                                 budget_s=budget_s, min_rounds=min(5, rounds))
        state.put_timing(key, timed)
    for c in checked:
        t = timed.get(c.name) or {"status": "failed", "error": "not timed"}
        if t.get("status") == "ok":
            rows[c.slug].update(status="ok", latency_ms=t["latency_ms"], backend=t.get("backend"),
                                run_precision=t.get("precision"), rounds=t.get("rounds"))
        else:
            rows[c.slug].update(status="failed", reason=f"timing: {t.get('error')}")
    _done(bar)


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
