"""AOTInductor: ``torch.export`` + ``torch._inductor.aoti_compile_and_package`` → ``<stem>.pt2``.

The package holds compiled kernels and weights: ``torch._inductor.aoti_load_package(path)`` runs it
without the project's model code.  Compiled for the export device (CPU here; CUDA with
``device="cuda"``); metadata in the sidecar ``<file>.pt2.json`` (artifacts.write_sidecar).
Compilation invokes a C++ compiler: on 2 CPU cores expect ~1–2 min for a small preset.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch

from ..artifacts import sidecar_path, write_sidecar
from ..errors import CitysegError
from ..fileio import atomic_path
from .job import ExportJob, ExportResult, Timer, path_size_mb


def export_aoti(job: ExportJob, out: Path, precision: str = "fp32") -> ExportResult:
    from . import verify
    from .onnx import _dynamic_shapes, example_input, wrapped_model

    device = torch.device(job.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CitysegError("--device cuda: no CUDA GPU visible to PyTorch; export for CPU (--device cpu)")
    model = wrapped_model(job).to(device)
    x = example_input(job).to(device)
    checks: dict = {}
    with Timer() as t:
        with atomic_path(out) as tmp:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
                warnings.simplefilter("ignore")
                program = torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(job))
                tmp.unlink(missing_ok=True)
                pkg = tmp.with_suffix(".pt2")  # aoti wants a .pt2 name
                try:
                    torch._inductor.aoti_compile_and_package(program, package_path=str(pkg))
                    pkg.replace(tmp)
                finally:
                    pkg.unlink(missing_ok=True)
            if job.verify:
                loaded = torch._inductor.aoti_load_package(str(tmp))

                def run(batch):
                    with torch.no_grad():
                        return loaded(torch.from_numpy(batch).to(device)).float().cpu().numpy()

                checks = verify.check(job, run, "fp32", out.name)
            write_sidecar(out, job.meta, job.io("fp32", device=device.type,
                                                 torch_version=torch.__version__))
    return ExportResult(out, "aoti", "fp32", t.seconds, path_size_mb(out) + path_size_mb(sidecar_path(out)),
                        checks)
