"""AOTInductor runner for a ``.pt2`` package (``torch._inductor.aoti_load_package``).

The package is compiled for one device (its sidecar's ``io["device"]``, cpu by default) and, for
static exports, one input shape; the metadata sidecar says which.

A package is native code: it loads only if this machine's export wrote it or with ``--trust-code``
(``trust.py``), checked on the bytes that are then loaded, and only after a child process loaded
and ran it without dying (``aoti_probe.py``), so a crashing package is an error line, not a crash.
"""
from __future__ import annotations

import io as _io
import os
from typing import Any, Sequence

import numpy as np

from ..artifacts import sidecar_path
from ..errors import CitysegError, first_line
from ..system.threads import default_threads
from ..models.checkpoint import ModelMeta
from ..trust import read_trusted
from .aoti_probe import probe
from .base import Segmenter, artifact_metadata, check_precision
from .graph_check import check_aoti_input, check_output, check_pairing


class AOTISegmenter(Segmenter):
    backend = "aoti"

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", precision: str | None = None,
                 threads: int | None = None, size: Sequence[int] | None = None,
                 metadata: tuple[ModelMeta, dict[str, Any]] | None = None,
                 trust_code: bool | None = None):
        import torch

        meta, io = artifact_metadata(path, "aoti", metadata)
        precision = check_precision(precision)
        if precision and precision != io.get("precision", "fp32"):
            raise CitysegError(f"{path}: this package is {io.get('precision', 'fp32')}; "
                               f"export a {precision} package instead")
        built_for = str(io.get("device", "cpu")).split(":")[0]
        wanted = str(device).split(":")[0]
        if built_for != wanted:
            raise CitysegError(f"{path}: an AOTInductor package compiled for {built_for}, asked to run "
                               f"on {device}; export it again with --device {wanted}")
        if wanted == "cuda" and not torch.cuda.is_available():
            raise CitysegError(f"{path}: compiled for CUDA but no CUDA GPU is visible")
        super().__init__(path, meta, io, device=str(device), precision=io.get("precision", "fp32"),
                         threads=threads, size=size)
        self.hold_threads(threads or (default_threads() if wanted == "cpu" else None))
        data, digest = read_trusted(path, "aoti", trust_code=trust_code)  # before any dlopen
        check_pairing(path, io, digest)
        h, w = self.input_size
        probe(path, digest, str(device) if wanted == "cuda" else "cpu",
              (1 if io.get("dynamic") else int(io.get("batch", 1)), 3, h, w))
        try:
            from torch._inductor import aoti_load_package

            self.package = aoti_load_package(_io.BytesIO(data))  # the bytes checked, not the path again
        except Exception as exc:
            raise CitysegError(f"{path}: not a loadable AOTInductor package ({type(exc).__name__}: "
                               f"{first_line(exc, 200)}); re-export it "
                               f"with this torch ({torch.__version__})") from None
        self.torch_device = torch.device(str(device) if wanted == "cuda" else "cpu")
        self._check_against_sidecar(meta, io)

    def _check_against_sidecar(self, meta, io) -> None:
        """Compiled input shape from the package, output shape from one probe run (graph_check)."""
        import torch

        where = f"{sidecar_path(self.path)} (for {self.path.name})"
        check_aoti_input(self.path, where, meta, io)
        h, w = self.input_size
        n = 1 if io.get("dynamic") else int(io.get("batch", 1))
        probe = torch.zeros((n, 3, h, w), dtype=torch.float32, device=self.torch_device)
        try:
            out = self.compute(probe)
        except Exception as exc:  # noqa: BLE001 - the package refused the shape the sidecar gives
            raise CitysegError(f"{where}: the package does not run the input the metadata describes "
                               f"(batch {n}, size {h}x{w}): {first_line(exc)}; re-export it") from None
        check_output(where, meta, io, tuple(out.shape), str(out.dtype))

    def to_device(self, x: np.ndarray):
        import torch

        t = torch.from_numpy(x)
        if self.torch_device.type == "cuda":
            t = t.pin_memory().to(self.torch_device, non_blocking=True)
        return t

    def compute(self, x):
        import torch

        with torch.inference_mode():
            out = self.package(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        if isinstance(out, dict):
            out = out.get("out", next(iter(out.values())))
        return out
