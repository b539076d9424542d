"""The KServe / Triton v2 REST protocol's bodies for ``cityseg serve`` (no Ray, no HTTP server).

Why: standard clients (``tritonclient.http``, KServe's, load balancers probing
``/v2/health/ready``) speak this protocol; Triton's repository written by ``export --format
triton --preprocess --argmax`` speaks it with the same tensor names, so one client serves both.
Tensors: input ``images`` ``UINT8`` ``[N, H, W, 3]`` (RGB; any H, W — the service resizes as
``predict`` does), output ``labels`` ``UINT8`` ``[N, H, W]`` (trainIds).  Both the JSON
``data`` form and the binary-tensor extension (``Inference-Header-Content-Length``) are read
and written.  Every malformed body is a :class:`~cityseg_deploy.scale.codec.BadRequest` (400).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .codec import BadRequest

INPUT, OUTPUT = "images", "labels"
HEADER_LENGTH = "inference-header-content-length"
#: v2 datatype names this service reads as images (the picture must be 8-bit RGB)
DTYPES = {"UINT8": np.uint8}


@dataclass
class InferRequest:
    """A parsed v2 infer request: the images and how the answer is wanted."""

    images: list[np.ndarray]
    id: str | None
    binary_output: bool


def model_metadata(name: str, backend: str) -> dict[str, Any]:
    """``GET /v2/models/<name>``: what the model takes and gives."""
    return {"name": name, "versions": ["1"], "platform": f"cityseg_{backend}",
            "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, -1, -1, 3]}],
            "outputs": [{"name": OUTPUT, "datatype": "UINT8", "shape": [-1, -1, -1]}]}


def server_metadata() -> dict[str, Any]:
    """``GET /v2``: the server's name and the protocol extensions it implements."""
    from .. import __version__

    return {"name": "cityseg", "version": str(__version__), "extensions": ["binary_tensor_data"]}


def _header_json(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    if header_length is None:
        head, rest = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(400, f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        if not 0 < n <= len(body):
            raise BadRequest(400, f"Inference-Header-Content-Length {n} is outside the {len(body)}-byte body")
        head, rest = body[:n], body[n:]
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(400, f"the infer request's JSON does not parse ({str(exc)[:80]})") from None
    if not isinstance(doc, dict):
        raise BadRequest(400, "the infer request must be a JSON object with 'inputs'")
    return doc, rest


def parse_infer(body: bytes, header_length: str | None, *, max_pixels: int) -> InferRequest:
    """The images of a v2 infer request (JSON ``data`` or binary extension); 400 when malformed."""
    doc, rest = _header_json(body, header_length)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(400, f"give exactly one input, {INPUT!r} (UINT8 [N, H, W, 3])")
    spec = inputs[0]
    if spec.get("name") != INPUT:
        raise BadRequest(400, f"input {spec.get('name')!r}: this model's input is {INPUT!r}")
    if spec.get("datatype") not in DTYPES:
        raise BadRequest(400, f"datatype {spec.get('datatype')!r}: send UINT8 RGB pixels")
    shape = spec.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape)
            or shape[3] != 3):
        raise BadRequest(400, f"shape {shape!r}: expected [N, H, W, 3] with positive sizes")
    n, h, w, _ = shape
    if h * w > max_pixels:
        raise BadRequest(413, f"{h}x{w} is over the {max_pixels}-pixel limit")
    count = n * h * w * 3
    params = spec.get("parameters") or {}
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if size != count or len(rest) < size:
            raise BadRequest(400, f"binary_data_size {size!r}: the tensor needs {count} bytes, "
                                  f"the body carries {len(rest)}")
        flat = np.frombuffer(rest[:size], np.uint8)
    else:
        data = spec.get("data")
        if not isinstance(data, list):
            raise BadRequest(400, "the input carries no 'data' and no binary_data_size")
        try:
            flat = np.asarray(data, dtype=np.int64).reshape(-1)
        except (ValueError, TypeError):
            raise BadRequest(400, "'data' must be a (nested) list of integers 0-255") from None
        if flat.size != count or (flat.size and (flat.min() < 0 or flat.max() > 255)):
            raise BadRequest(400, f"'data' holds {flat.size} values (expected {count}, each 0-255)")
        flat = flat.astype(np.uint8)
    images = list(flat.reshape(n, h, w, 3))
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list) or any(not isinstance(o, dict) or o.get("name") != OUTPUT for o in outputs):
        raise BadRequest(400, f"outputs: this model gives one output, {OUTPUT!r}")
    binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    for o in outputs:
        binary = bool((o.get("parameters") or {}).get("binary_data", binary))
    rid = doc.get("id")
    return InferRequest(images, str(rid) if rid is not None else None, binary)


def infer_response(name: str, labels: list[np.ndarray], req: InferRequest) -> tuple[bytes, dict[str, str]]:
    """The v2 response body and its headers for the label maps (one per image, same size)."""
    stacked = np.stack(labels).astype(np.uint8)
    out: dict[str, Any] = {"name": OUTPUT, "datatype": "UINT8", "shape": list(stacked.shape)}
    doc: dict[str, Any] = {"model_name": name, "model_version": "1", "outputs": [out]}
    if req.id is not None:
        doc["id"] = req.id
    if not req.binary_output:
        out["data"] = stacked.reshape(-1).tolist()
        return json.dumps(doc).encode(), {"content-type": "application/json"}
    raw = stacked.tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps(doc).encode()
    return head + raw, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
