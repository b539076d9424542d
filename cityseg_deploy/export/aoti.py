"""AOTInductor: ``torch.export`` + ``torch._inductor.aoti_compile_and_package`` → ``<stem>.pt2``.

The package holds compiled kernels and weights: ``torch._inductor.aoti_load_package(path)`` runs it
without the project's model code.  Compiled for the export device (CPU here; CUDA with
``device="cuda"``); metadata in the sidecar ``<file>.pt2.json``, swapped in with the package as one
pair (``fileio.atomic_pair``).  Compilation invokes a C++ compiler in a child process
(:func:`compile_package`): on 2 CPU cores expect ~1–2 min for a small preset.  The package's
sha256 goes on this machine's trust list (``trust.py``): the runtime loads it without
``--trust-code``.

``precision="fp16"|"bf16"`` (CUDA only) compiles the network in that dtype with channels_last
weights — what tensor cores want; the package still takes the float32 NCHW input of the fp32 one
and returns float32 logits, so the runtime and every checker treat all precisions alike.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import io
import os
import tempfile
import warnings
from pathlib import Path

import torch

from ..artifacts import pack, sidecar_path
from ..errors import CitysegError
from ..fileio import atomic_pair, path_mb
from ..isolate import ERROR_PREFIX, run_python
from ..system.timing import Timer
from ..trust import record
from .job import ExportJob
from .result import ExportResult


HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


class HalfPrecision(torch.nn.Module):
    """float32 NCHW in → the network in fp16/bf16, channels_last → float32 logits out."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model.to(dtype=dtype, memory_format=torch.channels_last)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype).contiguous(memory_format=torch.channels_last)).float()


#: The child that compiles: torch.export's program from a file → the package (see compile_package).
COMPILE_CODE = f"""
import contextlib, io, sys, warnings
import torch
program_path, package_path = sys.argv[1:3]
try:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.export.load(program_path)
        torch._inductor.aoti_compile_and_package(program, package_path=package_path)
except Exception as exc:
    text = str(exc).strip()
    print({ERROR_PREFIX!r} + type(exc).__name__ + (": " + text.splitlines()[0][:240] if text else ""),
          file=sys.stderr)
    sys.exit(1)
"""


def compile_package(program, package_path: Path) -> None:
    """``aoti_compile_and_package`` in a child process (issue 24 item 7).

    Why: the C++ compile and the code it runs can abort the process (``terminate called ...
    c10::Error``, exit 134 on a full disk) or segfault (fp16 on CUDA): in a child that is one
    ``error:`` line naming the cause, and the export's temporaries are still cleaned up here.
    The program crosses over as a ``torch.export.save`` file (weights included) in a private
    temporary folder.
    """
    with tempfile.TemporaryDirectory(prefix="cityseg-aoti-") as work:
        saved = Path(work) / "program.pt2"
        try:
            torch.export.save(program, saved)
        except OSError as exc:
            raise CitysegError(f"{saved}: cannot write the exported program for the compiler "
                               f"({exc.strerror or type(exc).__name__})") from None
        run_python(COMPILE_CODE, [saved, package_path], what="compiling the AOTInductor package")
    if not package_path.is_file():
        raise CitysegError(f"{package_path}: the AOTInductor compiler wrote no package")


def check_room_for_package(model: torch.nn.Module, out: Path) -> None:
    """Refuse, before compiling, an output folder without room for the package.

    Why: on a full disk the package writer (C++) throws from a destructor and the process ends
    in ``terminate called ... c10::Error`` (exit 134) — no Python handler runs, so no error line.
    The estimate: the weights twice (the package's copy and the temporary beside it) plus 32 MB
    for the compiled library and its metadata.
    """
    from ..fileio import free_bytes

    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    needed = 2 * weights + (32 << 20)
    free = free_bytes(out.parent)
    if free is not None and free < needed:
        raise CitysegError(f"{out}: cannot write ({os.strerror(errno.ENOSPC)}); {free / 1e6:.1f} MB "
                           f"free on its filesystem, an AOTInductor package of this model needs about "
                           f"{needed / 1e6:.0f} MB — free some space or write elsewhere")


def export_aoti(job: ExportJob, out: Path, precision: str = "fp32") -> ExportResult:
    from . import verify
    from .graph import _dynamic_shapes, example_input, wrapped_model

    device = torch.device(job.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CitysegError("--device cuda: no CUDA GPU visible to PyTorch; export for CPU (--device cpu)")
    # a copy: moving or casting job.model() in place would change the fp32 CPU reference that
    # verify.check compares the package against
    model = copy.deepcopy(wrapped_model(job))
    if precision in HALF:
        model = HalfPrecision(model, HALF[precision])
    model = model.eval().to(device)
    x = example_input(job).to(device)
    check_room_for_package(model, out)
    checks: dict = {}
    side = sidecar_path(out)
    io_ = job.io(precision, device=device.type, torch_version=torch.__version__)  # the sidecar's
    # Package and sidecar are written aside and swapped in as a pair (fileio.atomic_pair): a
    # failure or a kill at any point leaves the previous export's pair, or the new one, complete.
    with Timer() as t, atomic_pair(out, side) as (tmp, side_tmp):
        # Compile, load and verify under a ``.pt2`` name: torch's package loader logs "Unable to
        # load package. f must be a buffer or a file ending in .pt2" for any other suffix, such
        # as the atomic ``.tmp`` name; the package becomes ``tmp`` once it passed.
        pkg = tmp.with_suffix(".pt2")
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
                warnings.simplefilter("ignore")
                program = torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(job))
            compile_package(program, pkg)
            # The bytes this export wrote are trusted on this machine (trust.py); the runtime's
            # gate then loads them like any package it recorded, here for the parity check first.
            io_["package_sha256"] = record(out, "aoti", pkg.read_bytes())
            if job.verify:  # the runtime's runner, handed the sidecar it will get
                checks = verify.check(job, pkg, "aoti", precision, out.name,
                                      metadata=(job.meta, io_), device=str(device))
            pkg.replace(tmp)
        finally:
            pkg.unlink(missing_ok=True)
        side_tmp.write_text(pack(job.meta, io_))
    return ExportResult(out, "aoti", precision, t.seconds, path_mb(out, side), checks)
