"""Parity checks: an exported artifact against the PyTorch fp32 model on the same images.

Separate from running, as in Polygraphy's comparator: each format loads the file it wrote through
the runtime's own backend (:func:`cityseg_deploy.runtime.open_artifact`, the ``Segmenter`` users
get from ``runtime.load``, with its load-time graph checks) and this module feeds it the check
images and judges the outputs.  Figures reported for every artifact:

- ``max_abs_err`` / ``mean_abs_err`` of the logits, ``rel_err`` = max_abs_err / max |logit|
  (logit outputs only);
- ``agreement``: fraction of pixels whose argmax label equals PyTorch's;
- with ground truth (``--data``): ``miou`` of the artifact and ``miou_ref`` of PyTorch fp32 from
  the metrics :class:`~cityseg_deploy.metrics.ConfusionMatrix`, and ``miou_drop`` in points.

Outside the tolerance of its precision the export fails with a CitysegError (the caller removes
the file).  The tolerances were measured on the small presets (see tests/test_export_*.py):
fp32 rel_err < 1e-3; fp16 agreement >= 99 %; bf16 >= 97 %; int8 >= 90 % (random-init nets have
near-tied logits, trained ones reach >= 97 %).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import CitysegError
from ..system.threads import default_threads, torch_threads
from .images import for_job, job_batches, job_input
from .job import ExportJob

if TYPE_CHECKING:
    from ..runtime.base import Segmenter

TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"rel_err": 1e-3, "agreement": 0.999},
    "fp16": {"agreement": 0.99},
    "bf16": {"agreement": 0.97},
    "int8": {"agreement": 0.90},
}


def torch_logits(job: ExportJob, images: np.ndarray) -> np.ndarray:
    """PyTorch fp32 logits (N×K×H×W) of uint8 NHWC images, the reference of every check."""
    model = job.model()
    saved = job.preprocess
    job.preprocess = False
    try:
        x = job_input(job, images)
    finally:
        job.preprocess = saved
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), 4):
            outs.append(model(torch.from_numpy(x[i:i + 4])).float().numpy())
    return np.concatenate(outs)


def runner(path, kind: str, *, metadata=None, device: str = "cpu") -> "Segmenter":
    """The runtime's ``Segmenter`` over a file the export just wrote (still at its temporary
    name): the file's own metadata (ONNX, OpenVINO) or ``metadata`` = the (meta, io) its sidecar
    will hold (TensorRT, AOTInductor).  An int8 ONNX runs in onnxruntime's CPU form
    (``graphs.ort_int8``), as ``cityseg`` runs it."""
    from ..runtime import open_artifact
    from ..system.machine import session_threads

    # trust_code: the bytes this export itself just compiled or built (also on the trust list,
    # unless that list could not be written)
    return open_artifact(path, kind, metadata=metadata, device=device,
                         threads=session_threads() or None, trust_code=True)


def run_batched(job: ExportJob, seg: "Segmenter", images: np.ndarray) -> np.ndarray:
    """``images`` through ``seg`` in the batches the export was made for (``images.job_batches``: a
    static batch's last chunk padded): N×K×H×W float32 logits, or N×H×W labels for a labels graph."""
    outs = []
    for chunk, n in job_batches(job, images):
        labels, logits, _ = seg.run(chunk, want_logits=True)
        outs.append((logits if seg.outputs_logits else np.stack(labels))[:n])
    return np.concatenate(outs)


def compare(ref_logits: np.ndarray, out: np.ndarray, *, labels_out: bool) -> dict[str, float]:
    ref_labels = ref_logits.argmax(1)
    if labels_out:
        pred = out.astype(np.int64)
        return {"agreement": float((pred == ref_labels).mean())}
    out = out.astype(np.float32)
    err = np.abs(out - ref_logits)
    scale = float(np.abs(ref_logits).max()) or 1.0
    return {"max_abs_err": float(err.max()), "mean_abs_err": float(err.mean()),
            "rel_err": float(err.max() / scale),
            "agreement": float((out.argmax(1) == ref_labels).mean())}


def miou(pred: np.ndarray, truth: np.ndarray, job: ExportJob) -> float:
    from ..metrics import ConfusionMatrix

    cm = ConfusionMatrix(job.meta.num_classes)
    cm.update(pred.astype(np.int64), truth.astype(np.int64))
    return float(cm.compute(job.meta.class_names)["miou"])


def measure(job: ExportJob, seg: "Segmenter") -> dict[str, Any]:
    """Run the artifact and PyTorch on the check images; return the figures (no judgement)."""
    labels_out = not seg.outputs_logits
    images, truth, where = for_job(job, "val", job.verify_images, labels=True)
    out = run_batched(job, seg, images)
    stats: dict[str, Any] = {"images": where}
    if job.source_onnx is not None:
        # Compiled from a project ONNX: the reference is that graph in onnxruntime.
        with runner(job.source_onnx, "onnx") as ref_seg:
            ref_out = run_batched(job, ref_seg, images)
        stats["reference"] = f"onnxruntime {job.source_onnx.name}"
        if labels_out:
            ref_labels = ref_out
            stats.update(compare(np.eye(256, dtype=np.float32)[ref_out.astype(np.int64)].transpose(0, 3, 1, 2),
                                 out, labels_out=True))
        else:
            ref_labels = ref_out.argmax(1)
            stats.update(compare(ref_out.astype(np.float32), out, labels_out=False))
    else:
        with torch_threads(default_threads()):  # full width: an open onnxruntime runner holds torch at 1
            ref = torch_logits(job, images)
        ref_labels = ref.argmax(1)
        stats.update(compare(ref, out, labels_out=labels_out))
    if truth is not None:
        pred = out if labels_out else out.argmax(1)
        stats["miou_ref"] = 100.0 * miou(ref_labels, truth, job)
        stats["miou"] = 100.0 * miou(pred, truth, job)
        stats["miou_drop"] = stats["miou_ref"] - stats["miou"]
    return stats


def describe(stats: dict[str, Any]) -> str:
    parts = []
    if "max_abs_err" in stats:
        parts.append(f"max abs err {stats['max_abs_err']:.2e} (rel {stats['rel_err']:.2e}), "
                     f"mean {stats['mean_abs_err']:.2e}")
    parts.append(f"argmax agreement {100 * stats['agreement']:.2f}%")
    if "miou" in stats:
        parts.append(f"mIoU {stats['miou']:.2f} vs fp32 PyTorch {stats['miou_ref']:.2f} "
                     f"(drop {stats['miou_drop']:+.2f} pts)")
    return "; ".join(parts) + f" on {stats['images']}"


def judge(stats: dict[str, Any], precision: str, what: str) -> None:
    """CitysegError when ``stats`` are outside the tolerance of ``precision``."""
    tol = TOLERANCES[precision]
    bad = []
    if "rel_err" in tol and "rel_err" in stats:
        if stats["rel_err"] > tol["rel_err"]:
            bad.append(f"relative logit error {stats['rel_err']:.2e} > {tol['rel_err']:.0e}")
    elif stats["agreement"] < tol["agreement"]:
        bad.append(f"argmax agreement {100 * stats['agreement']:.2f}% < {100 * tol['agreement']:.1f}%")
    if bad:
        raise CitysegError(f"{what}: {precision} output differs from PyTorch: {'; '.join(bad)}; "
                           f"the file was not kept (report this with the model and 'cityseg models')")


def check(job: ExportJob, path, kind: str, precision: str, what: str, *, metadata=None,
          device: str = "cpu") -> dict[str, Any]:
    """Load ``path`` through the runtime (:func:`runner`), measure, print one line, judge.
    Returns the figures for ``ExportResult.checks``."""
    with runner(path, kind, metadata=metadata, device=device) as seg:
        stats = measure(job, seg)
    job.log(f"  parity {what}: {describe(stats)}")
    judge(stats, precision, what)
    return stats
