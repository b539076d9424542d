"""What a Ray job sends to its actors: absolute paths, and the model itself through the object store.

Why: an actor runs in the folder where ``ray start`` ran on its node, so a relative ``--out``
wrote the files somewhere else (and the job said "wrote 20") and a relative model was "no such
file" after 200 lines of tracebacks.  The driver resolves every path to an absolute one before
anything ships; the model's files (the artifact and its sidecar / IR folder files) travel as
bytes in Ray's object store and each actor writes them to a private temporary folder and loads
from there, so workers need no shared folder for the model.  Outputs are written by the actors
to the absolute ``--out`` — that does need a folder every node sees (a shared filesystem), which
:func:`out_marker` / :func:`check_out_visible` check at the start: an actor that cannot see the
driver's marker file in ``--out`` fails the job with one line, instead of writing its files on
its own node's disk.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import CitysegError


@dataclass
class ShippedModel:
    """The artifact's files as bytes (relative name → content) and the name to load."""

    files: dict[str, bytes]
    load_name: str          # relative to the folder the files are written to
    spec_suffix: str = ""   # "@bf16" and the like, kept from the user's spec
    origin: str = ""        # the driver's path, for messages

    def materialise(self) -> tuple[str, str]:
        """Write the files to a new private folder; (spec to load, that folder)."""
        folder = tempfile.mkdtemp(prefix="cityseg-model-")
        for name, data in self.files.items():
            path = Path(folder) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return str(Path(folder) / self.load_name) + self.spec_suffix, folder


def absolute(path: str | os.PathLike) -> str:
    """``path`` as the driver means it: absolute, ``~`` expanded (not resolved through links, so
    a shared mount's path stays the name every node knows it by)."""
    return os.path.abspath(os.path.expanduser(str(path)))


def artifact_files(path: str | os.PathLike) -> tuple[dict[str, Path], str]:
    """(relative name → file, name to load) of everything the artifact at ``path`` is made of."""
    from ..artifacts import artifact_kind, openvino_files, sidecar_path

    path = Path(absolute(path))
    kind = artifact_kind(path)
    if kind == "openvino":
        xml, bin_, meta = openvino_files(path)
        folder = xml.parent.name
        files = {f"{folder}/{p.name}": p for p in (xml, bin_, meta) if p.is_file()}
        return files, (folder if path.is_dir() else f"{folder}/{xml.name}")
    files = {path.name: path}
    side = sidecar_path(path)
    if kind in ("tensorrt", "aoti") and side.is_file():
        files[side.name] = side
    if kind == "onnx":
        for extra in _onnx_external_data(path):
            files[extra.name] = extra
    return files, path.name


def _onnx_external_data(path: Path) -> list[Path]:
    """Files an ONNX model keeps its weights in (``save_as_external_data``), next to it."""
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors
    except ImportError:
        return []
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - the runtime's loader reports a bad graph better
        return []
    found = []
    for tensor in _get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    p = path.parent / entry.value
                    if p.is_file() and p not in found:
                        found.append(p)
    return found


def ship_model(spec: str) -> ShippedModel:
    """The artifact named by ``spec`` (``path`` or ``path@precision``), read into memory."""
    from ..runtime import parse_model_spec

    path, precision = parse_model_spec(spec)
    files, load_name = artifact_files(path)
    try:
        blobs = {name: p.read_bytes() for name, p in files.items()}
    except OSError as exc:
        raise CitysegError(f"{path}: cannot read the model ({exc.strerror})") from None
    return ShippedModel(blobs, load_name, f"@{precision}" if precision else "", absolute(path))


def load_shipped(shipped: ShippedModel, **kwargs):
    """In an actor: the Segmenter of a shipped model (``runtime.load`` keyword arguments).

    The files are written to a private folder, loaded, and removed at once (every backend holds
    the model in memory, or an open mapping, once loaded); messages and ``segmenter.path`` name
    the driver's file, not the copy.
    """
    from .. import runtime

    spec, folder = shipped.materialise()
    copy = str(Path(folder) / shipped.load_name)
    try:
        segmenter = runtime.load(spec, **kwargs)
    except CitysegError as exc:
        raise CitysegError(str(exc).replace(copy, shipped.origin).replace(folder, str(Path(shipped.origin).parent))
                           ) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    segmenter.path = Path(shipped.origin)
    return segmenter


# ---- can the workers see --out? -----------------------------------------------------------------
MARKER_PREFIX = ".cityseg-ray-visible-"


def out_marker(out: Path) -> Path:
    """Write a marker file into ``out`` (on the driver); actors look for it before writing."""
    marker = out / f"{MARKER_PREFIX}{uuid.uuid4().hex}"
    marker.write_text("written by the cityseg driver; removed when the job ends\n")
    return marker


def check_out_visible(marker: str) -> None:
    """In an actor: the driver's marker must be visible here, or this node writes elsewhere."""
    if not os.path.isfile(marker):
        import socket

        out = os.path.dirname(marker)
        raise CitysegError(f"--out {out}: a Ray worker on node {socket.gethostname()} does not see "
                           f"the driver's files there; outputs need a folder every node mounts at "
                           f"the same path (a shared filesystem)")

