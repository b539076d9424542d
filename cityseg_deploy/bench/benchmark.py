"""``cityseg bench``: per-stage latency, throughput and memory of artifacts, side by side.

A row per artifact x batch x size.  Each row loads the artifact through the same
:func:`cityseg_deploy.runtime.load` as every other stage, warms up, then times whole
``Segmenter.run`` calls with a :class:`~.timing.StageTimer` (CUDA events on a GPU): preprocess,
host→device, compute, device→host (incl. argmax), postprocess and end to end.  A backend that
fails (missing library, unsupported precision, static shape) becomes a ``failed`` row with the
reason and the sweep goes on.  Throughputs are compared as ratios to a reference row measured in
the same run, because the machines change.
"""
from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import CitysegError, first_line
from ..fileio import path_mb, write_text_atomic
from ..runtime.base import describe_runner
from ..runtime.openvino_backend import PlainOpenVINO
from ..system.machine import load_average, machine_info, machine_line
from ..system.threads import torch_threads
from ..system.timing import StageTimer

STAGES = ("preprocess", "h2d", "compute", "d2h", "postprocess", "end_to_end")


# ---- host memory without psutil: /proc/self/status VmRSS / VmHWM ---------------------------
def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_mb() -> float | None:
    """Resident memory in MiB (2^20 bytes: the kernel counts KiB); the bench JSON keeps the
    ``*_mb`` keys, the Markdown table says MiB."""
    kb = _proc_status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def peak_rss_mb() -> float | None:
    """Peak resident memory (VmHWM) in MiB, as :func:`rss_mb`."""
    kb = _proc_status_kb("VmHWM")
    return kb / 1024 if kb is not None else None


def model_flops(meta, size: Sequence[int]) -> int | None:
    """FLOPs of one forward at ``size`` (counted on the meta device; None when not countable)."""
    try:
        import torch

        from ..models.flops import count_flops
        from ..models.registry import build_model

        with torch.device("meta"):
            net = build_model(meta.arch, **meta.arch_args)
        return count_flops(net, size)
    except Exception:
        return None


def _images(batch: int, size: Sequence[int], seed: int = 0) -> np.ndarray:
    """A batch of smooth random images (not pure noise: resizes and codecs behave normally)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = int(size[0]), int(size[1])
    small = rng.integers(0, 256, (batch, max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR) for im in small])


RUNNERS = {"segmenter": None, "plain_openvino": PlainOpenVINO}


def _load(spec: str, runner: str, *, device, precision, threads, size, options):
    from .. import runtime

    if runner in (None, "segmenter"):
        if size is not None:
            options = dict(options, size=tuple(size))
        return runtime.load(spec, device=device, precision=precision, threads=threads, **options)
    cls = RUNNERS.get(runner)
    if cls is None:
        raise CitysegError(f"runner {runner!r}: choose one of {', '.join(RUNNERS)}")
    path, spec_precision = runtime.parse_model_spec(spec)
    return cls(path, threads=threads, precision=precision or spec_precision, **options)


class _RowRun:
    """One bench row in three steps — load (:meth:`__init__`), :meth:`warm`, timed :meth:`step`
    calls, :meth:`finish` — so rows can be timed one after another or round-robin.

    Never raises for a failing backend: the row turns ``failed`` with the reason and the runner
    is closed.  ``torch_width`` is torch's pool as this runner set it at load: an onnxruntime or
    OpenVINO runner holds torch at 1 thread while open (system/threads.py), which would time a
    torch runner loaded before it at one thread; each step runs under its own runner's width.
    """

    def __init__(self, spec: str, *, device: str, batch: int, size: Sequence[int] | None,
                 threads: int | None, precision: str | None, runner: str | None,
                 label: str | None, options: dict | None) -> None:
        from ..runtime import parse_model_spec

        path, spec_precision = parse_model_spec(spec)
        self.row: dict[str, Any] = {
            "model": label or Path(path).name + (f"@{precision or spec_precision}" if (precision or spec_precision) else ""),
            "path": str(path), "backend": None, "precision": precision or spec_precision, "device": device,
            "batch": int(batch), "size": list(size) if size else None, "status": "failed", "error": None,
            "latency_ms": None, "throughput_fps": None, "peak_mem_mb": None, "file_mb": _artifact_mb(path),
        }
        self.seg = None
        self.out_of_memory = False  # beside the other rows: it may fit alone (bench_interleaved retries it so)
        self.cuda = str(device).startswith("cuda")
        self.timer = StageTimer(device if self.cuda else "cpu")
        self.count = 0
        try:
            import torch

            self.memory = _MemoryMark.now(self.cuda)
            self.seg = _load(spec, runner, device=device, precision=precision, threads=threads,
                             size=size, options=options or {})
            self.torch_width = torch.get_num_threads()
            self.row["backend"] = self.seg.backend
            self.row["precision"] = self.seg.precision
            self.row["detail"] = self.seg.describe()
            self.row["runner"] = describe_runner(self.row["detail"])  # bench's own runners too
            self.run_size = tuple(size) if size else tuple(self.seg.input_size)
            self.row["size"] = list(self.run_size)
            self.images = _images(int(batch), self.run_size)
        except Exception as exc:  # one failing backend must not abort the others
            self.out_of_memory = _out_of_memory(exc)
            self._fail(exc)

    @property
    def alive(self) -> bool:
        return self.seg is not None

    def _fail(self, exc: BaseException) -> None:
        message = first_line(exc, 300) if str(exc).strip() else ""
        self.row["error"] = message if isinstance(exc, CitysegError) else f"{type(exc).__name__}: {message}"
        self.close()

    def _guarded(self, fn) -> None:
        if not self.alive:
            return
        try:
            with torch_threads(self.torch_width):
                fn()
        except Exception as exc:
            self.out_of_memory = _out_of_memory(exc)  # a first run's activations may not fit either
            self._fail(exc)

    def warm(self, warmup: int) -> None:
        """Warm-up runs, then the memory this row's model added at peak (before any other row
        loads, so the figure is its own)."""
        def run() -> None:
            for _ in range(max(0, int(warmup))):
                _timed_run(self.seg, self.images, self.timer)
            self.row.update(self.memory.peaks())
            self.timer.reset()
        self._guarded(run)

    def step(self) -> None:
        def run() -> None:
            _timed_run(self.seg, self.images, self.timer)
            self.count += 1
        self._guarded(run)

    def finish(self) -> dict[str, Any]:
        """The row's figures (``ok``) from the timed steps; closes the runner."""
        if self.alive:
            try:
                summary = self.timer.summary()
                row = self.row
                row["latency_ms"] = summary["end_to_end"]
                row["stages"] = {k: summary[k] for k in STAGES if k in summary}
                row["iters"] = self.count
                row["throughput_fps"] = 1000.0 * row["batch"] / row["latency_ms"]["mean"]
                row.update(_flops_fields(self.seg.meta, self.run_size, row["batch"], summary))
                row["status"] = "ok"
            except Exception as exc:
                self._fail(exc)
        self.close()
        return self.row

    def close(self) -> None:
        _close_quietly(self.seg)
        self.seg = None
        gc.collect()


def bench_one(spec: str, *, device: str = "cpu", batch: int = 1, size: Sequence[int] | None = None,
              warmup: int = 3, iters: int | None = 20, duration: float | None = None,
              threads: int | None = None, precision: str | None = None, runner: str | None = None,
              label: str | None = None, options: dict | None = None) -> dict[str, Any]:
    """One row of the bench JSON, timed on its own; never raises for a failing backend (status
    ``failed``).  ``iters`` whole runs, or as many as fit in ``duration`` s (at least 2)."""
    run = _RowRun(spec, device=device, batch=batch, size=size, threads=threads, precision=precision,
                  runner=runner, label=label, options=options)
    run.warm(warmup)
    t_end = time.perf_counter() + duration if duration else None
    while run.alive:
        run.step()
        if t_end is not None:
            if time.perf_counter() >= t_end and run.count >= 2:
                break
        elif run.count >= max(1, int(iters or 1)):
            break
    return run.finish()


def bench_interleaved(entries: Sequence[dict], *, device: str = "cpu", batch: int = 1,
                      size: Sequence[int] | None = None, warmup: int = 3, iters: int = 20,
                      threads: int | None = None, precision: str | None = None,
                      on_round: Callable[[int, int], None] | None = None) -> list[dict]:
    """Rows for ``entries`` timed round-robin: every runner loaded and warmed, then ``iters``
    rounds of one run each, in an order that rotates every round; rows in ``entries``' order.

    Why: timed one block after another, runners see different background loads on a shared
    machine (a ratio between two rows then measures the load; bench/results/shared_load.md);
    round-robin puts each round of every runner under the same load."""
    runs: list[_RowRun] = []
    try:
        for e in entries:  # each warmed as it loads: its memory figure is its own
            runs.append(_RowRun(str(e["model"]), device=device, batch=batch, size=size,
                                threads=threads, precision=e.get("precision", precision),
                                runner=e.get("runner"), label=e.get("label"), options=e.get("options")))
            runs[-1].warm(warmup)
        rounds = max(1, int(iters))
        for r in range(rounds):
            k = r % len(runs)
            for run in runs[k:] + runs[:k]:
                run.step()
            if on_round is not None:  # (rounds done, rounds): a progress bar's postfix
                on_round(r + 1, rounds)
    finally:  # closed last-loaded first: each runner restores the thread count it found
        rows = [run.finish() for run in reversed(runs)][::-1]
    for row in rows:
        row["timing"] = "interleaved"
    for i, (e, run) in enumerate(zip(entries, runs)):
        if run.out_of_memory:  # did not fit beside the others: timed alone, and it says so
            rows[i] = bench_one(str(e["model"]), device=device, batch=batch, size=size, warmup=warmup,
                                iters=iters, threads=threads, precision=e.get("precision", precision),
                                runner=e.get("runner"), label=e.get("label"), options=e.get("options"))
            rows[i]["timing"] = "alone (out of memory beside the other rows)"
    return rows


def _out_of_memory(exc: BaseException) -> bool:
    """Whether a runner failed for memory (host or CUDA) rather than for the artifact itself."""
    if isinstance(exc, MemoryError):
        return True
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


def _artifact_mb(path: str) -> float | None:
    """The size of the artifact that runs: a deploy folder's chosen one, not the whole folder."""
    from ..deploy import artifact_of

    try:
        return path_mb(artifact_of(path))
    except CitysegError:
        return None  # a damaged deploy record: the row fails at load and says why


@dataclass(frozen=True)
class _MemoryMark:
    """Memory in use when a row starts, so the row reports what its model added at peak."""
    host_mb: float | None
    device_bytes: int | None  # None unless running on an available CUDA device

    @classmethod
    def now(cls, cuda: bool) -> _MemoryMark:
        import torch

        gc.collect()
        reset_peak_rss()
        host_mb = rss_mb()
        device_bytes = None
        if cuda and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            device_bytes = torch.cuda.memory_allocated()
        return cls(host_mb, device_bytes)

    def peaks(self) -> dict[str, float | None]:
        """``host_peak_rss_mb``, ``device_peak_mb`` (CUDA) and ``peak_mem_mb`` (device if any)."""
        host_peak = peak_rss_mb()
        host = round(host_peak - self.host_mb, 1) if host_peak and self.host_mb else None
        peaks = {"host_peak_rss_mb": host, "peak_mem_mb": host}
        if self.device_bytes is not None:
            import torch

            peaks["device_peak_mb"] = round((torch.cuda.max_memory_allocated() - self.device_bytes) / 2**20, 1)
            peaks["peak_mem_mb"] = peaks["device_peak_mb"]
        return peaks


def _timed_run(seg, images: np.ndarray, timer: StageTimer) -> None:
    timer.begin()
    seg.run(images, timer=timer)
    timer.step()


def _flops_fields(meta, size: Sequence[int], batch: int, summary: dict) -> dict[str, float]:
    """``gflops`` per batch and the rates it gives end to end and in compute (empty if not countable)."""
    flops = model_flops(meta, size)
    if not flops:
        return {}
    gflops = flops * batch / 1e9
    compute = summary.get("compute", summary["end_to_end"])["median"]
    return {"gflops": gflops, "gflops_per_s": gflops / (summary["end_to_end"]["median"] / 1e3),
            "compute_gflops_per_s": gflops / (compute / 1e3)}


def _close_quietly(seg) -> None:
    if seg is not None:
        try:
            seg.close()
        except Exception:
            pass


def _parse_entry(entry) -> dict[str, Any]:
    if isinstance(entry, dict):
        return dict(entry)
    return {"model": str(entry)}


def add_ratios(results: list[dict], reference: str | None = None, sgemm: float | None = None) -> None:
    """``ratio`` = throughput / the reference row's (same batch, size and group); ``sgemm_fraction``.

    Rows may carry a ``group`` (the quickstart puts each network's artifacts in one): a ratio then
    refers to the first row of its own group, because a speed-up of network B's ONNX file over
    network A's PyTorch model says nothing about either export.
    """
    ok = [r for r in results if r["status"] == "ok"]
    for r in results:
        ref = None
        same = [o for o in ok if o["batch"] == r["batch"] and o["size"] == r["size"]
                and o.get("group") == r.get("group")]
        if reference is not None:
            ref = next((o for o in same if o["model"] == reference), None)
        elif same:
            ref = same[0]
        r["reference"] = ref["model"] if ref else None
        r["ratio"] = (r["throughput_fps"] / ref["throughput_fps"]
                      if ref and r["status"] == "ok" else None)
        if sgemm and r.get("gflops_per_s"):
            r["sgemm_fraction"] = r["gflops_per_s"] / sgemm


def benchmark(models: Sequence, *, device: str = "cpu", batches: Sequence[int] = (1,),
              sizes: Sequence[Sequence[int] | None] = (None,), warmup: int = 3,
              iters: int | None = 20, duration: float | None = None, threads: int | None = None,
              precision: str | None = None, reference: str | None = None,
              sgemm: bool = False, progress: bool = True, json_path=None, md_path=None,
              plot_path=None, title: str | None = None, interleave: bool = True) -> dict:
    """Measure every model (path, ``path@precision`` or a dict with ``model``, ``label``,
    ``precision``, ``runner``, ``options``, ``group``, ``measured_row``: a row :func:`bench_one`
    already measured with these settings, used as it is) at every batch x size; returns the bench
    JSON dict.  Ratios refer to ``reference`` or to the first row of the same ``group``.

    ``interleave`` (with ``iters``, not ``duration``): the rows of one group and setting are
    timed round-robin (:func:`bench_interleaved`), so their ratios hold on a shared machine;
    off, one row after another, each alone in memory."""
    with torch_threads(threads):  # set for the run, put back after it (system/threads.py)
        return _benchmark(models, device=device, batches=batches, sizes=sizes, warmup=warmup,
                          iters=iters, duration=duration, threads=threads, precision=precision,
                          reference=reference, sgemm=sgemm, progress=progress, json_path=json_path,
                          md_path=md_path, plot_path=plot_path, title=title, interleave=interleave)


def _timing_groups(entries: Sequence[dict]) -> list[list[int]]:
    """Entry indices timed together: one list per ``group`` (the quickstart's networks), in first-
    seen order; entries without a group form one.  Ratios are taken within a group, so rounds
    need only span it — and only one group's runners are loaded at a time."""
    groups: dict[Any, list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault(e.get("group"), []).append(i)
    return list(groups.values())


def _benchmark(models, *, device, batches, sizes, warmup, iters, duration, threads, precision,
               reference, sgemm, progress, json_path, md_path, plot_path, title, interleave) -> dict:
    machine = machine_info(threads)
    entries = [_parse_entry(m) for m in models]
    if not entries:
        raise CitysegError("bench needs at least one MODEL")
    settings = [(b, s) for s in (sizes or (None,)) for b in (batches or (1,))]
    total = len(entries) * len(settings)
    results = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="bench", unit="row", dynamic_ncols=True)
    rows: dict[tuple[int, int], dict] = {}
    for k, (b, s) in enumerate(settings):
        for group in _timing_groups(entries):
            timed = [i for i in group if not (entries[i].get("measured_row") is not None and len(settings) == 1)]
            for i in group:
                if i not in timed:
                    # measured already, in this process, with these settings (--backend auto's
                    # winner): the row is that measurement, not a second one that could disagree
                    measured = entries[i]["measured_row"]
                    rows[i, k] = dict(measured, model=entries[i].get("label") or measured["model"])
            label = ", ".join(entries[i].get("label") or Path(str(entries[i]["model"])).name
                              for i in timed)[:60] + f" b{b}"
            if bar is not None and timed:
                bar.set_postfix_str(label)
            if interleave and duration is None and len(timed) > 1:
                def show(done: int, total: int, label: str = label) -> None:
                    if bar is not None:
                        bar.set_postfix_str(f"{label} round {done}/{total}")

                got = bench_interleaved([entries[i] for i in timed], device=device, batch=b, size=s,
                                        warmup=warmup, iters=int(iters or 20), threads=threads,
                                        precision=precision, on_round=show)
                rows.update({(i, k): row for i, row in zip(timed, got)})
            else:
                for i in timed:
                    e = entries[i]
                    rows[i, k] = bench_one(str(e["model"]), device=device, batch=b, size=s,
                                           warmup=warmup, iters=iters, duration=duration,
                                           threads=threads, precision=e.get("precision", precision),
                                           runner=e.get("runner"), label=e.get("label"),
                                           options=e.get("options"))
            if bar is not None:
                bar.update(len(group))
    for i, entry in enumerate(entries):
        for k in range(len(settings)):
            row = rows[i, k]
            if entry.get("group") is not None:
                row["group"] = str(entry["group"])
            if entry.get("auto_measured_ms") is not None:  # auto's cached figure, beside this one
                row.update(auto_measured_ms=entry["auto_measured_ms"], auto_cached=True)
            results.append(row)
    if bar is not None:
        bar.close()
    sgemm_rate = None
    if sgemm:
        from .gemm import sgemm_gflops

        sgemm_rate = sgemm_gflops(device="cuda" if str(device).startswith("cuda") else "cpu",
                                  threads=threads)
        machine["sgemm_gflops"] = sgemm_rate
    machine["load_average_end"] = load_average()
    add_ratios(results, reference, sgemm_rate)
    timing = "interleaved" if interleave and duration is None else "sequential"
    report = {"machine": machine, "settings": {"device": device, "warmup": warmup, "iters": iters,
                                               "duration": duration, "threads": threads,
                                               "timing": timing},
              "results": results}
    if title:
        report["title"] = title
    if json_path:
        write_text_atomic(json_path, json.dumps(report, indent=2, default=str) + "\n")
    if md_path:
        write_text_atomic(md_path, format_markdown(report))
    if plot_path:
        plot(report, plot_path)
    return report


def _ms(row, key="mean", stage="end_to_end") -> str:
    st = (row.get("stages") or {}).get(stage) if stage != "end_to_end" else row.get("latency_ms")
    return f"{st[key]:.1f}" if st else "–"


def format_markdown(report: dict) -> str:
    """One table, a row per artifact x setting, ranked within the run by the ratio column."""
    m = report["machine"]
    lines = []
    if report.get("title"):
        lines += [f"# {report['title']}", ""]
    lines += [f"Machine: {machine_line(m)}" + (f"; sgemm {m['sgemm_gflops']:.0f} GFLOP/s"
                                                if m.get("sgemm_gflops") else ""), ""]
    timing = (report.get("settings") or {}).get("timing")
    if timing and len(report["results"]) > 1:
        lines += [("Timing: interleaved rounds (one run of each row per round, rotating order), so "
                   "every row saw the same load." if timing == "interleaved" else
                   "Timing: one row after another."), ""]
    has_sgemm = any(r.get("sgemm_fraction") for r in report["results"])
    head = ["model", "backend", "precision", "device", "batch", "size", "status", "mean ms", "p50 ms",
            "p99 ms", "pre ms", "compute ms", "d2h ms", "fps", "x ref", "GFLOP/s"]
    if has_sgemm:
        head.append("% sgemm")
    head += ["peak MiB", "file MB", "note"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 7 + ["---:"] * (len(head) - 8) + ["---"]) + "|"]
    for r in report["results"]:
        ok = r["status"] == "ok"
        cells = [r["model"], r["backend"] or "–", r["precision"] or "–", r["device"], str(r["batch"]),
                 "x".join(map(str, r["size"])) if r["size"] else "–", r["status"],
                 _ms(r), _ms(r, "median"), _ms(r, "p99"), _ms(r, "mean", "preprocess"),
                 _ms(r, "mean", "compute"), _ms(r, "mean", "d2h"),
                 f"{r['throughput_fps']:.2f}" if ok else "–",
                 f"{r['ratio']:.2f}x" if r.get("ratio") else "–",
                 f"{r['gflops_per_s']:.0f}" if r.get("gflops_per_s") else "–"]
        if has_sgemm:
            cells.append(f"{100 * r['sgemm_fraction']:.0f}%" if r.get("sgemm_fraction") else "–")
        cells += [f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") is not None else "–",
                  f"{r['file_mb']:.1f}" if r.get("file_mb") is not None else "–",
                  (r.get("error") or _row_note(r)).replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    refs = list(dict.fromkeys(r["reference"] for r in report["results"] if r.get("reference")))
    if len(refs) == 1:
        lines += ["", f"x ref = throughput / throughput of `{refs[0]}` at the same batch and size, same run."]
    elif refs:
        lines += ["", "x ref = throughput / throughput of the first row of the same network "
                  f"({', '.join(f'`{x}`' for x in refs)}) at the same batch and size, same run."]
    return "\n".join(lines) + "\n"


def _row_note(row: dict) -> str:
    """What the runner changed about the artifact it timed, said next to the figure."""
    detail = row.get("detail") or {}
    notes = ["int8 reshaped for onnxruntime at load"] if detail.get("int8_rewrite") else []
    if str(row.get("timing", "")).startswith("alone"):
        notes.append("timed alone: out of memory beside the other rows")
    return "; ".join(notes)


def plot(report: dict, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Horizontal bars of throughput per row (failed rows drawn empty and marked)."""
    from ..metrics.plots import pyplot, save_figure

    plt = pyplot()
    rows = report["results"]
    labels = [f"{r['model']} b{r['batch']} {'x'.join(map(str, r['size'])) if r['size'] else ''}" for r in rows]
    values = [r["throughput_fps"] if r["status"] == "ok" else 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    y = np.arange(len(rows))
    bars = ax.barh(y, values, color=["tab:blue" if r["status"] == "ok" else "tab:gray" for r in rows])
    for bar, r in zip(bars, rows):
        text = (f"{r['throughput_fps']:.2f} fps" + (f" ({r['ratio']:.2f}x)" if r.get("ratio") else "")
                if r["status"] == "ok" else "failed")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + text, va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("throughput (images/s)")
    ax.set_title((report.get("title") or "cityseg bench") + f"\n{report['machine']['cpu']}", fontsize=9)
    ax.set_xlim(0, max(values + [1e-9]) * 1.35)
    return save_figure(fig, path, dpi)
