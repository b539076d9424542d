"""``segment SOURCE... --engine ray``: many videos or streams at once, one Ray actor per stream.

Each actor loads the model once and runs the single-process pipeline
(:func:`cityseg_deploy.video.pipeline.run_source`) on its stream, so every output is what
``cityseg segment`` writes for that source alone.  Outputs appear whole or not at all: the video
is renamed into place when it is closed (as single-process), and the label folder is written
under a temporary name and renamed when the stream ends — so a stream whose outputs exist is
complete and a re-run skips it, and an actor killed mid-stream (replaced by Ray, its stream
retried) leaves no half-written output behind.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import CitysegError
from .ray_batch import RayOptions


class StreamWorker:
    """One loaded Segmenter in one actor; ``run`` segments one whole stream."""

    def __init__(self, model: str, device: str = "cpu", threads: int | None = None):
        from .. import runtime

        self.segmenter = runtime.load(model, device=device, threads=threads)

    def label_lut(self):
        from ..labels import get_label_set

        return get_label_set(self.segmenter.meta.label_set).to_label_id_lut()

    def run(self, source, out: str | None, labels_dir: str | None, opts: dict[str, Any]) -> dict:
        from ..fileio import atomic_path
        from ..video import PipelineOptions
        from ..video.pipeline import run_source

        options = dict(opts)
        if options.pop("label_format", "trainIds") == "labelIds":
            options["label_lut"] = self.label_lut()
        popts = PipelineOptions(**options)
        source.open()
        if labels_dir is None:
            res = run_source(source, self.segmenter, out=out, labels_dir=None, opts=popts)
        else:
            with atomic_path(labels_dir, is_dir=True) as tmp:
                res = run_source(source, self.segmenter, out=out, labels_dir=tmp, opts=popts)
            res.labels_dir = Path(labels_dir)
        doc = asdict(res)
        doc.update(out=str(res.out) if res.out else None, labels_dir=labels_dir, pid=os.getpid())
        return doc


def _complete(out: Path | None, labels_dir: Path | None) -> bool:
    return all(p is None or p.exists() for p in (out, labels_dir))


def _remove_stale(paths: list[Path | None]) -> None:
    """Temporaries a killed actor left: ``.<video-stem>.*.partial<suffix>`` and ``.<dir>.*.tmp``."""
    for p in paths:
        if p is None or not p.parent.is_dir():
            continue
        for tmp in list(p.parent.glob(f".{p.stem}.*.partial{p.suffix}")) + list(p.parent.glob(f".{p.name}.*.tmp")):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def ray_segment(specs: list[str], model: str, ray_opts: RayOptions, *, out: str | None,
                labels_dir: str | None, pipeline: dict[str, Any], reconnect: int = 5,
                device: str = "cpu", overwrite: bool = False, progress: bool = True,
                echo=lambda s: None) -> tuple[list[dict], int]:
    """Segment every source of ``specs`` (each a SOURCE or a list file), one actor per stream.

    Returns (one summary dict per stream that ran, count skipped because complete).
    """
    from ..artifacts import read_artifact_meta
    from ..video import sources_of
    from ..video.pipeline import output_paths
    from .cluster import cluster_cpus, connect, job_progress
    from .ray_batch import _path_of

    ray_opts.validate()
    sources = sources_of(specs, reconnect=reconnect)  # the same output names as single-process
    read_artifact_meta(_path_of(model))  # a bad model fails here, before any actor starts
    paths = output_paths(sources, out, labels_dir)
    for o, _ in paths:
        if o is not None:
            from ..video.writers import VideoSink

            VideoSink(o, 25.0, fourcc=pipeline.get("fourcc"))  # a bad --out suffix fails here
    _remove_stale([p for pair in paths for p in pair])
    todo = [(s, o, ld) for s, (o, ld) in zip(sources, paths) if overwrite or not _complete(o, ld)]
    skipped = len(sources) - len(todo)
    if not todo:
        return [], skipped
    ray = connect(ray_opts.address, num_cpus=ray_opts.num_cpus)
    width = min(len(todo), ray_opts.actors if ray_opts.actors > 1 else len(todo))
    cpus = cluster_cpus()
    threads = ray_opts.threads or max(1, int(cpus // width))
    if ray_opts.gpus_per_actor > 0 and device == "cpu":
        device = "cuda"
    worker = ray.remote(StreamWorker).options(
        num_cpus=max(0.01, cpus / width), num_gpus=ray_opts.gpus_per_actor or None,
        max_restarts=-1, max_task_retries=-1)
    actors = [worker.remote(str(model), device, threads) for _ in range(width)]
    results: list[dict] = []
    queue, idle = list(todo), list(actors)
    running: dict[Any, Any] = {}
    try:
        with job_progress(len(todo), f"segment {len(todo)} streams (ray)", progress,
                          unit="stream") as bar:
            while queue or running:
                while queue and idle:
                    src, o, ld = queue.pop(0)
                    actor = idle.pop()
                    echo(f"stream {len(results) + len(running) + 1}/{len(todo)}: {src.name}")
                    running[actor.run.remote(src, str(o) if o else None, str(ld) if ld else None,
                                             pipeline)] = actor
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    idle.append(running.pop(ref))
                    results.append(ray.get(ref))
                    bar.update(1)
    finally:
        for a in actors:
            ray.kill(a)
        _remove_stale([p for pair in paths for p in pair])
    if not results:
        raise CitysegError("segment --engine ray: no stream ran")
    return results, skipped
