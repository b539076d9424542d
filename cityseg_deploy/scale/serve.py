"""``cityseg serve MODEL``: the Segmenter behind HTTP on Ray Serve, with dynamic batching.

API (DESIGN.md): ``POST /v1/segment`` — body an encoded PNG/JPEG (``Content-Type: image/*``, at
most :data:`~cityseg_deploy.scale.codec.MAX_BODY_BYTES`), query ``format=labelIds|trainIds|
color|overlay`` (default labelIds) → ``image/png`` at the input's size, the file ``predict``
writes for that image; headers ``X-Model``, ``X-Precision``, ``X-Server-Latency-Ms``.  ``GET
/v1/health`` → JSON (model, backend, precision, label set, input size).  A bad request gets a
4xx JSON ``{"error": ...}`` and the replica goes on serving.

Batching: concurrent requests that reach one replica within ``batch_wait_ms`` run as one
``Segmenter.run`` call of up to ``max_batch`` images (``@serve.batch``); replicas spread over
the cluster.  Shutdown (SIGTERM, Ctrl-C) asks Serve to stop, which lets in-flight requests
finish first.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ray import serve

from .codec import (MAX_BODY_BYTES, BadRequest, check_content_type, check_length, decode_upload,
                    encode_answer, parse_format)

APP_NAME = "cityseg"


def _json(status: int, doc: dict, headers: dict[str, str] | None = None):
    from starlette.responses import Response

    return Response(json.dumps(doc), status_code=status, media_type="application/json", headers=headers)


class SegmentService:
    """One replica: one loaded Segmenter; requests batched by ``@serve.batch``."""

    def __init__(self, model: str, device: str = "cpu", threads: int | None = None,
                 max_batch: int = 8, batch_wait_ms: float = 5.0, max_body: int = MAX_BODY_BYTES,
                 runner_options: dict[str, Any] | None = None):
        from .. import runtime
        from ..evaluation.evaluate import label_set_of_model

        self.segmenter = runtime.load(model, device=device, threads=threads, **(runner_options or {}))
        self.labels = label_set_of_model(self.segmenter.meta, where=model)
        self.name = Path(model).name
        self.max_body = max_body
        self.max_batch = int(max_batch)
        self._segment_batch.set_max_batch_size(int(max_batch))
        self._segment_batch.set_batch_wait_timeout_s(float(batch_wait_ms) / 1000.0)
        self.batches: list[int] = []  # sizes of the last batches (health shows how batching goes)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _segment_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        preds, _, _ = self.segmenter.run(images)
        self.batches = (self.batches + [len(images)])[-100:]
        return preds

    def health(self) -> dict[str, Any]:
        seg = self.segmenter
        return {"status": "ok", "model": self.name, "backend": seg.backend, "precision": seg.precision,
                "device": seg.device, "label_set": self.labels.name, "num_classes": seg.num_classes,
                "classes": list(seg.meta.class_names), "input_size": list(seg.input_size),
                "max_batch": self.max_batch, "max_body_bytes": self.max_body, "pid": os.getpid(),
                "recent_batch_sizes": self.batches[-20:]}

    async def _read_body(self, request) -> bytes:
        from starlette.requests import ClientDisconnect

        check_length(request.headers.get("content-length"), self.max_body)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise BadRequest(413, f"body over the {self.max_body}-byte limit; send a smaller image")
                chunks.append(chunk)
        except ClientDisconnect:
            raise BadRequest(499, "client disconnected during the upload") from None
        return b"".join(chunks)

    async def __call__(self, request):
        from starlette.responses import Response

        start = time.perf_counter()
        path = request.url.path.rstrip("/")
        try:
            if path.endswith("/v1/health"):
                if request.method not in ("GET", "HEAD"):
                    raise BadRequest(405, "GET /v1/health")
                return _json(200, self.health())
            if not path.endswith("/v1/segment"):
                raise BadRequest(404, f"no route {request.url.path}; use POST /v1/segment or GET /v1/health")
            if request.method != "POST":
                raise BadRequest(405, "POST the image to /v1/segment")
            fmt = parse_format(request.query_params.get("format"))
            check_content_type(request.headers.get("content-type"))
            image = decode_upload(await self._read_body(request))
            labels = await self._segment_batch(image)
            body = encode_answer(labels, image, self.labels, fmt)
        except BadRequest as exc:
            return _json(exc.status, {"error": exc.message})
        except Exception as exc:  # a bug must not take the replica down; say what it was
            return _json(500, {"error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        ms = 1000.0 * (time.perf_counter() - start)
        return Response(body, media_type="image/png", headers={
            "X-Model": self.name, "X-Precision": self.segmenter.precision,
            "X-Backend": self.segmenter.backend, "X-Format": fmt,
            "X-Server-Latency-Ms": f"{ms:.2f}", "Server-Timing": f"segment;dur={ms:.2f}"})


def build_app(model: str, *, replicas: int = 1, gpus_per_replica: float = 0.0,
              cpus_per_replica: float = 1.0, max_batch: int = 8, batch_wait_ms: float = 5.0,
              device: str = "cpu", threads: int | None = None, max_body: int = MAX_BODY_BYTES,
              runner_options: dict[str, Any] | None = None):
    """The Serve application (not started): ``replicas`` copies of :class:`SegmentService`
    (``runner_options``: keyword options of each replica's runner, ``--runner-option``)."""
    if gpus_per_replica > 0 and device == "cpu":
        device = "cuda"
    deployment = serve.deployment(SegmentService).options(
        name="SegmentService", num_replicas=replicas,
        max_ongoing_requests=max(4 * max_batch, 16),
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica or None})
    return deployment.bind(str(model), device, threads, max_batch, batch_wait_ms, max_body,
                           dict(runner_options or {}))


def start(model: str, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
          **kwargs: Any) -> str:
    """Join/start a cluster, start Serve's HTTP proxy on ``host:port`` and deploy; returns the URL."""
    from ..artifacts import read_artifact_meta
    from ..errors import CitysegError
    from ..evaluation.evaluate import label_set_of_model
    from .cluster import connect
    from .ray_batch import _path_of

    meta, _ = read_artifact_meta(_path_of(model))  # a bad model fails before the cluster starts
    label_set_of_model(meta, where=str(model))
    connect(address, what="serve")
    try:
        serve.start(http_options={"host": host, "port": int(port)})
        serve.run(build_app(model, **kwargs), name=APP_NAME, route_prefix="/", blocking=False)
    except Exception as exc:  # port taken, replica failed to load the model ...
        raise CitysegError(f"serve: could not start on {host}:{port} "
                           f"({str(exc).strip().splitlines()[-1][:200]})") from None
    return f"http://{host}:{port}"


def serve_until_signal(url: str, echo: Callable[[str], None] = print) -> int:
    """Block until SIGTERM/SIGINT, then stop Serve (in-flight requests finish first); 0."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            pass
        echo("stopping: draining in-flight requests")
        # delete the application first: its replicas finish what they hold (Serve's graceful
        # shutdown) while the HTTP proxy is still up to carry the answers back; then the proxy
        serve.delete(APP_NAME, _blocking=True)
        serve.shutdown()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    echo("stopped")
    return 0
