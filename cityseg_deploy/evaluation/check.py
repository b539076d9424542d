"""``cityseg check``: is a candidate artifact as accurate as its baseline?

One pass per model over the split (baseline first), every model scored with the same confusion
matrix engine; for each candidate: the metric deltas vs the baseline (Table 2 rows), its pixel
agreement with the baseline's labels, and — where both expose logits at the same size — logit
error statistics as Polygraphy's comparator reports them (max / mean / median / p99 absolute
error, max relative error), over the first ``logit_images`` images.  Comparison is kept apart
from running: the runs produce labels and logits, :func:`logit_error` and :func:`compare` judge.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ..errors import CitysegError
from ..fileio import write_text_atomic
from ..metrics.tables import table1_markdown, table2_markdown, write_tables
from .evaluate import run_split
from ..metrics.tables import eval_json

DELTA_KEYS = ("per_pixel", "micro", "macro", "weighted", "miou")
_MAX_PERCENTILE_SAMPLES = 4_000_000


def _flat(result: dict) -> dict[str, float]:
    return {"per_pixel": result["per_pixel"], **{k: result["jaccard"][k] for k in ("micro", "macro", "weighted")},
            "miou": result["miou"]}


def delta(candidate: dict, baseline: dict) -> dict[str, float]:
    """Candidate minus baseline for per_pixel, micro, macro, weighted, miou (fractions)."""
    c, b = _flat(candidate), _flat(baseline)
    return {k: float(c[k] - b[k]) for k in DELTA_KEYS}


class LogitError:
    """Streaming |candidate - baseline| statistics (exact max/mean, p99 on a strided sample)."""

    def __init__(self):
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.count = 0
        self.max_ref = 0.0
        self.images = 0
        self.samples: list[np.ndarray] = []

    def update(self, candidate: np.ndarray, baseline: np.ndarray) -> None:
        diff = np.abs(candidate.astype(np.float32) - baseline.astype(np.float32)).ravel()
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum(dtype=np.float64))
        self.count += diff.size
        self.max_ref = max(self.max_ref, float(np.abs(baseline).max()))
        self.images += 1
        stride = max(1, diff.size * 8 // _MAX_PERCENTILE_SAMPLES)
        self.samples.append(diff[::stride])

    def result(self) -> dict[str, Any] | None:
        if not self.count:
            return None
        sample = np.concatenate(self.samples)
        med, p99 = np.percentile(sample, [50, 99])
        return {"max_abs": self.max_abs, "mean_abs": self.sum_abs / self.count,
                "median_abs": float(med), "p99_abs": float(p99),
                "max_rel": self.max_abs / self.max_ref if self.max_ref else None,
                "images": self.images}


def _names(specs: Sequence[str]) -> list[str]:
    names, seen = [], {}
    for spec in specs:
        from ..runtime import parse_model_spec

        path, precision = parse_model_spec(spec)
        name = Path(path).name + (f"@{precision}" if precision else "")
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names


@dataclass(frozen=True)
class _Run:
    """How every model of one check runs: the split, the device, what to keep from each pass."""
    data_root: str | os.PathLike
    split: str
    device: str
    threads: int | None
    batch: int
    label_set: str | None
    logit_images: int
    progress: bool
    emulate_bf16: bool
    engine: Any  # None: this process; else e.g. a RayEngine (its own load and run_split)
    runner_options: dict[str, Any] = field(default_factory=dict)  # to every model's runner


class _Reference:
    """The baseline's labels (PNG bytes: small) and logits per image, kept for the candidates."""

    def __init__(self):
        self.labels: dict[tuple[str, str], bytes] = {}  # (city, stem): stems may repeat across cities
        self.logits: dict[tuple[str, str], np.ndarray] = {}

    def record(self, sample, image, labels, logits) -> None:
        ok, buf = cv2.imencode(".png", labels)
        self.labels[sample.city, sample.stem] = buf.tobytes()
        if logits is not None:
            self.logits[sample.city, sample.stem] = logits


class _Comparison:
    """One candidate against the reference: pixel agreement and logit error statistics."""

    def __init__(self, reference: _Reference):
        self.reference = reference
        self.same = 0
        self.pixels = 0
        self.error = LogitError()

    def record(self, sample, image, labels, logits) -> None:
        key = sample.city, sample.stem
        ref = cv2.imdecode(np.frombuffer(self.reference.labels[key], np.uint8), cv2.IMREAD_UNCHANGED)
        self.same += int((ref == labels).sum())
        self.pixels += labels.size
        ref_logits = self.reference.logits.get(key)
        if logits is not None and ref_logits is not None and ref_logits.shape == logits.shape:
            self.error.update(logits, ref_logits)

    def agreement(self) -> float | None:
        return self.same / self.pixels if self.pixels else None


def check(baseline, candidates: Sequence, data_root: str | os.PathLike, *, split: str = "val",
          device: str = "cpu", threads: int | None = None, batch: int = 1,
          max_miou_drop: float | None = None, out: str | os.PathLike | None = None,
          json_path: str | os.PathLike | None = None, logit_images: int = 4,
          progress: bool = True, label_set: str | None = None, emulate_bf16: bool = False,
          baseline_size: str = "candidate", engine: Any = None,
          runner_options: dict[str, Any] | None = None) -> dict:
    """Compare ``candidates`` with ``baseline`` on ``split``; returns the check JSON dict.

    Models are paths or ``path@precision`` specs.  ``max_miou_drop`` (percentage points) adds
    ``gate`` = ``{"max_miou_drop", "passed", "failures": [...]}``.  ``out``: folder for
    Markdown/CSV tables, the JSON and the per-class delta plot.  ``emulate_bf16``: let a
    ``checkpoint@bf16`` run on a CPU without native bf16 (oneDNN's emulation: the bf16 rounding of
    weights and activations is the same, only slow), so bf16 accuracy can be known before the
    model reaches an AVX-512 BF16/AMX machine; such rows say ``bf16 (emulated)``.
    ``baseline_size``: ``"candidate"`` (default) runs the baseline at the candidates' input size,
    so a faithful artifact exported with ``--size`` agrees with it; ``"own"`` keeps the
    baseline's size (what the smaller input costs).  The report's ``sizes`` says which ran where.
    ``engine``: who loads and runs each model (default this process; ``RayEngine`` for a Ray
    actor pool).  ``runner_options``: keyword options for every model's runner (``--runner-option``).
    """
    if not candidates:
        raise CitysegError("check needs at least one CANDIDATE besides the BASELINE")
    specs = [str(baseline), *[str(c) for c in candidates]]
    names = _names(specs)
    if baseline_size not in ("candidate", "own"):
        raise CitysegError(f"--baseline-size {baseline_size!r}: choose candidate or own")
    own_size, run_size = _baseline_sizes(specs, baseline_size)
    run = _Run(data_root=data_root, split=split, device=device, threads=threads, batch=batch,
               label_set=label_set, logit_images=logit_images, progress=progress,
               emulate_bf16=emulate_bf16, engine=engine, runner_options=dict(runner_options or {}))
    results, docs = _run_models(specs, names, run, baseline_at=run_size if run_size != own_size else None)
    report: dict[str, Any] = {"baseline": docs[0], "candidates": docs[1:]}
    report["sizes"] = {"baseline_own": list(own_size), "baseline_ran_at": list(run_size),
                       "candidates": [d["input_size"] for d in docs[1:]], "baseline_size": baseline_size}
    report["sizes_line"] = sizes_line(report["sizes"])
    if max_miou_drop is not None:
        report["gate"] = _gate(docs, max_miou_drop)
    report["markdown"] = format_markdown(report, results)
    if out is not None:
        write_outputs(report, results, out)
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(_json_doc(report), indent=2) + "\n")
    return report


def _run_models(specs: Sequence[str], names: Sequence[str], run: _Run,
                baseline_at: tuple[int, int] | None) -> tuple[dict[str, dict], list[dict]]:
    """One pass per model, the baseline first; (results by name, one JSON doc per model)."""
    reference = _Reference()
    results: dict[str, dict] = {}
    docs: list[dict] = []
    base_seg = None
    for k, (spec, name) in enumerate(zip(specs, names)):
        seg = _load(baseline_spec(spec, run.device) if k == 0 else spec, run,
                    size=baseline_at if k == 0 else None)
        if base_seg is None:
            base_seg = seg
        elif seg.meta.num_classes != base_seg.meta.num_classes:
            raise CitysegError(f"{spec}: predicts {seg.meta.num_classes} classes, the baseline "
                               f"{base_seg.meta.num_classes}; compare models of one class set")
        comparison = _Comparison(reference) if k > 0 else None
        result = _score(seg, name, run, on_prediction=comparison.record if comparison else reference.record)
        results[name] = result
        doc = _model_doc(result, name, spec, seg, run.split)
        if comparison is not None:
            doc["delta"] = delta(result, results[names[0]])
            doc["agreement"] = comparison.agreement()
            doc["logit_error"] = comparison.error.result()
        docs.append(doc)
        if seg is not base_seg:
            seg.close()
    return results, docs


def baseline_spec(spec: str, device: str) -> str:
    """The baseline as it runs: a plain checkpoint on CUDA runs IEEE fp32 (``CKPT@fp32``), not
    the fp16 every other command defaults to there — the reference is the network's own
    arithmetic, so an fp16 candidate is measured against fp32, not against itself."""
    from ..artifacts import artifact_kind
    from ..runtime import parse_model_spec

    path, precision = parse_model_spec(spec)
    if precision is None and str(device).startswith("cuda") and artifact_kind(Path(path)) == "torch":
        return f"{path}@fp32"
    return spec


def _load(spec: str, run: _Run, size: tuple[int, int] | None):
    from .. import runtime

    # only runners that can emulate bf16 take the option (runtime.load refuses unknown ones)
    emulate = run.emulate_bf16 and runtime.takes_option(spec, "allow_emulated_bf16")
    options: dict[str, Any] = dict(run.runner_options)
    if emulate:
        options["allow_emulated_bf16"] = True
    if size is not None:
        options["size"] = size
    return (run.engine or runtime).load(spec, device=run.device, threads=run.threads, **options)


def _score(seg, name: str, run: _Run, on_prediction) -> dict:
    """One pass of ``seg`` over the split; its scores (logits kept for the first images only)."""
    run_split_of = run.engine.run_split if run.engine else run_split
    cm = run_split_of(seg, run.data_root, split=run.split, label_set=run.label_set, batch=run.batch,
                      progress=run.progress, desc=f"check {name}", on_prediction=on_prediction,
                      want_logits=lambda index: index < run.logit_images)
    return cm.compute(seg.meta.class_names)


def _model_doc(result: dict, name: str, spec: str, seg, split: str) -> dict:
    """A model's JSON doc: its scores, how it ran, and what export's accuracy control kept."""
    doc = eval_json(result, name)
    precision = seg.precision
    if getattr(seg, "emulated_bf16", False):
        precision = f"{precision} (emulated)"
    from ..runtime.base import runner_of

    doc.update(path=spec, backend=seg.backend, precision=precision, device=seg.device, split=split,
               input_size=[int(v) for v in seg.input_size], runner=runner_of(seg))
    control = (getattr(seg, "io", None) or {}).get("accuracy_control")
    if control:  # written by export --max-drop: what was kept in float, what export measured
        doc["accuracy_control"] = {k: control.get(k) for k in
                                   ("max_drop", "drop", "within", "kept_float", "excluded_nodes")}
    return doc


def _gate(docs: Sequence[dict], max_miou_drop: float) -> dict[str, Any]:
    """``{"max_miou_drop", "passed", "failures"}``: each candidate's mIoU drop vs ``docs[0]``."""
    failures = []
    for doc in docs[1:]:
        drop = -100.0 * doc["delta"]["miou"]
        if drop > max_miou_drop:
            failures.append(f"{doc['model']}: mIoU {100 * doc['miou']:.2f} vs baseline "
                            f"{100 * docs[0]['miou']:.2f}, a drop of {drop:.2f} pts > "
                            f"{max_miou_drop:g} allowed")
    return {"max_miou_drop": max_miou_drop, "passed": not failures, "failures": failures}


def _json_doc(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("markdown", "sizes_line")}


def _hw(size) -> str:
    return f"{int(size[0])}x{int(size[1])}"


def sizes_line(sizes: dict) -> str:
    """One line saying where the baseline and the candidates ran (both sizes, always printed)."""
    cands = ", ".join(dict.fromkeys(_hw(s) for s in sizes["candidates"]))
    line = f"input sizes: baseline {_hw(sizes['baseline_ran_at'])}"
    if sizes["baseline_ran_at"] != sizes["baseline_own"]:
        line += (f" (its own size is {_hw(sizes['baseline_own'])}; run at the candidates' size — "
                 "--baseline-size own keeps it)")
    elif any(list(s) != sizes["baseline_own"] for s in sizes["candidates"]):
        line += " (its own size, --baseline-size own: differences include the input size)"
    return line + f", candidates {cands}"


def _baseline_sizes(specs: Sequence[str], mode: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(baseline's own input size, size it runs at) from the artifacts' metadata, before any run."""
    from ..artifacts import read_artifact_meta
    from ..deploy import artifact_of
    from ..runtime import parse_model_spec

    def size_of(spec: str) -> tuple[tuple[int, int], bool]:
        path = artifact_of(parse_model_spec(spec)[0])  # a deploy folder: its artifact
        meta, io = read_artifact_meta(path)
        size = tuple(int(v) for v in (io.get("size") or meta.input_size))
        return size, bool(io.get("dynamic")) or path.suffix in (".pt", ".pth")

    own, base_dynamic = size_of(specs[0])
    if mode == "own":
        return own, own
    cand_sizes = {size_of(s)[0] for s in specs[1:]}
    if len(cand_sizes) > 1:
        shown = ", ".join(sorted(_hw(s) for s in cand_sizes))
        raise CitysegError(f"check: the candidates were exported at different input sizes ({shown}); "
                           "check each size in its own run, or pass --baseline-size own")
    target = cand_sizes.pop()
    if target != own and not base_dynamic:
        raise CitysegError(f"{specs[0]}: a static baseline for {_hw(own)} cannot run at the "
                           f"candidates' {_hw(target)}; use the checkpoint as the baseline, or pass "
                           "--baseline-size own")
    return own, target


def _fmt(v, scale=1.0, digits=4) -> str:
    return "–" if v is None else f"{v * scale:.{digits}g}" if scale == 1.0 else f"{v * scale:+.2f}"


def candidates_markdown(report: dict) -> str:
    rows = ["| candidate | backend | precision | ΔmIoU (pts) | Δper-pixel (pts) | agreement (%) | "
            "logit max abs | mean abs | p99 abs | max rel |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in report["candidates"]:
        e = c.get("logit_error") or {}
        agreement = "–" if c.get("agreement") is None else f"{100 * c['agreement']:.3f}"
        rows.append(f"| {c['model']} | {c['backend']} | {c['precision']} | {_fmt(c['delta']['miou'], 100)} | "
                    f"{_fmt(c['delta']['per_pixel'], 100)} | {agreement} | {_fmt(e.get('max_abs'))} | "
                    f"{_fmt(e.get('mean_abs'))} | {_fmt(e.get('p99_abs'))} | {_fmt(e.get('max_rel'))} |")
    for c in report["candidates"]:
        ac = c.get("accuracy_control")
        if ac:
            rows.append(f"\n{c['model']}: exported with --max-drop {ac['max_drop']:g}: measured drop "
                        f"{ac['drop']:+.2f} pts at export ({'within' if ac['within'] else 'NOT within'}); "
                        f"{len(ac['kept_float'] or [])} layer(s) kept in float: "
                        f"{', '.join(ac['kept_float'] or []) or 'none'} "
                        f"({len(ac['excluded_nodes'] or [])} nodes without Q/DQ)")
    return "\n".join(rows) + "\n"


def format_markdown(report: dict, results: dict[str, dict]) -> str:
    parts = [f"{report['sizes_line']}\n\n" if report.get("sizes_line") else "",
             f"## Table 2: overall (baseline {report['baseline']['model']})\n", table2_markdown(results),
             "\n## Candidates vs baseline\n", candidates_markdown(report),
             "\n## Table 1: per-class IoU\n", table1_markdown(results)]
    gate = report.get("gate")
    if gate:
        parts.append(f"\nGate (max mIoU drop {gate['max_miou_drop']:g} pts): "
                     f"{'passed' if gate['passed'] else 'FAILED'}\n")
        parts.extend(f"- {f}\n" for f in gate["failures"])
    return "".join(parts)


def plot_class_delta(report: dict, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Per-class IoU delta (points) of each candidate vs the baseline, grouped bars."""
    from ..metrics.plots import pyplot, save_figure

    plt = pyplot()
    base = report["baseline"]["per_class_iou"]
    classes = list(base)
    x = np.arange(len(classes))
    cands = report["candidates"]
    width = 0.8 / max(1, len(cands))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(classes) + 2), 4))
    for k, c in enumerate(cands):
        vals = [np.nan if (c["per_class_iou"].get(n) is None or base[n] is None)
                else 100.0 * (c["per_class_iou"][n] - base[n]) for n in classes]
        ax.bar(x + (k - (len(cands) - 1) / 2) * width, vals, width,
               label=f"{c['model']} (ΔmIoU {100 * c['delta']['miou']:+.2f})")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, classes, rotation=60, ha="right")
    ax.set_ylabel("IoU - baseline IoU (pts)")
    ax.set_title(f"Per-class IoU delta vs {report['baseline']['model']}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, dpi)


def write_outputs(report: dict, results: dict[str, dict], out: str | os.PathLike) -> list[str]:
    """check.json, check.md, check_table{1,2}.{md,csv}, check_delta.png under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = write_tables(out / "check", results)
    write_text_atomic(out / "check.json", json.dumps(_json_doc(report), indent=2) + "\n")
    write_text_atomic(out / "check.md", report["markdown"])
    plot_class_delta(report, out / "check_delta.png")
    written += [str(out / "check.json"), str(out / "check.md"), str(out / "check_delta.png")]
    return written
