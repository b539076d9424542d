"""``--engine ray`` for predict, eval and check: a split segmented by a pool of Ray actors.

How a job runs: the driver lists the split's images (and skips outputs already complete),
resolves every path to an absolute one, puts the model's bytes in Ray's object store
(:mod:`.shipping`), sizes the actors from the nodes and checks they can be placed
(:mod:`.placement`); the rows go in batches of ``--batch`` to a pool of actors (:mod:`.pool`), each
actor holding one Segmenter loaded with :func:`cityseg_deploy.runtime.load` from its own copy of
the model.  An actor reads and decodes its batch (images travel by absolute path), runs it, writes
``predict``'s PNGs itself (atomic writes, deterministic names) and returns per-image confusion
matrices — integer counts, so their sum, and with it Tables 1 and 2, equals the single-process
run's exactly.

Why it survives a killed actor: Ray restarts the pool's actors (``max_restarts=-1``) and retries
the batch that was in flight (``max_task_retries=-1``); a retried batch rewrites the same names with
the same bytes through a temporary file and a rename, so every output ends written exactly once,
and temporaries a killed actor left behind are removed when the job ends.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import CitysegError


@dataclass
class RayOptions:
    """Where and how wide a job runs (the CLI's ``--address --actors --gpus-per-actor --batch``)."""

    address: str | None = None
    actors: int | None = None           # default: as many as the nodes hold (placement.plan)
    gpus_per_actor: float = 0.0
    batch: int = 1
    threads: int | None = None          # per actor; default: its CPUs (1)
    num_cpus: int | None = None         # size of a private local cluster (default: all)
    cpus_per_actor: float | None = None  # default: its threads
    verbose: bool = False               # Ray's own logs and reports

    def validate(self) -> "RayOptions":
        if self.actors is not None and self.actors < 1:
            raise CitysegError(f"--actors {self.actors}: must be at least 1")
        if self.gpus_per_actor < 0:
            raise CitysegError(f"--gpus-per-actor {self.gpus_per_actor}: must be >= 0")
        if self.batch < 1:
            raise CitysegError(f"--batch {self.batch}: must be at least 1")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise CitysegError(f"--cpus-per-actor {self.cpus_per_actor:g}: must be > 0")
        return self


# ---- the actor ------------------------------------------------------------------------------
class SegmentWorker:
    """One loaded Segmenter in one Ray actor; ``__call__`` takes a batch of rows as columns."""

    def __init__(self, model: dict, *, device: str = "cpu", precision: str | None = None,
                 threads: int | None = None, label_set: str | None = None, fmt: str | None = None,
                 want_labels: bool = False, options: dict[str, Any] | None = None,
                 out_marker: str | None = None):
        import ray

        from ..evaluation.evaluate import label_set_of_model
        from ..evaluation.predict import output_label_set
        from .shipping import check_out_visible, load_shipped

        if out_marker:
            check_out_visible(out_marker)
        # the driver's bytes, loaded from this node's disk
        self.segmenter = load_shipped(ray.get(model["ref"]), device=device, precision=precision,
                                      threads=threads, **(options or {}))
        meta, where = self.segmenter.meta, str(self.segmenter.path)
        # predict renders with what single-process predict uses (any label set's palette)
        self.labels = (output_label_set(meta, fmt, where=where) if fmt and label_set is None
                       else label_set_of_model(meta, label_set, where=where))
        self.fmt = fmt
        self.want_labels = want_labels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..data.cityscapes import Sample, load_sample
        from ..evaluation.predict import render
        from ..fileio import read_rgb, write_png
        from ..metrics import ConfusionMatrix

        n = len(batch["stem"])
        images, truths = [], []
        for i in range(n):
            if batch["label"][i]:
                sample = Sample(Path(batch["image"][i]), Path(batch["label"][i]), str(batch["stem"][i]),
                                str(batch["city"][i]), str(batch["label_kind"][i]))
                image, truth = load_sample(sample, self.labels)
            else:
                image, truth = read_rgb(batch["image"][i]), None
            images.append(image)
            truths.append(truth)
        want = bool(np.any(batch["want_logits"])) and self.segmenter.outputs_logits
        preds, logits, _ = self.segmenter.run(images, want_logits=want)
        k = getattr(self.labels, "num_classes", self.segmenter.meta.num_classes)
        confusion = np.zeros((n, k * k), dtype=np.int64)
        pngs, logit_bytes = [], []
        for i, (image, truth, pred) in enumerate(zip(images, truths, preds)):
            if truth is not None:
                cm = ConfusionMatrix(k)
                cm.update(pred, truth)
                confusion[i] = cm.numpy().reshape(-1)
            if batch["out"][i]:
                array, rgb = render(pred, image, self.labels, self.fmt)
                write_png(batch["out"][i], array, rgb=rgb)
            pngs.append(_encode_png(pred) if self.want_labels else b"")
            logit_bytes.append(_npy_bytes(logits[i]) if (logits is not None and batch["want_logits"][i])
                               else b"")
        seg = self.segmenter
        return {"index": np.asarray(batch["index"], dtype=np.int64), "stem": np.asarray(batch["stem"]),
                "confusion": confusion, "has_truth": np.array([t is not None for t in truths]),
                "labels_png": _object_array(pngs), "logits": _object_array(logit_bytes),
                "backend": np.array([seg.backend] * n), "precision": np.array([seg.precision] * n),
                "device": np.array([seg.device] * n), "pid": np.full(n, os.getpid(), dtype=np.int64)}


def _object_array(items: list[bytes]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _encode_png(labels: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", labels)
    if not ok:  # pragma: no cover - a uint8 HxW array always encodes
        raise CitysegError("could not encode a label map as PNG")
    return buf.tobytes()


def _decode_png(data: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _npy_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# ---- the driver -----------------------------------------------------------------------------
def run_rows(model: str, rows: list[dict[str, Any]], opts: RayOptions, *, device: str = "cpu",
             precision: str | None = None, label_set: str | None = None, fmt: str | None = None,
             want_labels: bool = False, progress: bool = True, desc: str = "ray",
             options: dict[str, Any] | None = None,
             out: Path | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Stream ``rows`` through a pool of :class:`SegmentWorker` actors; yield result batches.

    ``rows`` hold absolute paths; the model is shipped as bytes; ``out`` (predict's folder) is
    checked to be visible from every actor.  One progress bar (rows done).  A CitysegError raised in an actor comes out here as the same one-line error.
    """
    from . import placement, pool
    from .cluster import connect, job_progress
    from .shipping import out_marker, ship_model

    opts.validate()
    if not rows:
        return
    shipped = ship_model(model)  # a missing/unreadable model fails before any cluster starts
    ray = connect(opts.address, num_cpus=opts.num_cpus, verbose=opts.verbose)
    nodes = placement.nodes_of(ray)
    shape = placement.plan(nodes, work=math.ceil(len(rows) / opts.batch), actors=opts.actors,
                           threads=opts.threads, cpus_per_actor=opts.cpus_per_actor,
                           gpus_per_actor=opts.gpus_per_actor)
    placement.wait_placeable(ray, shape, nodes)
    if opts.gpus_per_actor > 0 and device == "cpu":
        device = "cuda"
    marker = out_marker(out) if out is not None else None
    actors: list[Any] = []
    # held here for the whole job: a restarted actor runs its constructor again and fetches it
    model_ref = ray.put(shipped)
    try:
        actors = pool.create_actors(
            ray, SegmentWorker, shape.actors, cpus=shape.cpus, gpus=shape.gpus,
            args=({"ref": model_ref},),
            kwargs={"device": device, "precision": precision, "threads": shape.threads,
                    "label_set": label_set, "fmt": fmt, "want_labels": want_labels,
                    "options": options or {}, "out_marker": str(marker) if marker else None})
        chunks = (_columns(rows[i:i + opts.batch]) for i in range(0, len(rows), opts.batch))
        with job_progress(len(rows), desc, progress, unit="img", verbose=opts.verbose) as bar:
            for res in pool.run(ray, actors, chunks, lambda actor, chunk: actor.__call__.remote(chunk)):
                bar.update(len(res["index"]))
                yield res
    finally:
        pool.kill(ray, actors)
        del model_ref
        if marker is not None:
            marker.unlink(missing_ok=True)


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """A batch of rows as the columns ``SegmentWorker.__call__`` reads."""
    return {key: np.asarray([r[key] for r in rows]) for key in rows[0]}


def _sample_rows(samples, *, outs: list[str] | None = None,
                 want_logits: Callable[[int], bool] | None = None) -> list[dict[str, Any]]:
    rows = []
    for index, s in enumerate(samples):
        rows.append({"index": index, "image": str(s.image), "label": str(s.label), "label_kind": s.label_kind,
                     "stem": s.stem, "city": s.city, "out": outs[index] if outs else "",
                     "want_logits": bool(want_logits(index)) if want_logits else False})
    return rows


def remove_stale_temporaries(paths: list[Path]) -> int:
    """Delete the ``.<name>.*.tmp`` files an actor killed mid-write left next to ``paths``."""
    removed = 0
    by_folder: dict[Path, set[str]] = {}
    for p in paths:
        by_folder.setdefault(p.parent, set()).add(p.name)
    for folder, names in by_folder.items():
        if not folder.is_dir():
            continue
        for tmp in folder.glob(".*.tmp"):
            base = tmp.name[1:].rsplit(".", 2)[0]
            if base in names:
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


# ---- predict --------------------------------------------------------------------------------
def ray_predict(model: str, data_root: str | os.PathLike, out: str | os.PathLike, opts: RayOptions, *,
                split: str = "val", fmt: str = "labelIds", device: str = "cpu",
                precision: str | None = None, overwrite: bool = False, progress: bool = True,
                layout: str = "flat", **options: Any) -> dict:
    """``predict --engine ray``: the files single-process ``predict`` writes, written by actors.

    Returns ``{"written", "skipped", "out", "format", "metrics"}``; ``metrics`` cover the images
    segmented in this run (None when every output was already complete).
    """
    from ..artifacts import read_artifact_meta
    from ..data.cityscapes import find_samples
    from ..evaluation.evaluate import label_set_of_model
    from ..evaluation.predict import FORMATS, LAYOUTS, check_flat_names
    from ..metrics import ConfusionMatrix
    from .shipping import absolute

    if fmt not in FORMATS:
        raise CitysegError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if layout not in LAYOUTS:
        raise CitysegError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    model = _absolute_spec(model)
    meta, _ = read_artifact_meta(_path_of(model))
    labels = label_set_of_model(meta, where=str(model))
    samples = find_samples(absolute(data_root), split)
    if layout == "flat":  # what single-process predict refuses, refused here (before any work)
        check_flat_names(samples)
    out = Path(absolute(out))
    out.mkdir(parents=True, exist_ok=True)
    targets = [(out / s.city if layout == "cities" else out) / f"{s.stem}_leftImg8bit.png"
               for s in samples]
    for folder in {t.parent for t in targets}:
        folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(targets)
    todo = [k for k, t in enumerate(targets) if overwrite or not t.is_file()]
    rows = _sample_rows([samples[k] for k in todo], outs=[str(targets[k]) for k in todo])
    cm = ConfusionMatrix(labels.num_classes)
    cm.reset()
    written = 0
    try:
        for res in run_rows(model, rows, opts, device=device, precision=precision, fmt=fmt,
                            progress=progress, desc=f"predict {Path(_path_of(model)).name} (ray)",
                            options=options, out=out):
            cm.matrix += _sum_confusion(res, labels.num_classes)
            written += len(res["index"])
    finally:
        remove_stale_temporaries(targets)
    return {"written": written, "skipped": len(samples) - len(todo), "out": str(out), "format": fmt,
            "metrics": cm.compute(meta.class_names) if rows else None}


def ray_predict_images(model: str, images: str, out: str | os.PathLike, opts: RayOptions, *,
                       fmt: str = "labelIds", device: str = "cpu", precision: str | None = None,
                       overwrite: bool = False, progress: bool = True, **options: Any) -> dict:
    """``predict --images --engine ray``: the files single-process ``predict --images`` writes
    (``OUT/<stem>.png``), written by the actors; a re-run skips complete outputs.

    Returns ``{"written", "skipped", "out", "format"}``.
    """
    from ..artifacts import read_artifact_meta
    from ..evaluation.predict import FORMATS, image_targets, output_label_set

    from .shipping import absolute

    if fmt not in FORMATS:
        raise CitysegError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    model, out = _absolute_spec(model), Path(absolute(out))
    pairs = [(Path(absolute(i)), Path(absolute(t))) for i, t in image_targets(images, out)]
    meta, _ = read_artifact_meta(_path_of(model))
    output_label_set(meta, fmt, where=str(model))  # refuse labelIds of a non-Cityscapes model here
    out.mkdir(parents=True, exist_ok=True)
    targets = [target for _, target in pairs]
    remove_stale_temporaries(targets)
    todo = [k for k, t in enumerate(targets) if overwrite or not t.is_file()]
    rows = [{"index": i, "image": str(pairs[k][0]), "label": "", "label_kind": "", "stem": pairs[k][0].stem,
             "city": "", "out": str(targets[k]), "want_logits": False} for i, k in enumerate(todo)]
    written = 0
    try:
        for res in run_rows(model, rows, opts, device=device, precision=precision, fmt=fmt,
                            progress=progress, desc=f"predict {Path(_path_of(model)).name} (ray)",
                            options=options, out=out):
            written += len(res["index"])
    finally:
        remove_stale_temporaries(targets)
    return {"written": written, "skipped": len(pairs) - len(todo), "out": str(out), "format": fmt}


def _sum_confusion(res: dict[str, np.ndarray], k: int):
    import torch

    total = res["confusion"].sum(axis=0, dtype=np.int64).reshape(k, k)
    return torch.from_numpy(total)


def _path_of(spec: str) -> str:
    from ..runtime import parse_model_spec

    return parse_model_spec(spec)[0]


def _absolute_spec(spec: str | os.PathLike) -> str:
    """``model.onnx@bf16`` with the path made absolute (the driver's meaning of it)."""
    from ..runtime import parse_model_spec
    from .shipping import absolute

    path, precision = parse_model_spec(str(spec))
    return absolute(path) + (f"@{precision}" if precision else "")


# ---- eval / check: the local engine's two calls, on Ray ---------------------------------------
@dataclass
class RemoteModel:
    """What the driver knows of a model the actors run: its metadata now, what ran after the job."""

    spec: str
    device: str = "cpu"
    precision_asked: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        from ..artifacts import read_artifact_meta

        self.spec = _absolute_spec(self.spec)
        self.path = Path(_path_of(self.spec))
        self.meta, self.io = read_artifact_meta(self.path)
        self.outputs_logits = self.io.get("output", "logits") == "logits"
        self.backend = "?"
        self.precision = self.precision_asked or self.io.get("precision", "fp32")
        # the size the actors' Segmenters run at (Segmenter.input_size: asked, else the artifact's)
        self.input_size = tuple(int(v) for v in (self.options.get("size") or self.io.get("size")
                                                 or self.meta.input_size))

    def close(self) -> None:
        """Nothing to free on the driver (the actors end with the job)."""


class RayEngine:
    """The two calls :func:`~cityseg_deploy.evaluation.evaluate` and ``check`` make of an engine
    (load a model, run it over a split), answered by a Ray actor pool."""

    def __init__(self, opts: RayOptions):
        self.opts = opts.validate()

    def load(self, spec, *, device: str = "cpu", precision: str | None = None,
             threads: int | None = None, **options: Any) -> RemoteModel:
        if threads is not None and self.opts.threads is None:
            self.opts.threads = threads
        return RemoteModel(str(spec), device=device, precision_asked=precision, options=options)

    def run_split(self, model: RemoteModel, data_root, *, split: str = "val", label_set: str | None = None,
                  batch: int = 1, progress: bool = True, desc: str | None = None,
                  on_prediction: Callable | None = None, want_logits: Callable[[int], bool] | None = None):
        """The confusion matrix of ``model`` over ``split`` (summed from the actors); calls
        ``on_prediction(sample, None, labels, logits)`` in image order, as the local engine does."""
        from ..data.cityscapes import find_samples
        from ..evaluation.evaluate import label_set_of_model
        from ..metrics import ConfusionMatrix

        from .shipping import absolute

        labels = label_set_of_model(model.meta, label_set, where=str(model.path))
        samples = find_samples(absolute(data_root), split)
        rows = _sample_rows(samples, want_logits=want_logits if model.outputs_logits else None)
        opts = RayOptions(**{**self.opts.__dict__, "batch": self.opts.batch if self.opts.batch > 1 else batch})
        cm = ConfusionMatrix(labels.num_classes)
        cm.reset()
        pending: dict[int, tuple] = {}
        next_index = 0
        for res in run_rows(model.spec, rows, opts, device=model.device, precision=model.precision_asked,
                            label_set=label_set, want_labels=on_prediction is not None,
                            progress=progress, desc=f"{desc or model.path.name} (ray)",
                            options=model.options):
            cm.matrix += _sum_confusion(res, labels.num_classes)
            model.backend, model.precision, model.device = (str(res["backend"][0]), str(res["precision"][0]),
                                                            str(res["device"][0]))
            if on_prediction is None:
                continue
            for i, index in enumerate(res["index"]):
                pending[int(index)] = (res["labels_png"][i], res["logits"][i])
            while next_index in pending:  # image order, as the local engine calls it
                png, lg = pending.pop(next_index)
                on_prediction(samples[next_index], None, _decode_png(png), _npy_array(lg) if len(lg) else None)
                next_index += 1
        return cm
