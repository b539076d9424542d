"""``cityseg eval``: score a model (any artifact) or a folder of prediction PNGs on a split.

Both paths feed one streamed :class:`~cityseg_deploy.metrics.ConfusionMatrix` at the label's own
resolution (predictions are resized back to the image size with nearest neighbour by the
Segmenter), so a model and the PNGs it wrote score the same.
"""
from __future__ import annotations

import os
import re
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data.cityscapes import (IMAGE_SUFFIX, Sample, check_root, find_samples, image_files,
                               load_sample)
from ..errors import CitysegError
from ..fileio import read_label, read_rgb
from ..labels import LABEL_SETS, LabelSet, get_label_set
from ..metrics import ConfusionMatrix
from ..metrics.tables import eval_json
from ..prefetch import prefetched

STEM_RE = re.compile(r"(?P<stem>.+?_\d{6}_\d{6})")
PRED_FORMATS = ("labelIds", "trainIds")


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", leave=True, dynamic_ncols=True)


def label_set_of_model(meta, label_set: str | None = None, *, where: str = "model") -> LabelSet:
    """The label set to score ``meta``'s model on; CitysegError when the class counts differ."""
    if label_set is not None:
        labels = get_label_set(label_set)
        if labels.num_classes != meta.num_classes:
            raise CitysegError(f"{where}: predicts {meta.num_classes} classes ({meta.label_set}) but "
                               f"the data set is labelled with {labels.num_classes} ({labels.name}); "
                               f"evaluate it on data of its own class set")
        return labels
    if meta.label_set not in LABEL_SETS:
        counts = " or ".join(f"{s.name} ({s.num_classes})" for s in LABEL_SETS.values())
        raise CitysegError(f"{where}: predicts {meta.num_classes} classes ({meta.label_set}); scoring "
                           f"needs ground truth in that label set, and cityseg reads Cityscapes "
                           f"labels as {counts} classes — predict, segment, bench and export work "
                           f"with this model; to score it, fine-tune it to a Cityscapes class set")
    labels = get_label_set(meta.label_set)
    if labels.num_classes != meta.num_classes:
        raise CitysegError(f"{where}: metadata says {meta.label_set} but has {meta.num_classes} "
                           f"class names; re-export it")
    return labels


def _image_samples(data_root, split: str) -> list[Sample]:
    """The images of ``split`` without their labels (prediction of a model of another label set)."""
    root = check_root(data_root)
    files = image_files(root, split)
    if not files:
        raise CitysegError(f"{root / 'leftImg8bit' / split}: no *{IMAGE_SUFFIX} images in split {split!r}")
    return [Sample(f, f, f.name[: -len(IMAGE_SUFFIX)], f.parent.name) for f in files]


def run_split(segmenter, data_root: str | os.PathLike, *, split: str = "val", label_set: str | None = None,
              batch: int = 1, progress: bool = True, desc: str | None = None,
              on_prediction: Callable[[Any, np.ndarray, np.ndarray, np.ndarray | None], None] | None = None,
              want_logits: Callable[[int], bool] | None = None, score: bool = True
              ) -> ConfusionMatrix | None:
    """One pass of ``segmenter`` over ``split``; returns the confusion matrix.

    The next images (and labels) are decoded in a background thread while the model runs
    (:func:`cityseg_deploy.prefetch.prefetched`); predictions, scores and callbacks stay in
    order, in the calling thread.

    ``on_prediction(sample, image, labels, logits)`` sees every prediction (check, predict use
    it); ``want_logits(index)`` says for which images logits are wanted (None: never).
    """
    labels_set = label_set_of_model(segmenter.meta, label_set, where=str(segmenter.path)) if score else None
    samples = find_samples(data_root, split) if score else _image_samples(data_root, split)
    cm = ConfusionMatrix(labels_set.num_classes) if labels_set is not None else None
    batch = max(1, int(batch))
    bar = _progress(range(len(samples)), len(samples), desc or Path(segmenter.path).name, progress)
    pending: list = []

    def flush():
        images = [p[1] for p in pending]
        wanted = want_logits is not None and any(want_logits(p[2]) for p in pending)
        preds, logits, _ = segmenter.run(images, want_logits=wanted and segmenter.outputs_logits)
        for k, ((sample, image, index, truth), pred) in enumerate(zip(pending, preds)):
            if cm is not None:
                cm.update(pred, truth)
            if on_prediction is not None:
                lg = logits[k] if (logits is not None and want_logits(index)) else None
                on_prediction(sample, image, pred, lg)
        if hasattr(bar, "update"):
            bar.update(len(pending))
        pending.clear()

    def load(sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        return load_sample(sample, labels_set) if labels_set is not None else (read_rgb(sample.image), None)

    try:
        with closing(prefetched(load, samples, ahead=prefetch_depth(batch))) as loaded:
            for index, (sample, (image, truth)) in enumerate(zip(samples, loaded)):
                pending.append((sample, image, index, truth))
                if len(pending) >= batch:
                    flush()
            if pending:
                flush()
    finally:
        if hasattr(bar, "close"):
            bar.close()
    return cm


def prefetch_depth(batch: int) -> int:
    """Images decoded ahead of the model: two batches (the next one ready, one being read)."""
    return 2 * max(1, int(batch))


def evaluate(model, data_root: str | os.PathLike, *, split: str = "val", device: str = "cpu",
             precision: str | None = None, threads: int | None = None, batch: int = 1,
             label_set: str | None = None, progress: bool = True, name: str | None = None,
             engine: Any = None, **options: Any) -> dict:
    """The eval JSON dict (DESIGN.md keys) of ``model`` — a path/spec or a loaded Segmenter.

    ``engine``: who loads and runs the model (``load`` + ``run_split``; default this process,
    :class:`cityseg_deploy.scale.ray_batch.RayEngine` for a Ray actor pool).
    """
    from .. import runtime
    from ..runtime.base import runner_of

    loader = engine or runtime
    segmenter = model if hasattr(model, "run") else loader.load(
        model, device=device, precision=precision, threads=threads, **options)
    cm = (engine.run_split if engine else run_split)(segmenter, data_root, split=split,
                                                     label_set=label_set, batch=batch, progress=progress)
    result = cm.compute(segmenter.meta.class_names)
    doc = eval_json(result, name or str(model if not hasattr(model, "run") else segmenter.path))
    doc.update(split=split, backend=segmenter.backend, precision=segmenter.precision,
               device=segmenter.device, images=int(len(find_samples(data_root, split))),
               runner=runner_of(segmenter))
    return doc


def _pred_index(pred_dir: Path) -> dict[str, list[Path]]:
    """Every prediction PNG under ``pred_dir`` (any depth), by the ``<city>_<seq>_<frame>`` stem."""
    index: dict[str, list[Path]] = {}
    for png in sorted(pred_dir.rglob("*.png")):
        m = STEM_RE.match(png.name)
        if m:
            index.setdefault(m.group("stem"), []).append(png)
    return index


def _pred_for(sample, pred_dir: Path, index: dict[str, list[Path]]) -> Path | None:
    """The prediction of ``sample``: the one in ``<city>/`` when several share its stem (predict
    --layout cities), else the only one; None when missing; an error when it is ambiguous."""
    found = index.get(sample.stem, [])
    if len(found) <= 1:
        return found[0] if found else None
    in_city = [p for p in found if p.parent.name == sample.city]
    if len(in_city) == 1:
        return in_city[0]
    raise CitysegError(f"{pred_dir}: {len(found)} prediction PNGs for image {sample.stem!r} "
                       f"({', '.join(str(p.relative_to(pred_dir)) for p in found[:3])}); keep one, "
                       f"or put each in its city's folder ({sample.city}/)")


def evaluate_pred_dir(pred_dir: str | os.PathLike, data_root: str | os.PathLike, *, split: str = "val",
                      pred_format: str = "labelIds", label_set: str = "cityscapes19",
                      progress: bool = True) -> dict:
    """Score PNGs written by any tool, found by the ``<city>_<seq>_<frame>`` stem of each image.

    ``pred_format``: ``labelIds`` (official ids, the submission format) or ``trainIds`` (class
    indices of ``label_set``).  Missing predictions: one error naming them.
    """
    if pred_format not in PRED_FORMATS:
        raise CitysegError(f"--pred-format {pred_format!r}: choose labelIds or trainIds")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise CitysegError(f"{pred_dir}: no such prediction folder")
    labels_set = get_label_set(label_set)
    samples = find_samples(data_root, split)
    index = _pred_index(pred_dir)
    preds = {id(s): _pred_for(s, pred_dir, index) for s in samples}
    missing = [s.stem for s in samples if preds[id(s)] is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CitysegError(f"{pred_dir}: no prediction PNG for {len(missing)} of {len(samples)} "
                           f"{split} images ({shown}); name them <city>_<seq>_<frame>*.png")
    lut = labels_set.id_lut() if pred_format == "labelIds" else labels_set.train_id_lut()
    n = labels_set.num_classes
    cm = ConfusionMatrix(n)
    for sample in _progress(samples, len(samples), pred_dir.name, progress):
        _, truth = load_sample(sample, labels_set)
        pred_png = preds[id(sample)]
        raw = read_label(pred_png)
        if raw.shape != truth.shape:
            raise CitysegError(f"{pred_png}: prediction is {raw.shape[1]}x{raw.shape[0]} "
                               f"(WxH) but the label is {truth.shape[1]}x{truth.shape[0]}; write "
                               f"predictions at the image's size")
        pred = lut[raw]
        if (pred == 255).any():
            bad = int(raw[pred == 255][0])
            raise CitysegError(f"{pred_png}: holds value {bad}, not a {pred_format} value "
                               f"of an evaluated {labels_set.name} class; is --pred-format right?")
        cm.update(pred, truth)
    doc = eval_json(cm.compute(labels_set.class_names), str(pred_dir))
    doc.update(split=split, pred_format=pred_format, images=len(samples))
    return doc
