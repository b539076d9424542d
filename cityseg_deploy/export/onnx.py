"""``--format onnx``: the fp32 graph (:mod:`.graph`) checked and verified; fp16 and int8 start from it."""
from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_path, path_mb
from .graph import build_fp32_graph, check_model
from ..system.timing import Timer
from .job import ExportJob
from .result import ExportResult


def export_onnx(job: ExportJob, out: Path, precision: str = "fp32") -> ExportResult:
    """``fp32`` here; ``fp16``/``int8`` start from this graph (fp16.py, quantize.py)."""
    from . import verify

    if precision == "fp16":
        from .fp16 import export_fp16

        return export_fp16(job, out)
    if precision == "int8":
        from .quantize import export_int8

        return export_int8(job, out)
    with Timer() as t, atomic_path(out) as tmp:
        build_fp32_graph(job, tmp)
        check_model(tmp)
        checks = {}
        if job.verify:
            checks = verify.check(job, tmp, "onnx", "fp32", out.name)
    return ExportResult(out, "onnx", "fp32", t.seconds, path_mb(out), checks)
