"""YAML benchmark suites (``bench/*.yaml``): build the artifacts once, measure, record, judge.

A suite names a model (architecture, random weights are fine for speed), the artifacts to export
from it with the project's ``export()`` (int8 calibrated on synthetic street scenes), the rows to
measure (artifact, precision, runner), the reference row that ratios refer to, and targets
(``row`` / ``vs`` / ``min_ratio``).  Results go to ``<results>.json``, ``.md`` and ``.png``,
each naming the machine (CPU model, flags, threads, load average) and the machine's sgemm
GFLOP/s measured in the same run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import CitysegError, short_repr
from ..fileio import write_text_atomic


def load_suite(path: str | os.PathLike) -> dict[str, Any]:
    from ..resources import resolve
    from ..yamlfile import read_yaml

    path = resolve("suite", path)  # a path, or a bare name of a shipped suite (cpu_backends)
    suite = read_yaml(path)
    check_suite(suite, str(path))
    suite["_file"] = str(path)
    return suite


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_suite(suite: Any, where: str) -> None:
    """Refuse a suite whose keys are missing or of the wrong type, naming the key (before any
    artifact is built: a typo must not surface as a traceback after minutes of exporting)."""
    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise CitysegError(f"{where}: suite key {key!r} must be {expected}")

    if not isinstance(suite, dict):
        raise CitysegError(f"{where}: a suite must be a mapping with 'name', 'model' and 'rows'")
    for key in ("name", "model", "rows"):
        if key not in suite:
            raise CitysegError(f"{where}: suite lacks the {key!r} key")
    need(isinstance(suite["name"], str) and bool(suite["name"]) and "/" not in suite["name"]
         and suite["name"] not in (".", ".."), "name", "a plain name (it names the result files)")
    model = suite["model"]
    need(isinstance(model, dict) and isinstance(model.get("arch"), str), "model", "a mapping with an 'arch' name")
    size = model.get("size", [1, 1])
    need(isinstance(size, list) and len(size) == 2 and all(_is_int(v) and 0 < v <= 8192 for v in size),
         "model.size", "[H, W] of 1 to 8192")
    need(_is_int(model.get("seed", 0)), "model.seed", "an integer")
    need(isinstance(model.get("label_set", ""), str), "model.label_set", "a label set name")
    for key in ("artifacts", "settings", "calib"):
        need(isinstance(suite.get(key) or {}, dict), key, "a mapping")
    for name, art in (suite.get("artifacts") or {}).items():
        need(isinstance(name, str) and name != "checkpoint" and isinstance(art, dict)
             and isinstance(art.get("format"), str), f"artifacts.{name}", "a mapping with a 'format'")
        out = art.get("out", "x")
        need(isinstance(out, str) and out not in ("", ".", "..") and "/" not in out,
             f"artifacts.{name}.out", "a plain file name (written inside the work folder)")
        need(isinstance(art.get("options") or {}, dict), f"artifacts.{name}.options", "a mapping")
        need(isinstance(art.get("precision", "fp32"), str), f"artifacts.{name}.precision", "a string")
    calib = suite.get("calib") or {}
    need(_is_int(calib.get("images", 8)) and 0 < calib.get("images", 8) <= 10_000, "calib.images", "1 to 10000")
    csize = calib.get("size", [1, 1])
    need(isinstance(csize, list) and len(csize) == 2 and all(_is_int(v) and 0 < v <= 8192 for v in csize),
         "calib.size", "[H, W] of 1 to 8192")
    need(_is_int(calib.get("seed", 1)), "calib.seed", "an integer")
    settings = suite.get("settings") or {}
    for key in ("batch", "warmup", "iters", "threads"):
        need(settings.get(key) is None or (_is_int(settings[key]) and settings[key] >= 0),
             f"settings.{key}", "a non-negative integer")
    need(settings.get("duration") is None or (isinstance(settings["duration"], (int, float))
                                              and not isinstance(settings["duration"], bool)
                                              and settings["duration"] > 0), "settings.duration",
         "a positive number of seconds")
    need(settings.get("size") is None or (isinstance(settings["size"], list) and len(settings["size"]) == 2
                                          and all(_is_int(v) and 0 < v <= 8192 for v in settings["size"])),
         "settings.size", "[H, W] of 1 to 8192")
    need(isinstance(settings.get("device", "cpu"), str), "settings.device", "a device name")
    rows = suite["rows"]
    need(isinstance(rows, list) and bool(rows) and all(isinstance(r, dict) for r in rows), "rows",
         "a non-empty list of mappings")
    for i, row in enumerate(rows):
        for key in ("label", "artifact", "precision", "runner"):
            need(row.get(key) is None or isinstance(row[key], str), f"rows[{i}].{key}", "a string")
        need(isinstance(row.get("options") or {}, dict), f"rows[{i}].options", "a mapping")
    need(suite.get("reference") is None or isinstance(suite["reference"], str), "reference", "a row label")
    targets = suite.get("targets") or []
    need(isinstance(targets, list), "targets", "a list")
    for i, t in enumerate(targets):
        need(isinstance(t, dict) and isinstance(t.get("row"), str)
             and isinstance(t.get("min_ratio"), (int, float)) and not isinstance(t.get("min_ratio"), bool)
             and (t.get("vs") is None or isinstance(t["vs"], str)),
             f"targets[{i}]", "a mapping with 'row', 'min_ratio' (number) and optional 'vs'")
    for key in ("work", "results", "title"):
        need(suite.get(key) is None or isinstance(suite[key], str), key, "a string")


def _log(msg: str) -> None:
    print(f"[suite] {msg}", flush=True)


def prepare(suite: dict[str, Any], work: Path, log=_log) -> dict[str, Path]:
    """The checkpoint and every exported artifact of the suite (reused when already there)."""
    import torch

    from ..models import ModelMeta, build_model, save_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    spec = suite["model"]
    size = tuple(spec.get("size", (512, 1024)))
    ckpt = work / f"{spec['arch']}.pt"
    if not ckpt.exists():
        log(f"building {spec['arch']} with random weights (seed {spec.get('seed', 0)}) -> {ckpt}")
        torch.manual_seed(int(spec.get("seed", 0)))
        meta = ModelMeta.for_arch(spec["arch"], input_size=size, label_set=spec.get("label_set"))
        save_checkpoint(ckpt, build_model(spec["arch"], **meta.arch_args).eval(), meta)
    paths: dict[str, Path] = {"checkpoint": ckpt}
    calib = None
    arts = suite.get("artifacts") or {}
    if any(a.get("precision") == "int8" for a in arts.values()):
        c = suite.get("calib") or {}
        calib = work / "calib_synth"
        if not (calib / "leftImg8bit").is_dir():
            from ..data.synth import synthesize

            log(f"synthesising {c.get('images', 8)} calibration scenes -> {calib}")
            n = int(c.get("images", 8))
            synthesize(calib, n_train=n, n_val=n, size=tuple(c.get("size", size)), seed=int(c.get("seed", 1)))
    from ..export import export

    for name, a in arts.items():
        log(f"export {name}: {a}")
        result = export(ckpt, format=a["format"], precision=a.get("precision", "fp32"),
                        out=_target(work, spec, name, a),
                        calib_data=calib if a.get("precision") == "int8" else None,
                        verify=bool(a.get("verify", False)), log=lambda *_: None,
                        **(a.get("options") or {})) if not _exists(work, spec, name, a) else None
        paths[name] = Path(result.path) if result is not None else _target(work, spec, name, a)
    return paths


def _target(work: Path, spec: dict, name: str, a: dict) -> Path:
    """Where artifact ``name`` of the suite goes: its ``out``, else ``<arch>_<name><format's suffix>``."""
    from ..formats import get

    return work / a.get("out", f"{spec['arch']}_{name}{get(a['format']).suffix}")


def _exists(work: Path, spec: dict, name: str, a: dict) -> bool:
    return _target(work, spec, name, a).exists()


def judge(report: dict, suite: dict) -> list[dict[str, Any]]:
    """Each target: the measured ratio of ``row`` to ``vs`` (default the reference) and if met."""
    by = {r["model"]: r for r in report["results"]}
    out = []
    for t in suite.get("targets") or []:
        row, vs = by.get(t["row"]), by.get(t.get("vs", suite.get("reference")))
        ratio = None
        if row and vs and row["status"] == "ok" and vs["status"] == "ok":
            ratio = row["throughput_fps"] / vs["throughput_fps"]
        out.append({"row": t["row"], "vs": t.get("vs", suite.get("reference")), "min_ratio": t["min_ratio"],
                    "ratio": ratio, "met": None if ratio is None else ratio >= t["min_ratio"]})
    return out


def _default_results(suite_file: Path) -> Path:
    """``results/`` next to the suite in a checkout (bench/results); ``./bench-results`` for a
    suite shipped inside an installed package, where nothing may be written."""
    from ..resources import is_shipped

    return Path("bench-results") if is_shipped(suite_file) else suite_file.parent / "results"


def run_suite(path: str | os.PathLike, *, work: str | os.PathLike | None = None,
              results: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Prepare, measure and record a suite; returns the bench JSON (+ ``targets``, ``suite``)."""
    from .benchmark import benchmark, format_markdown, plot

    suite = load_suite(path)
    work = Path(os.path.expanduser(work or suite.get("work") or f"~/.cache/cityseg/bench/{suite['name']}"))
    prefix = Path(results or suite.get("results") or _default_results(Path(suite["_file"])) / suite["name"])
    paths = prepare(suite, work)
    s = suite.get("settings") or {}
    entries = []
    for row in suite["rows"]:
        art = row.get("artifact", "checkpoint")
        if art not in paths:
            raise CitysegError(f"{suite['_file']}: row {short_repr(row.get('label'))} names unknown artifact {short_repr(art)}")
        entries.append({"model": str(paths[art]), "label": row.get("label"), "precision": row.get("precision"),
                        "runner": row.get("runner"), "options": row.get("options")})
    report = benchmark(entries, device=s.get("device", "cpu"), batches=[int(s.get("batch", 1))],
                       sizes=[tuple(s["size"])] if s.get("size") else [None],
                       warmup=int(s.get("warmup", 1)), iters=s.get("iters", 5), duration=s.get("duration"),
                       threads=s.get("threads"), reference=suite.get("reference"),
                       sgemm=bool(s.get("sgemm", True)), progress=progress, title=suite.get("title"))
    report["suite"] = {k: v for k, v in suite.items() if not k.startswith("_")}
    report["targets"] = judge(report, suite)
    md = format_markdown(report)
    if report["targets"]:
        md += "\n| target | vs | needed | measured | met |\n| --- | --- | ---: | ---: | --- |\n"
        for t in report["targets"]:
            measured = "–" if t["ratio"] is None else f"{t['ratio']:.2f}x"
            md += (f"| {t['row']} | {t['vs']} | {t['min_ratio']:.2f}x | {measured} | "
                   f"{'–' if t['met'] is None else ('yes' if t['met'] else 'no')} |\n")
    if suite.get("notes"):
        md += "\n" + str(suite["notes"]).strip() + "\n"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(f"{prefix}.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text_atomic(f"{prefix}.md", md)
    plot(report, f"{prefix}.png")
    report["markdown"] = md
    return report
