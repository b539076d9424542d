"""Load and run an AOTInductor package once in a child process before loading it here.

Why (issue 24 item 7): a package that aborts or segfaults in ``aoti_load_package`` or its first
run kills whichever process loads it — ``cityseg eval`` ended with exit 134 and a C++ message.
The child takes that risk instead; its verdict is cached per package (sha256), device and torch
version in cityseg's data folder, so a package costs one extra process once, not per command.
A crash verdict is cached too (the same bytes crash the same way), unless the child was killed
from outside (SIGKILL, SIGTERM: the OOM killer, a user).
"""
from __future__ import annotations

import os
from typing import Sequence

from ..errors import CitysegError
from ..isolate import ERROR_PREFIX, run_python
from ..trust import data_dir, read_json_map, update_json_map

#: The child: re-read the file, refuse it if its bytes are not the ones checked, load, run once.
PROBE_CODE = f"""
import hashlib, io, sys
path, digest, device, n, h, w = sys.argv[1:7]
data = open(path, "rb").read()
if hashlib.sha256(data).hexdigest() != digest:
    print({ERROR_PREFIX!r} + "the file changed after it was checked", file=sys.stderr)
    sys.exit(3)
import torch
from torch._inductor import aoti_load_package
try:
    runner = aoti_load_package(io.BytesIO(data))
    with torch.inference_mode():
        runner(torch.zeros((int(n), 3, int(h), int(w)), device=device))
except Exception as exc:
    print({ERROR_PREFIX!r} + type(exc).__name__ + ": " + str(exc).strip().splitlines()[0][:200]
          if str(exc).strip() else {ERROR_PREFIX!r} + type(exc).__name__, file=sys.stderr)
    sys.exit(1)
"""
_NOT_CACHED = ("SIGKILL", "SIGTERM", "SIGINT")


def verdict_file():
    return data_dir() / "aoti_probes.json"


def probe(path: str | os.PathLike, digest: str, device: str, shape: Sequence[int]) -> None:
    """Return if the package at ``path`` (bytes ``digest``) loads and runs ``shape`` in a child;
    a CitysegError naming the cause if the child died.  A Python-level failure in the child is
    left for the in-process load to report (its messages are the runner's own)."""
    import torch

    n, _, h, w = (int(v) for v in shape)
    key = f"{digest}|{device}|torch {torch.__version__}|{n}x3x{h}x{w}"
    cached = read_json_map(verdict_file()).get(key)
    if cached == "ok":
        return
    if isinstance(cached, str) and cached:
        raise CitysegError(f"{path}: {cached} (cached verdict for these bytes; re-export the package)")
    what = "loading this AOTInductor package"
    try:
        run_python(PROBE_CODE, [path, digest, device, n, h, w], what=what)
    except CitysegError as exc:
        text = str(exc)
        if " killed the process " in text:
            if not any(f"({sig}," in text for sig in _NOT_CACHED):
                _remember(key, text + "; cityseg did not load it")
            raise CitysegError(f"{path}: {text}; cityseg did not load it in this process — "
                               f"re-export it (a different --precision or --device may avoid the crash)") from None
        if "the file changed after it was checked" in text:
            raise CitysegError(f"{path}: the file changed while it was being loaded; run again") from None
        return  # a clean Python error: the in-process load reports it, as without the probe
    _remember(key, "ok")


def _remember(key: str, verdict: str) -> None:
    try:
        update_json_map(verdict_file(), key, verdict)
    except OSError:
        pass  # an unwritable data folder costs a child process per load, nothing else


__all__ = ["PROBE_CODE", "probe", "verdict_file"]
