"""``cityseg quickstart``: the whole toolchain, end to end, on the embedded synthetic default.

data → train (three small recipes) → export (ONNX fp32 / int8, OpenVINO int8, AOTInductor) →
check (Tables 1 and 2 against each PyTorch baseline) → bench (every artifact) → segment (a
generated video with the best model) → ``DIR/report.md``.

Each step is a function that reads what earlier steps wrote under ``DIR`` and records what it
produced in ``DIR/quickstart.json``.  Re-running into the same ``DIR`` skips finished steps whose
outputs still exist, so an interrupted quickstart resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import CitysegError
from .fileio import atomic_path, write_png, write_text_atomic

#: The three networks of the report, as CPU-sized presets (recipes in ``training/``).
MODELS = ("deeplabv3_small", "unet_small", "denseaspp_small")
STATE_FILE = "quickstart.json"


@dataclass
class QuickstartConfig:
    """Sizes that keep the whole run under ~10 minutes on 2 CPU cores."""

    out: Path
    models: tuple[str, ...] = MODELS
    n_train: int = 48
    n_val: int = 12
    size: tuple[int, int] = (128, 256)
    seed: int = 0
    epochs: int | None = None          # None: each recipe's own
    aoti: bool = True                  # AOTInductor compiles C++: ~1 min per model on 2 cores
    bench_iters: int = 10
    video_frames: int = 48
    threads: int | None = None
    progress: bool = True
    log: Callable[[str], None] = print
    overwrite: bool = False            # redo steps whose options changed (else refuse)
    timings: dict[str, float] = field(default_factory=dict)
    fresh: set[str] = field(default_factory=set)  # steps redone from scratch in this run

    @property
    def data(self) -> Path:
        return self.out / "data"


class State:
    """``DIR/quickstart.json``: which steps began and finished, with the options each ran with,
    what they produced and how long they took."""

    def __init__(self, out: Path):
        self.path = out / STATE_FILE
        self.steps: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.steps = json.loads(self.path.read_text()).get("steps", {})
            except ValueError:
                self.steps = {}  # a damaged state file only costs a re-run
        self.ran: set[str] = set()  # steps this run executed (the report says which)

    def done(self, step: str, options: dict[str, Any]) -> dict[str, Any] | None:
        """The finished record of ``step`` if it ran with ``options`` and its outputs exist."""
        record = self.steps.get(step)
        if not record or not record.get("finished", True) or record.get("options") != options:
            return None
        if not all(Path(p).exists() for p in record.get("outputs", [])):
            return None
        return record

    def changed(self, step: str, options: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Options that differ from those ``step`` began or finished with before: {name: (then, now)}."""
        record = self.steps.get(step)
        if not record or "options" not in record:
            return {}
        then = record["options"]
        return {k: (then.get(k), options.get(k)) for k in sorted(set(then) | set(options))
                if then.get(k) != options.get(k)}

    def begin(self, step: str, options: dict[str, Any]) -> None:
        self.steps[step] = {"options": options, "finished": False}
        self._save()

    def finish(self, step: str, *, outputs: list[str], seconds: float, options: dict[str, Any] | None = None,
               **info: Any) -> None:
        if options is None:
            options = self.steps.get(step, {}).get("options", {})
        self.steps[step] = {"outputs": outputs, "seconds": round(seconds, 2), "options": options,
                            "finished": True, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                            **info}
        self.ran.add(step)
        self._save()

    def _save(self) -> None:
        write_text_atomic(self.path, json.dumps({"steps": self.steps}, indent=2, default=str) + "\n")


def step_options(cfg: QuickstartConfig, step: str) -> dict[str, Any]:
    """What ``step``'s result depends on: its own options and those of the steps it reads.

    Why: a re-run with ``--train 8 --val 4`` reused the 48/12-image data, training and bench of
    the first run, and the report stated the old counts; now a step whose options changed is
    redone (``--overwrite``) or the run is refused, naming the steps and options.
    """
    kind, _, arch = step.partition(":")
    data = {"train": cfg.n_train, "val": cfg.n_val, "size": list(cfg.size), "seed": cfg.seed}
    if kind == "data":
        return data
    trained = {**data, "epochs": cfg.epochs}
    if kind == "train":
        return {**trained, "model": arch}
    exported = {**trained, "aoti": cfg.aoti}
    if kind in ("export", "check"):
        return {**exported, "model": arch}
    benched = {**exported, "models": list(cfg.models), "bench_iters": cfg.bench_iters,
               "threads": cfg.threads}
    if kind in ("bench", "deploy"):  # deploy: the rule applied to check + bench
        return benched
    return {**benched, "video_frames": cfg.video_frames}  # segment


def _clear(paths: list[Path]) -> None:
    import shutil

    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def step_paths(cfg: QuickstartConfig, step: str) -> list[Path]:
    """What ``step`` writes, removed before it is redone with other options."""
    kind, _, arch = step.partition(":")
    out = cfg.out
    if kind == "data":
        return [cfg.data]
    if kind == "train":
        return [out / "runs" / arch]
    if kind == "export":
        folder = out / "artifacts"
        return sorted(folder.glob(f"{arch}_*")) if folder.is_dir() else []
    if kind == "check":
        return [out / "check" / arch]
    if kind == "bench":
        return [out / "bench"]
    if kind == "deploy":
        return [out / "deploy"]
    return [out / "video"]


def _step(cfg: QuickstartConfig, state: State, name: str, title: str,
          body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``body`` unless ``name`` already finished with the same options; ``body`` returns
    ``{"outputs": [...], ...}``.  A step that ran with other options is redone from scratch
    with ``cfg.overwrite`` (its outputs removed first), else refused."""
    options = step_options(cfg, name)
    record = state.done(name, options)
    if record is not None:
        cfg.log(f"[quickstart] {title}: done before with the same options, reused "
                f"({record['seconds']:.1f} s then)")
        cfg.timings[name] = 0.0
        return record
    changed = state.changed(name, options)
    if changed:
        what = ", ".join(f"{k} {then!r} -> {now!r}" for k, (then, now) in changed.items())
        if not cfg.overwrite:
            raise CitysegError(f"{cfg.out}: step {name!r} ran with other options before ({what}); "
                               "pass --overwrite to redo it (and what depends on it) with these, "
                               "or choose another --out")
        cfg.log(f"[quickstart] {title}: options changed ({what}); redoing it")
        _clear(step_paths(cfg, name))
        cfg.fresh.add(name)
    cfg.log(f"[quickstart] {title} ...")
    state.begin(name, options)
    start = time.perf_counter()
    info = body()
    seconds = time.perf_counter() - start
    cfg.timings[name] = seconds
    state.finish(name, seconds=seconds, options=options, **info)
    cfg.log(f"[quickstart] {title}: {seconds:.1f} s")
    return state.steps[name]


# --------------------------------------------------------------------------- steps

def step_data(cfg: QuickstartConfig) -> dict[str, Any]:
    from .data.synth import synthesize

    synthesize(cfg.data, n_train=cfg.n_train, n_val=cfg.n_val, size=cfg.size, seed=cfg.seed)
    return {"outputs": [str(cfg.data / "leftImg8bit"), str(cfg.data / "gtFine")]}


def step_train(cfg: QuickstartConfig, arch: str) -> dict[str, Any]:
    from .training import fit
    from .training.recipe import load_recipe

    overrides: dict[str, Any] = {}
    if cfg.epochs is not None:
        overrides["epochs"] = cfg.epochs
    recipe = load_recipe(arch, overrides)
    run_dir = cfg.out / "runs" / arch
    # an interrupted step with the same options resumes; one redone with other options starts over
    resume = (run_dir / "last.pt").is_file() and f"train:{arch}" not in cfg.fresh
    result = fit(recipe, cfg.data, run_dir, resume=resume, progress=cfg.progress,
                 log=cfg.log, overwrite=not resume)
    best = result["best"] or {}
    return {"outputs": [str(run_dir / "best.pt")], "miou": best.get("miou"),
            "best_epoch": result.get("best_epoch"), "epochs": result.get("epochs_run")}


def _artifact_plan(cfg: QuickstartConfig) -> list[tuple[str, str, str]]:
    """(label, format, precision) of every artifact exported per model."""
    plan = [("onnx fp32", "onnx", "fp32"), ("onnx int8", "onnx", "int8"),
            ("openvino int8", "openvino", "int8")]
    if cfg.aoti:
        plan.append(("aoti fp32", "aoti", "fp32"))
    return plan


def step_export(cfg: QuickstartConfig, arch: str) -> dict[str, Any]:
    from . import formats
    from .export import export

    ckpt = cfg.out / "runs" / arch / "best.pt"
    folder = cfg.out / "artifacts"
    artifacts: dict[str, dict[str, Any]] = {}
    for label, fmt, precision in _artifact_plan(cfg):
        out = folder / f"{arch}_{precision}{formats.get(fmt).suffix}"
        try:
            result = export(ckpt, format=fmt, precision=precision, out=out,
                            calib_data=cfg.data, data=cfg.data, log=cfg.log)
        except CitysegError as exc:
            # One failing format must not sink the others; the report shows the reason.
            cfg.log(f"[quickstart] export {arch} {label} failed: {exc}")
            artifacts[label] = {"status": "failed", "error": str(exc)}
            continue
        artifacts[label] = {"status": "ok", "path": str(result.path),
                            "seconds": round(result.seconds, 2), "size_mb": round(result.size_mb, 3)}
    outputs = [a["path"] for a in artifacts.values() if a["status"] == "ok"]
    return {"outputs": outputs, "artifacts": artifacts}


def step_check(cfg: QuickstartConfig, arch: str, artifacts: dict[str, dict]) -> dict[str, Any]:
    from .evaluation.check import check

    ckpt = cfg.out / "runs" / arch / "best.pt"
    candidates = [a["path"] for a in artifacts.values() if a["status"] == "ok"]
    out = cfg.out / "check" / arch
    check(ckpt, candidates, cfg.data, out=out, json_path=out / "check.json",
          threads=cfg.threads, progress=cfg.progress)
    return {"outputs": [str(out / "check.json")], "json": str(out / "check.json")}


def step_bench(cfg: QuickstartConfig, entries: list[dict[str, Any]]) -> dict[str, Any]:
    from .bench.benchmark import benchmark

    out = cfg.out / "bench"
    benchmark(entries, iters=cfg.bench_iters, warmup=2, threads=cfg.threads, progress=cfg.progress,
              json_path=out / "bench.json", md_path=out / "bench.md", plot_path=out / "latency.png",
              title="quickstart: every artifact, batch 1, model input size")
    return {"outputs": [str(out / "bench.json"), str(out / "latency.png")]}


def write_demo_video(path: Path, *, size: tuple[int, int], frames: int, seed: int, fps: float = 10.0) -> Path:
    """A drive through one synthetic street (the data generator's moving camera), as MJPG AVI."""
    import cv2

    from .data.synth import render_frame, scene_params

    params = scene_params(seed, size)
    with atomic_path(path) as tmp:
        # The temporary name must keep the container's extension for OpenCV to pick the muxer.
        tmp_video = tmp.with_suffix(path.suffix)
        writer = cv2.VideoWriter(str(tmp_video), cv2.VideoWriter_fourcc(*"MJPG"), fps,
                                 (size[1], size[0]))
        try:
            for i in range(frames):
                image, _ = render_frame(params, i / fps)
                writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        os.replace(tmp_video, tmp)
    return path


def step_segment(cfg: QuickstartConfig, pick: dict[str, Any]) -> dict[str, Any]:
    from . import runtime
    from .video import PipelineOptions, VideoSource, run_source

    model = pick["path"]

    video = write_demo_video(cfg.out / "video" / "drive.avi", size=cfg.size,
                             frames=cfg.video_frames, seed=cfg.seed + 1000)
    out = cfg.out / "video" / "drive_segmented.mp4"
    with runtime.load(model, threads=cfg.threads) as segmenter:
        source = VideoSource(str(video)).open()
        result = run_source(source, segmenter, out=out, opts=PipelineOptions(progress=cfg.progress))
    # One frame of the output for the report (videos do not show in Markdown).
    import cv2

    cap = cv2.VideoCapture(str(out))
    cap.set(cv2.CAP_PROP_POS_FRAMES, min(20, cfg.video_frames - 1))
    ok, frame = cap.read()
    cap.release()
    still = cfg.out / "video" / "drive_frame.png"
    if ok:
        write_png(still, frame)
    return {"outputs": [str(out)], "model": model, "arch": pick.get("arch"), "why": pick.get("why"),
            "artifact": pick.get("artifact"), "frames": result.frames,
            "fps": result.pipeline_fps, "still": str(still) if ok else None}


def sample_figure(cfg: QuickstartConfig, models: dict[str, str], path: Path, n: int = 3) -> Path:
    """Image / ground truth / prediction of each model for ``n`` val images (the report's figure)."""
    from . import runtime
    from .data.cityscapes import CityscapesDataset
    from .labels import get_label_set

    rows = []
    segmenters = {arch: runtime.load(ckpt, threads=cfg.threads) for arch, ckpt in models.items()}
    try:
        datasets = {}
        for i in range(n):
            cells = []
            for arch, seg in segmenters.items():
                label_set = get_label_set(seg.meta.label_set)
                ds = datasets.setdefault(label_set.name, CityscapesDataset(cfg.data, "val",
                                                                           label_set=label_set.name))
                image, truth = ds[i % len(ds)]
                if not cells:
                    cells.append(image)
                cells.append(label_set.colorize(truth))
                cells.append(label_set.colorize(seg.predict(image)))
            rows.append(np.concatenate(cells, axis=1))
    finally:
        for seg in segmenters.values():
            seg.close()
    grid = np.concatenate(rows, axis=0)
    write_png(path, grid, rgb=True)
    return path


# --------------------------------------------------------------------------- report

def _machine_line() -> str:
    from .system.machine import machine_info

    m = machine_info(None)
    flags = ", ".join(m.get("cpu_flags") or []) or "none of the listed"
    return f"{m.get('cpu')} ({m.get('threads')} threads; {flags}); {platform.python_version()}"


def write_report(cfg: QuickstartConfig, state: State) -> Path:
    """``DIR/report.md``: Table 2 and Table 1 per model, plots, speed, sample images, video."""
    out = cfg.out
    rel = lambda p: os.path.relpath(p, out)  # noqa: E731
    lines = ["# cityseg quickstart report", "",
             f"Synthetic Cityscapes-layout data ({cfg.n_train} train / {cfg.n_val} val at "
             f"{cfg.size[0]}x{cfg.size[1]}, seed {cfg.seed}); {_networks_phrase(cfg.models)} as "
             f"small CPU presets. Machine: {_machine_line()}.", ""]
    baselines: dict[str, dict] = {}
    for arch in cfg.models:
        check_doc = json.loads(Path(state.steps[f"check:{arch}"]["json"]).read_text())
        baselines[arch] = check_doc["baseline"]
        lines += _network_section(arch, check_doc, state, rel(out / "runs" / arch / "curves.png"))
    figures = _baseline_figures(out / "figures", baselines)
    lines += _deploy_section(_choices(cfg, state), rel)
    lines += _side_by_side_section(baselines, figures, rel)
    sample = sample_figure(cfg, {a: str(out / "runs" / a / "best.pt") for a in cfg.models},
                           out / "figures" / "samples.png")
    lines += ["## Sample predictions", "",
              "Each row: image, then ground truth / prediction for " + ", ".join(cfg.models) + ".",
              "", f"![samples]({rel(sample)})", ""]
    bench_md = (out / "bench" / "bench.md").read_text()
    lines += ["## Speed", "", demote_headings(bench_md.strip(), 2), "",
              f"![latency]({rel(out / 'bench' / 'latency.png')})", ""]
    seg = state.steps.get("segment")
    if seg:
        lines += _video_section(seg, rel)
    lines += _steps_section(state, step_names(cfg))
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines))
    return report


def _network_section(arch: str, check_doc: dict, state: State, curves: str) -> list[str]:
    """One network: training, Table 2, agreement with its baseline (and failed exports), Table 1."""
    from .metrics.tables import table1_markdown, table2_markdown

    results = {check_doc["baseline"]["model"]: check_doc["baseline"]}
    for cand in check_doc["candidates"]:
        results[cand["model"]] = cand
    train = state.steps[f"train:{arch}"]
    lines = [f"## {arch}", "",
             f"Trained {train.get('epochs')} epochs (best epoch {train.get('best_epoch')}); "
             f"training curves: ![curves]({curves})", "",
             "**Table 2** (metrics × artifacts, %):", "", table2_markdown(results), "",
             "**Agreement with the PyTorch baseline** (fraction of pixels with the same label) "
             "and mIoU change:", "",
             "| artifact | backend | precision | agreement | Δ mIoU (pts) | logit error max / p99 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for cand in check_doc["candidates"]:
        err = cand.get("logit_error") or {}
        err_text = (f"{err['max_abs']:.2e} / {err['p99_abs']:.2e}" if err.get("max_abs") is not None
                    else "n/a (labels only)")
        lines.append(f"| {cand['model']} | {cand.get('backend')} | {cand.get('precision')} | "
                     f"{cand['agreement']:.4f} | {100 * cand['delta']['miou']:+.2f} | {err_text} |")
    failed = {k: v for k, v in state.steps[f"export:{arch}"]["artifacts"].items()
              if v["status"] != "ok"}
    for label, info in failed.items():
        lines.append(f"| {label} | — | — | export failed: {info['error']} | | |")
    return lines + ["", "**Table 1** (per-class IoU, %):", "", table1_markdown(results), ""]


def _baseline_figures(figures: Path, baselines: dict[str, dict]) -> tuple[Path, Path]:
    """Per-class IoU of every baseline, and the confusion of the best one (the video's network)."""
    from .metrics.plots import plot_class_iou, plot_confusion

    class_iou, confusion = figures / "class_iou.png", figures / "confusion.png"
    plot_class_iou({arch: doc for arch, doc in baselines.items()}, class_iou,
                   title="Per-class IoU of the PyTorch baselines")
    best_arch, _ = choose_video_network(baselines)
    best = baselines[best_arch]
    plot_confusion(best["confusion"], best["classes"], confusion,
                   title=f"Confusion of {best_arch} (rows: truth, normalised)")
    return class_iou, confusion


def _side_by_side_section(baselines: dict[str, dict], figures: tuple[Path, Path],
                          rel: Callable[[Any], str]) -> list[str]:
    """The baselines' mIoU and per-pixel accuracy in one table, then the cross-model figures."""
    class_iou, confusion = figures
    lines = [_side_by_side_heading(len(baselines)), "",
             "| network | classes | mIoU % | per-pixel % |", "| --- | --- | --- | --- |"]
    for arch, doc in baselines.items():
        lines.append(f"| {arch} | {doc['num_classes']} | {100 * doc['miou']:.2f} | "
                     f"{100 * doc['per_pixel']:.2f} |")
    lines.append("")
    if len({doc["num_classes"] for doc in baselines.values()}) > 1:
        lines += ["U-Net predicts the report's 10 merged classes, the others the 19 Cityscapes "
                  "classes, so their mIoUs are not on the same scale (as in the report).", ""]
    return lines + [f"![per-class IoU]({rel(class_iou)})", "", f"![confusion]({rel(confusion)})", ""]


def _video_section(seg: dict[str, Any], rel: Callable[[Any], str]) -> list[str]:
    lines = ["## Video", "",
             f"`cityseg segment` on a generated drive ({seg['frames']} frames) with "
             f"`{rel(seg['model'])}`: {seg['fps']:.1f} FPS end to end → "
             f"`{rel(seg['outputs'][0])}`.", ""]
    if seg.get("why"):
        lines += [f"Network: {seg['arch']}, {seg['why']}; artifact: its deploy choice above "
                  f"({seg.get('artifact')}).", ""]
    if seg.get("still"):
        lines += [f"![frame]({rel(seg['still'])})", ""]
    return lines


def step_names(cfg: QuickstartConfig) -> list[str]:
    """The steps of this configuration, in order (an earlier run's other models are not)."""
    per_model = [f"{kind}:{arch}" for arch in cfg.models for kind in ("train",)]
    per_model += [f"{kind}:{arch}" for arch in cfg.models for kind in ("export", "check")]
    return ["data", *per_model, "bench", "deploy", "segment"]


def _steps_section(state: State, names: list[str]) -> list[str]:
    """Each step: its wall time, whether this run executed it or reused an earlier run's result
    (and when that finished), and the options it ran with."""
    steps = {n: state.steps[n] for n in names if n in state.steps}
    total = sum(s.get("seconds", 0.0) for s in steps.values())
    lines = ["## Steps and wall time", "",
             "| step | seconds | this run | options |", "| --- | --- | --- | --- |"]
    for name, s in steps.items():
        ran = "ran" if name in state.ran else f"reused (finished {s.get('finished_at', 'earlier')})"
        opts = ", ".join(f"{k}={v}" for k, v in (s.get("options") or {}).items())
        lines.append(f"| {name} | {s.get('seconds', 0.0):.1f} | {ran} | {opts} |")
    return lines + [f"| **total** | **{total:.1f}** | | |", ""]


_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def _networks_phrase(models: tuple[str, ...]) -> str:
    if len(models) == 3 and set(models) == set(MODELS):
        return "the three networks of the report"
    return f"{_COUNT_WORDS.get(len(models), len(models))} of the report's networks ({', '.join(models)})"


def _side_by_side_heading(n: int) -> str:
    if n == 1:
        return "## The PyTorch baseline"
    return f"## The {_COUNT_WORDS.get(n, n)} networks side by side"


def demote_headings(markdown: str, levels: int) -> str:
    """Push every ATX heading down ``levels`` (an embedded document's H1 inside a ``##`` section)."""
    out = []
    for line in markdown.splitlines():
        if line.startswith("#"):
            hashes = len(line) - len(line.lstrip("#"))
            if line[hashes:hashes + 1] in (" ", ""):
                line = "#" * min(6, hashes + levels) + line[hashes:]
        out.append(line)
    return "\n".join(out)


def _deploy_section(choices: dict[str, dict[str, Any]], rel: Callable[[Any], str]) -> list[str]:
    """Which artifact to deploy per network, and why (the rule, the numbers, what lost)."""
    lines = ["## Which artifact to deploy", "",
             f"Per network, the fastest artifact whose val mIoU is at most {MAX_MIOU_DROP:g} point "
             "below its own PyTorch baseline (Table 2 above; speed from the bench table below, "
             "same run, this machine). Each choice is a deploy folder, `deploy/<network>/` "
             "(`deploy.json` + the artifact), which every command takes as MODEL (`cityseg "
             "predict deploy/<network> --data …`); on another machine it runs with a warning — "
             "`cityseg optimize CKPT --data ROOT` there measures that machine's fastest.", "",
             "| network | deploy | median ms | vs PyTorch | ΔmIoU (pts) | why |",
             "| --- | --- | --- | --- | --- | --- |"]
    for arch, c in choices.items():
        ms = f"{c['median_ms']:.1f}" if c["median_ms"] is not None else "–"
        ratio = (f"{c['baseline_ms'] / c['median_ms']:.2f}x" if c["median_ms"] and c["baseline_ms"]
                 else "–")
        lines.append(f"| {arch} | `{rel(c['path'])}` | {ms} | {ratio} | {c['delta_miou']:+.2f} | "
                     f"{c['reason']} |")
    lines.append("")
    for arch, c in choices.items():
        if c["rejected"]:
            lines.append(f"- {arch}, not chosen: " + "; ".join(f"{label} ({why})" for label, why in c["rejected"]))
    lines.append("")
    return lines


# --------------------------------------------------------------------------- driver

#: An artifact may lose at most this many mIoU points against its own PyTorch baseline.
MAX_MIOU_DROP = 1.0


def _candidate_rows(arch: str, baseline_path: str, check_doc: dict, bench_rows: list[dict]
                    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """One row per artifact of network ``arch`` for the deploy rule (optimize/pick.py), matched
    to its bench row by **path** (a row's ``model`` is its display label); and the artifacts
    without a bench row, (label, why)."""
    def key(path: str) -> str:
        return str(Path(path).resolve())

    rows = {key(r["path"]): r for r in bench_rows
            if r.get("status") == "ok" and r.get("path") and r.get("group", arch) == arch}
    docs = [(baseline_path, check_doc.get("baseline") or {}, 0.0)] + [
        (c["path"], c, 100 * c["delta"]["miou"]) for c in check_doc["candidates"]]
    out, untimed = [], []
    for path, doc, delta in docs:
        row = rows.get(key(path))
        if row is None:
            untimed.append((Path(path).name, "not timed (no bench row)"))
            continue
        out.append({"name": row["model"], "path": path, "status": "ok", "delta_miou_pts": delta,
                    "agreement": doc.get("agreement", 1.0 if path == baseline_path else None),
                    "miou": doc.get("miou"), "per_pixel": doc.get("per_pixel"),
                    "backend": row.get("backend"), "precision": row.get("precision"),
                    "latency_ms": row["latency_ms"]})
    return out, untimed


def choose_artifact(arch: str, baseline_path: str, check_doc: dict, bench_rows: list[dict],
                    max_drop: float = MAX_MIOU_DROP) -> dict[str, Any]:
    """The artifact of network ``arch`` to deploy: the fastest one within ``max_drop`` mIoU points.

    The rule is ``cityseg optimize``'s (:func:`cityseg_deploy.optimize.pick.pick`), applied to
    this run's check and bench: like with like, each candidate against its own network's
    PyTorch baseline (same label set, same val images), speeds from the bench rows of that
    network's group matched by path.  Returns ``{"arch", "path", "label", "median_ms",
    "baseline_ms", "delta_miou" (pts), "reason", "rejected": [(label, why)], "verdict",
    "rows"}``; the PyTorch checkpoint itself is always eligible (drop 0).
    """
    from .optimize.pick import pick

    rows, rejected = _candidate_rows(arch, baseline_path, check_doc, bench_rows)
    base = next((r for r in rows if r["path"] == baseline_path), None)
    base_ms = base["latency_ms"]["median"] if base else None
    if base is None:  # the baseline untimed: the rule has no reference; the checkpoint, said plainly
        return {"arch": arch, "path": baseline_path, "label": f"{arch} torch fp32", "median_ms": None,
                "baseline_ms": None, "delta_miou": 0.0, "rejected": rejected, "verdict": None,
                "rows": rows, "reason": "no artifact was timed; the PyTorch checkpoint by default"}
    verdict = pick(rows, baseline=base["name"], max_drop=max_drop)
    chosen = next(r for r in rows if r["name"] == verdict.name)
    ms, delta = verdict.median_ms, chosen["delta_miou_pts"]
    rejected += [(r["name"], f"ΔmIoU {-r['drop_pts']:+.2f} pts, more than {max_drop:g} below PyTorch")
                 for r in verdict.refused]
    rejected += [(r["name"], f"slower: {r['median_ms']:.1f} ms median vs {ms:.1f} ms") for r in verdict.slower]
    speed = (f"{base_ms / ms:.2f}x the PyTorch checkpoint's speed ({ms:.1f} vs {base_ms:.1f} ms median)"
             if base_ms else f"{ms:.1f} ms median")
    reason = (f"fastest artifact within {max_drop:g} mIoU point(s) of its PyTorch baseline: {speed}, "
              f"ΔmIoU {delta:+.2f} pts")
    return {"arch": arch, "path": chosen["path"], "label": verdict.name, "median_ms": ms,
            "baseline_ms": base_ms, "delta_miou": delta, "reason": reason, "rejected": rejected,
            "verdict": verdict, "rows": rows}


def step_deploy(cfg: QuickstartConfig, state: State) -> dict[str, Any]:
    """``DIR/deploy/<network>/``: each network's choice as a deploy folder (the record
    ``cityseg optimize`` writes), so the choice is a MODEL every command runs."""
    from .artifacts import artifact_kind, read_artifact_meta
    from .optimize.pick import pick
    from .optimize.record import make_record, write_deploy_folder

    folders: dict[str, str] = {}
    for arch, c in _choices(cfg, state).items():
        verdict = c["verdict"] or pick(c["rows"], baseline=f"{arch} torch fp32", max_drop=MAX_MIOU_DROP)
        kind = artifact_kind(c["path"])
        meta, _ = read_artifact_meta(c["path"])
        record = make_record(
            source={"checkpoint": str((cfg.out / "runs" / arch / "best.pt").resolve()), "arch": meta.arch,
                    "label_set": meta.label_set, "num_classes": meta.num_classes,
                    "input_size": list(meta.input_size)},
            data={"root": str(cfg.data.resolve()), "split": "val", "images": cfg.n_val},
            device="cpu", max_drop=MAX_MIOU_DROP, threads=cfg.threads,
            timing={"method": "cityseg bench rows, one after another (the quickstart's bench step)",
                    "iters": cfg.bench_iters, "batch": 1},
            candidates=[{k: v for k, v in r.items()} for r in c["rows"]], verdict=verdict,
            winner={"name": c["label"], "kind": kind, "precision": None, "options": {}})
        folder = cfg.out / "deploy" / arch
        name = Path(c["path"]).name
        record["pick"]["artifact"] = name
        write_deploy_folder(folder, record, Path(c["path"]), name)
        folders[arch] = str(folder)
    return {"outputs": [str(Path(f) / "deploy.json") for f in folders.values()], "folders": folders}


def choose_video_network(baselines: dict[str, dict]) -> tuple[str, str]:
    """(network, why) for the video: the highest val mIoU, compared only within one label set.

    U-Net predicts 10 merged classes, the others 19; a 10-class mIoU is not on the 19-class scale,
    so the 19-class networks are compared among themselves (the others only when none has 19).
    """
    by_classes: dict[int, list[str]] = {}
    for arch, doc in baselines.items():
        by_classes.setdefault(int(doc["num_classes"]), []).append(arch)
    classes = 19 if 19 in by_classes else max(by_classes)
    pool = by_classes[classes]
    arch = max(pool, key=lambda a: baselines[a]["miou"] or 0.0)
    why = f"highest val mIoU ({100 * (baselines[arch]['miou'] or 0.0):.2f} %)"
    why += (f" among the {classes}-class networks" if len(pool) > 1 else f", the only {classes}-class network")
    others = sorted(set(baselines) - set(pool))
    if others:
        why += (f"; {', '.join(others)} predict{'s' if len(others) == 1 else ''} another class set, "
                "whose mIoU is not on the same scale")
    return arch, why


def _choices(cfg: QuickstartConfig, state: State) -> dict[str, dict[str, Any]]:
    bench_rows = json.loads((cfg.out / "bench" / "bench.json").read_text())["results"]
    out = {}
    for arch in cfg.models:
        check_doc = json.loads(Path(state.steps[f"check:{arch}"]["json"]).read_text())
        out[arch] = choose_artifact(arch, str(cfg.out / "runs" / arch / "best.pt"), check_doc, bench_rows)
        out[arch]["baseline"] = check_doc["baseline"]
    return out


def _pick_video_model(cfg: QuickstartConfig, state: State) -> dict[str, Any]:
    """The network for the video (:func:`choose_video_network`) and its chosen artifact."""
    choices = _choices(cfg, state)
    arch, why = choose_video_network({a: c["baseline"] for a, c in choices.items()})
    folder = state.steps["deploy"]["folders"][arch]  # the deploy folder: a MODEL like any artifact
    return {"path": folder, "arch": arch, "why": why, "artifact": choices[arch]["label"]}


def quickstart(cfg: QuickstartConfig) -> Path:
    """Run every step (skipping finished ones) and return the report's path."""
    from .system.threads import torch_threads

    cfg.out.mkdir(parents=True, exist_ok=True)
    with torch_threads(cfg.threads):  # put back when done (system/threads.py)
        return _run_steps(cfg)


def _run_steps(cfg: QuickstartConfig) -> Path:
    state = State(cfg.out)
    start = time.perf_counter()
    _step(cfg, state, "data", "synthetic data set", lambda: step_data(cfg))
    for arch in cfg.models:
        _step(cfg, state, f"train:{arch}", f"train {arch}", lambda a=arch: step_train(cfg, a))
    bench_entries: list[dict[str, Any]] = []
    for arch in cfg.models:
        exported = _step(cfg, state, f"export:{arch}", f"export {arch}",
                         lambda a=arch: step_export(cfg, a))
        _step(cfg, state, f"check:{arch}", f"check {arch}",
              lambda a=arch, e=exported: step_check(cfg, a, e["artifacts"]))
        # group: each artifact's "x ref" is against its own network's PyTorch row.
        bench_entries.append({"model": str(cfg.out / "runs" / arch / "best.pt"),
                              "label": f"{arch} torch fp32", "group": arch})
        for label, info in exported["artifacts"].items():
            if info["status"] == "ok":
                bench_entries.append({"model": info["path"], "label": f"{arch} {label}", "group": arch})
    _step(cfg, state, "bench", "benchmark every artifact", lambda: step_bench(cfg, bench_entries))
    _step(cfg, state, "deploy", "write a deploy folder per network",
          lambda: step_deploy(cfg, state))
    _step(cfg, state, "segment", "segment a generated video",
          lambda: step_segment(cfg, _pick_video_model(cfg, state)))
    report = write_report(cfg, state)
    cfg.log(f"[quickstart] report: {report}  (this run: {time.perf_counter() - start:.1f} s)")
    return report
