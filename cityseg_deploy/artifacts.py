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

from .errors import CitysegError
from .fileio import recover_swap, write_text_atomic
from .models.checkpoint import ModelMeta

ONNX_META_KEY = "cityseg"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

KIND_BY_SUFFIX = {".pt": "torch", ".pth": "torch", ".onnx": "onnx", ".pt2": "aoti", ".xml": "openvino",
                  **{s: "tensorrt" for s in ENGINE_SUFFIXES}}


def default_io(meta: ModelMeta, **overrides: Any) -> dict[str, Any]:
    io = {"input": "float_nchw", "output": "logits", "precision": "fp32", "dynamic": False,
          "batch": 1, "size": list(meta.input_size)}
    io.update(overrides)
    return io


def artifact_kind(path: str | os.PathLike) -> str:
    """``torch`` | ``onnx`` | ``tensorrt`` | ``aoti`` | ``openvino`` — or a CitysegError."""
    path = Path(path)
    if not path.exists():  # an IR folder swap a kill interrupted: put the previous folder back
        recover_swap(path.parent if path.suffix.lower() == ".xml" else path)
    if path.is_dir():
        if path.name.endswith("_openvino_model") or any(path.glob("*.xml")):
            return "openvino"
        raise CitysegError(f"{path}: a folder, but not an OpenVINO IR folder (no .xml inside)")
    if not path.exists():
        raise CitysegError(f"{path}: no such file or folder")
    kind = KIND_BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(KIND_BY_SUFFIX)) + ", <name>_openvino_model/"
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


def unpack(text: str, where: str) -> tuple[ModelMeta, dict[str, Any]]:
    try:
        data = json.loads(text)
        return ModelMeta.from_dict(data["meta"]), dict(data["io"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CitysegError(f"{where}: unreadable cityseg metadata ({exc}); re-export the artifact") from None


def write_sidecar(path: str | os.PathLike, meta: ModelMeta, io: dict[str, Any]) -> Path:
    side = sidecar_path(path)
    write_text_atomic(side, pack(meta, io))
    return side


def read_artifact_meta(path: str | os.PathLike) -> tuple[ModelMeta, dict[str, Any]]:
    """The metadata of any artifact, wherever its kind keeps it."""
    path = Path(path)
    kind = artifact_kind(path)
    if kind == "torch":
        from .models.checkpoint import read_meta

        meta = read_meta(path)
        return meta, default_io(meta)
    if kind == "onnx":
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
    if kind == "openvino":
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
