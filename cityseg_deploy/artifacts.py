"""Which kind of artifact a path is, and the metadata every artifact carries.

Export writes it, the runtime reads it: one place decides where the metadata lives per kind.

- checkpoint ``.pt``: inside the file (``meta``), io = float NCHW in, logits out.
- ONNX ``.onnx``: ``metadata_props["cityseg"]`` = JSON ``{"meta": ..., "io": ...}``.
- OpenVINO IR: folder ``<name>_openvino_model/`` with ``<name>.xml``, ``<name>.bin`` and
  ``metadata.json`` (``{"meta", "io"}``); a path to the ``.xml`` finds the folder's file.
- TensorRT engine (``.engine``/``.plan``/``.trt``) and AOTInductor ``.pt2``: a sidecar
  ``<file>.json`` (the engine itself stays a pure TensorRT plan that trtexec/Triton can load).

``io`` keys: ``input`` ("float_nchw" | "uint8_nhwc"), ``output`` ("logits" | "labels"),
``precision`` ("fp32" | "fp16" | "bf16" | "int8"), ``dynamic`` (bool), ``batch`` (int),
``size`` ([H, W]), plus free-form provenance (``source_sha256``, versions).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import formats
from .errors import CitysegError
from .fileio import recover_pair, recover_swap, write_text_atomic
from .models.checkpoint import ModelMeta
from .precision import PRECISIONS

ONNX_META_KEY = "cityseg"


def default_io(meta: ModelMeta, **overrides: Any) -> dict[str, Any]:
    io = {"input": "float_nchw", "output": "logits", "precision": "fp32", "dynamic": False,
          "batch": 1, "size": list(meta.input_size)}
    io.update(overrides)
    return io


def artifact_kind(path: str | os.PathLike) -> str:
    """``torch`` | ``onnx`` | ``tensorrt`` | ``aoti`` | ``openvino`` (a format name, formats.py)
    — or a CitysegError."""
    path = Path(path)
    by_suffix = formats.kind_by_suffix()
    folders = [f for f in formats.runnable() if f.folder]
    if by_suffix.get(path.suffix.lower()) in ("aoti", "tensorrt"):
        recover_pair(path, sidecar_path(path))  # a package + sidecar swap a kill interrupted
    if not path.exists():  # an IR folder swap a kill interrupted: put the previous folder back
        in_folder = any(by_suffix.get(path.suffix.lower()) == f.name for f in folders)
        recover_swap(path.parent if in_folder else path)
    if path.is_dir():
        from .deploy import artifact_of, is_deploy_folder

        if is_deploy_folder(path):  # cityseg optimize's folder: the kind of the artifact it chose
            return artifact_kind(artifact_of(path))
        for fmt in folders:
            if path.name.endswith(fmt.folder) or any(path.glob(f"*{fmt.suffixes[0]}")):
                return fmt.name
        raise CitysegError(f"{path}: a folder, but not an OpenVINO IR folder (no .xml inside)")
    if not path.exists():
        raise CitysegError(f"{path}: no such file or folder")
    kind = by_suffix.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(by_suffix)) + "".join(f", <name>{f.folder}/" for f in folders)
        raise CitysegError(f"{path}: unknown artifact kind {path.suffix!r}; cityseg reads {known}")
    return kind



def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def openvino_files(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(xml, bin, metadata.json) of an IR folder or of its ``.xml``."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        xmls = sorted(folder.glob("*.xml"))
        if not xmls:
            raise CitysegError(f"{folder}: no .xml in this OpenVINO IR folder")
        xml = xmls[0]
    else:
        xml = path
    return xml, xml.with_suffix(".bin"), folder / "metadata.json"


def pack(meta: ModelMeta, io: dict[str, Any]) -> str:
    return json.dumps({"meta": meta.to_dict(), "io": io}, sort_keys=True)


IO_CHOICES = {"input": ("float_nchw", "uint8_nhwc"), "output": ("logits", "labels"), "precision": PRECISIONS}


def _is_int(v: Any, low: int = 1, high: int = 1 << 20) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _is_num(v: Any) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_meta_io(meta: ModelMeta, io: dict[str, Any], where: str) -> None:
    """Types and ranges of every field later stages use, so a hand-edited or damaged metadata
    block is one clear error here rather than a TypeError deep in a backend."""
    def bad(field: str, want: str) -> CitysegError:
        return CitysegError(f"{where}: metadata field {field!r} must be {want}; re-export the artifact")

    if not isinstance(meta.arch, str) or not isinstance(meta.label_set, str):
        raise bad("arch/label_set", "a string")
    if not isinstance(meta.arch_args, dict):
        raise bad("arch_args", "a mapping")
    if not isinstance(meta.class_names, list) or not 1 <= len(meta.class_names) <= 255 \
            or not all(isinstance(c, str) for c in meta.class_names):
        raise bad("class_names", "a list of 1 to 255 names")
    if not isinstance(meta.palette, list) or len(meta.palette) < len(meta.class_names) or not all(
            isinstance(c, list) and len(c) == 3 and all(_is_int(v, 0, 255) for v in c) for c in meta.palette):
        raise bad("palette", "one [r, g, b] (0-255) per class")
    for field in ("mean", "std"):
        value = getattr(meta, field)
        if not isinstance(value, list) or len(value) != 3 or not all(_is_num(v) for v in value) \
                or (field == "std" and not all(v > 0 for v in value)):
            raise bad(field, "three finite numbers" + (" above 0" if field == "std" else ""))
    if not isinstance(meta.input_size, list) or len(meta.input_size) != 2 \
            or not all(_is_int(v, 1, 16384) for v in meta.input_size):
        raise bad("input_size", "[height, width], each 1 to 16384")
    if io.get("size") is not None and (not isinstance(io["size"], list) or len(io["size"]) != 2
                                       or not all(_is_int(v, 1, 16384) for v in io["size"])):
        raise bad("size", "[height, width], each 1 to 16384")
    if "batch" in io and not _is_int(io["batch"], 1, 4096):
        raise bad("batch", "an integer from 1 to 4096")
    if "dynamic" in io and not isinstance(io["dynamic"], bool):
        raise bad("dynamic", "true or false")
    for field, choices in IO_CHOICES.items():
        if field in io and io[field] not in choices:
            raise bad(field, " or ".join(choices))
    for field in ("input_name", "output_name", "device"):
        if field in io and not isinstance(io[field], str):
            raise bad(field, "a string")


def unpack(text: str, where: str) -> tuple[ModelMeta, dict[str, Any]]:
    try:
        data = json.loads(text)
        meta, io = ModelMeta.from_dict(data["meta"], where=where), dict(data["io"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CitysegError(f"{where}: unreadable cityseg metadata ({type(exc).__name__}: "
                           f"{str(exc)[:120]}); re-export the artifact") from None
    except RecursionError:
        raise CitysegError(f"{where}: unreadable cityseg metadata (nested too deeply); "
                           "re-export the artifact") from None
    check_meta_io(meta, io, where)
    return meta, io


def write_sidecar(path: str | os.PathLike, meta: ModelMeta, io: dict[str, Any]) -> Path:
    side = sidecar_path(path)
    write_text_atomic(side, pack(meta, io))
    return side


def read_artifact_meta(path: str | os.PathLike, kind: str | None = None) -> tuple[ModelMeta, dict[str, Any]]:
    """The metadata of any artifact, wherever its kind keeps it (``kind``: for a file not under
    its final name, such as an export's temporary, whose suffix does not say it)."""
    from .deploy import artifact_of

    path = artifact_of(path)  # a deploy folder: its chosen artifact
    kind = kind or artifact_kind(path)
    place = formats.get(kind).metadata
    if place == "checkpoint":
        from .models.checkpoint import read_meta

        meta = read_meta(path)
        return meta, default_io(meta)
    if place == "onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise CitysegError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
        props = {p.key: p.value for p in model.metadata_props}
        if ONNX_META_KEY not in props:
            raise CitysegError(f"{path}: ONNX file without cityseg metadata; export it with "
                               f"'cityseg export CKPT --format onnx'")
        return unpack(props[ONNX_META_KEY], str(path))
    if place == "folder":
        xml, binary, meta_file = openvino_files(path)
        for needed in (xml, binary, meta_file):
            if not needed.is_file():
                raise CitysegError(f"{needed}: missing from the OpenVINO IR; re-export it with "
                                   f"'cityseg export CKPT --format openvino'")
        return unpack(meta_file.read_text(), str(meta_file))
    side = sidecar_path(path)
    if not side.is_file():
        raise CitysegError(f"{side}: metadata sidecar missing next to {path.name}; re-export it")
    return unpack(side.read_text(), str(side))
