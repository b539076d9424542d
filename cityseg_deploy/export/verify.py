"""Parity checks: an exported artifact against the PyTorch fp32 model on the same images.

Separate from running (each format hands in a ``run(batch) -> outputs`` callable), as in
Polygraphy's comparator.  Figures reported for every artifact:

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

from typing import Any, Callable

import numpy as np
import torch

from ..errors import CitysegError
from .job import ExportJob

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
        x = job.to_input(images)
    finally:
        job.preprocess = saved
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), 4):
            outs.append(model(torch.from_numpy(x[i:i + 4])).float().numpy())
    return np.concatenate(outs)


def run_batched(job: ExportJob, run: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """Feed ``images`` through ``run`` in the batches the artifact accepts."""
    x = job.to_input(images)
    outs = []
    for chunk, n in job.batches(x):
        outs.append(np.asarray(run(chunk))[:n])
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


def measure(job: ExportJob, run: Callable[[np.ndarray], np.ndarray], *, labels_out: bool | None = None
            ) -> dict[str, Any]:
    """Run the artifact and PyTorch on the check images; return the figures (no judgement)."""
    labels_out = job.argmax if labels_out is None else labels_out
    images, truth, where = job.images("val", job.verify_images, labels=True)
    out = run_batched(job, run, images)
    stats: dict[str, Any] = {"images": where}
    if job.source_onnx is not None:
        # Compiled from a project ONNX: the reference is that graph in onnxruntime.
        ref_out = run_batched(job, ort_runner(job.source_onnx), images)
        stats["reference"] = f"onnxruntime {job.source_onnx.name}"
        if labels_out:
            ref_labels = ref_out
            stats.update(compare(np.eye(256, dtype=np.float32)[ref_out.astype(np.int64)].transpose(0, 3, 1, 2),
                                 out, labels_out=True))
        else:
            ref_labels = ref_out.argmax(1)
            stats.update(compare(ref_out.astype(np.float32), out, labels_out=False))
    else:
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


def check(job: ExportJob, run: Callable[[np.ndarray], np.ndarray], precision: str, what: str,
          *, labels_out: bool | None = None) -> dict[str, Any]:
    """Measure, print one line, judge. Returns the figures for ``ExportResult.checks``."""
    stats = measure(job, run, labels_out=labels_out)
    job.log(f"  parity {what}: {describe(stats)}")
    judge(stats, precision, what)
    return stats


def ort_session(path, *, providers: list[str] | None = None, int8: bool = False):
    """A CPU session over ``path``; ``int8=True`` runs an int8 graph the way the runtime does on
    CPU (``graphs.ort_int8``: uint8 activations, ReLUs folded), so the export's int8 parity
    gate judges what ``cityseg`` will run, not a form no command uses."""
    import onnxruntime as ort

    from ..graphs.ort_int8 import onnxruntime_cpu_graph
    from ..system.machine import session_threads as threads

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads():
        opts.intra_op_num_threads = threads()
    source = onnxruntime_cpu_graph(path)[0] if int8 and not providers else str(path)
    return ort.InferenceSession(source, opts, providers=providers or ["CPUExecutionProvider"])


def ort_runner(path, *, int8: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    sess = ort_session(path, int8=int8)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]
