"""Which native-code artifacts this machine loads without asking: the trust list.

Why: an AOTInductor ``.pt2`` holds a shared library that ``aoti_load_package`` dlopens — its
constructors run on load, before any check of ours — and a TensorRT plan may carry plugin code.
Pickles are gated (``models/safe_load.py``); these files are code by nature, so they load only
when this machine's ``cityseg export`` wrote them — it records the sha256 of every package and
engine it writes — or when the user passes ``--trust-code`` for a file from elsewhere.

The check hashes the very bytes that are then loaded (:func:`read_trusted`), so a file swapped
between the check and the load is not what runs.  The list is a JSON file under the user's data
folder (``$CITYSEG_DATA_DIR``, else ``$XDG_DATA_HOME/cityseg``, else ``~/.local/share/cityseg``),
updated under a lock and replaced atomically, so concurrent exports never lose an entry.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from .errors import CitysegError
from .fileio import write_text_atomic

DATA_ENV = "CITYSEG_DATA_DIR"
#: Set by ``--trust-code`` (and inherited by the processes a command starts: the AOTInductor
#: probe, a local Ray cluster's workers): load native code whatever its origin.
TRUST_ENV = "CITYSEG_TRUST_CODE"
NATIVE_KINDS = {"aoti": "an AOTInductor package", "tensorrt": "a TensorRT engine"}
_MAX_LIST_BYTES = 64 << 20


def data_dir() -> Path:
    """cityseg's per-user data folder (the trust list, the AOTInductor probe verdicts)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "cityseg"


def trust_file() -> Path:
    return data_dir() / "trusted.json"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` for a read-modify-write of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_json_map(path: Path) -> dict:
    """A JSON object file; missing, oversized or damaged reads as empty (nothing trusted)."""
    try:
        if path.stat().st_size > _MAX_LIST_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_json_map(path: Path, key: str, value: object) -> None:
    """Set ``key`` in the JSON object at ``path`` under its lock, replacing the file atomically."""
    with locked(path):
        data = read_json_map(path)
        data[key] = value
        write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record(path: str | os.PathLike, kind: str, data: bytes | None = None) -> str:
    """Add the file (or ``data``, the bytes about to be written there) to the trust list; its sha256.

    Called by export for what it compiled or built.  A list that cannot be written (a read-only
    home folder) is a warning line, not a failed export: the package is good, loading it will
    just need ``--trust-code``.
    """
    data = Path(path).read_bytes() if data is None else data
    digest = sha256_bytes(data)
    entry = {"kind": kind, "path": str(Path(path).resolve()), "bytes": len(data),
             "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        update_json_map(trust_file(), digest, entry)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        _warn(f"{trust_file()}: could not record {path} in the trust list ({why}); loading it "
              f"will need --trust-code (or set {DATA_ENV} to a writable folder and export again)")
    return digest


def is_trusted(digest: str) -> bool:
    return digest in read_json_map(trust_file())


def allow_untrusted(on: bool = True) -> None:
    """``--trust-code``: this process and those it starts load native code of any origin."""
    if on:
        os.environ[TRUST_ENV] = "1"
    else:
        os.environ.pop(TRUST_ENV, None)


def untrusted_allowed() -> bool:
    return os.environ.get(TRUST_ENV, "") not in ("", "0")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def check_trusted(path: str | os.PathLike, kind: str, data: bytes, *,
                  trust_code: bool | None = None) -> str:
    """The sha256 of ``data`` (the bytes of ``path``) if they may be loaded, else a CitysegError.

    ``trust_code``: True loads an untrusted file (with a warning line), False refuses it even under
    ``--trust-code``; None follows ``--trust-code`` (:func:`untrusted_allowed`).
    """
    digest = sha256_bytes(data)
    if is_trusted(digest):
        return digest
    what = NATIVE_KINDS.get(kind, f"a {kind} file")
    if trust_code or (trust_code is None and untrusted_allowed()):
        _warn(f"--trust-code: loading {path} (sha256 {digest[:16]}...), {what} not written by "
              f"'cityseg export' on this machine; its native code runs with your permissions")
        return digest
    raise CitysegError(
        f"{path}: {what} holds native code that runs when it is loaded, and this one was not "
        f"written by 'cityseg export' on this machine: re-run with --trust-code if you trust where "
        f"it came from, or export it here from its checkpoint (sha256 {digest[:16]}... is not in "
        f"{trust_file()})")


def read_trusted(path: str | os.PathLike, kind: str, *, trust_code: bool | None = None) -> tuple[bytes, str]:
    """(bytes, sha256) of a native-code artifact that passed :func:`check_trusted`; the caller
    loads these bytes, not the path again."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CitysegError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    return data, check_trusted(path, kind, data, trust_code=trust_code)


__all__ = ["DATA_ENV", "NATIVE_KINDS", "TRUST_ENV", "allow_untrusted", "check_trusted", "data_dir",
           "is_trusted", "read_trusted", "record", "trust_file", "untrusted_allowed"]
