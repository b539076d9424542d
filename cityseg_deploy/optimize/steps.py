"""The three measured steps of ``cityseg optimize``: export, check, time — each reusing what a
re-run finds finished in the state (:class:`.record.State`).

Why apart from the driver: each step is the project's own stage (export, check, interleaved
timing) adapted to many candidates; the driver in ``__init__`` only validates, orders and
records.  A candidate that fails a step gets status ``failed`` with the step's reason and the
others go on.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import CitysegError, first_line
from .candidates import Candidate
from .record import State, digest



def suffix(fmt: str) -> str:
    """What an export to ``fmt`` ends in (``.onnx``, ``_openvino_model`` ...; formats.py)."""
    from .. import formats

    return formats.get(fmt).suffix


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


def progress_bar(total: int, progress: bool):
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


def export_all(runnable: list[Candidate], checkpoint: Path, data: Path, work: Path, state: State,
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
            target = work / f"{c.slug}{suffix(c.format)}"
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


def check_all(runnable: list[Candidate], checkpoint: Path, data: Path, device: str,
               threads: int | None, state: State, keys: dict[str, str], rows: dict[str, dict],
               artifacts: dict[str, Path], bar) -> list[Candidate]:
    """Check the candidates not checked before against the baseline; the ones with a score."""
    base = runnable[0]
    exported = [c for c in runnable[1:] if c.slug in artifacts]
    pending = [c for c in exported if state.get(c.slug, keys[c.slug], "check") is None]
    _step(bar, f"check {len(pending)} candidate(s) on val")
    if pending or state.get(base.slug, keys[base.slug], "check") is None:
        run_checks(base, pending, checkpoint, data, device, threads, state, keys, rows, artifacts)
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


def run_checks(base: Candidate, pending: list[Candidate], checkpoint: Path, data: Path, device: str,
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


def time_all(checked: list[Candidate], artifacts: dict[str, Path], device: str, threads: int | None,
              timing: tuple[int, int, float | None], state: State, keys: dict[str, str],
              rows: dict[str, dict], bar) -> None:
    """Time every checked candidate in one interleaved run (reused when none of them changed)."""
    from ..bench.auto import Candidate as Runner  # what to load: spec, precision, options
    from ..bench.interleaved import time_interleaved

    rounds, warmup, budget_s = timing
    _step(bar, f"time {len(checked)} runner(s), {rounds} interleaved rounds")
    key = digest({"candidates": sorted(keys[c.slug] for c in checked), "threads": threads,
                  "rounds": rounds, "warmup": warmup, "budget_s": budget_s})
    timed = state.timing(key)
    if timed is None:
        entries = [Runner(c.name, str(artifacts[c.slug]), c.precision, dict(c.options)) for c in checked]
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


__all__ = ["suffix", "check_all", "export_all", "progress_bar", "time_all"]
