"""``cityseg serve MODEL``: the Segmenter behind HTTP on Ray Serve — one named application per model.

API (DESIGN.md), under the application's route prefix (``/`` for the first application on a
cluster, ``/<name>`` otherwise): ``POST /v1/segment`` — body an encoded PNG/JPEG
(``Content-Type: image/*``), query ``format=labelIds|trainIds|color|overlay`` → ``image/png`` at
the input's size, the file ``predict`` writes; ``GET /v1/health`` → JSON with every replica;
``GET /metrics`` (Prometheus); KServe/Triton v2: ``/v2``, ``/v2/health/live|ready``,
``/v2/models/<name>[/ready]``, ``POST /v2/models/<name>/infer`` (:mod:`.kserve`).

Why two deployments per application: the **ingress** (no CPU reserved, many concurrent requests)
reads bodies under a timeout, enforces a per-client limit, answers health, metrics and
metadata itself, and only hands *decoded* images to the **model** deployment, whose replicas run
``@serve.batch`` batches under a bounded Ray Serve queue (``max_queued_requests`` → 503 with
``Retry-After``).  A client that sends headers and then stalls therefore holds an ingress slot
for at most ``body_timeout_s`` and never a model slot: idle clients cannot starve the model or
the health check (issue 27 item 2).  Replicas report batch sizes and model time to the
application's *board* actor, so health and ``/metrics`` show every replica.

Ray Serve runs one HTTP proxy per cluster on one port: a second ``cityseg serve`` on a cluster
uses that port (and says so), refuses another ``--port``, a taken name or route prefix, and on
SIGTERM deletes only its own application (Serve itself stops with the last application).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ray import serve

from ..errors import CitysegError
from .codec import (MAX_BODY_BYTES, BadRequest, check_content_type, check_length, decode_upload,
                    encode_answer, parse_format)

NAMESPACE = "cityseg-serve"
DEFAULT_PORT = 8000
#: largest H*W of one v2 input tensor (the body limit bounds N*H*W*3 too)
MAX_TENSOR_PIXELS = 64_000_000


@dataclass
class ServeOptions:
    """How one application serves (every field a CLI option of ``cityseg serve``)."""

    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    device: str = "cpu"
    threads: int | None = None  # None: the replica's CPUs (its budget), not every core
    max_body: int = MAX_BODY_BYTES
    max_queue: int = 64  # images waiting for a model replica beyond those running; then 503
    timeout_s: float = 60.0  # whole request; then 504
    body_timeout_s: float = 10.0  # the body must arrive within this; then 408
    max_per_client: int = 64  # concurrent requests from one client address; then 429
    retry_after_s: float = 1.0
    runner_options: dict[str, Any] = field(default_factory=dict)  # --runner-option: the replicas' runner

    def replica_threads(self) -> int | None:
        if self.threads:
            return int(self.threads)
        if self.gpus_per_replica > 0 or str(self.device).startswith("cuda"):
            return None
        return max(1, int(round(self.cpus_per_replica)))


class Refused(BadRequest):
    """A request turned away for load, not for its content (carries ``Retry-After``)."""

    def __init__(self, status: int, message: str, retry_after_s: float):
        super().__init__(status, message)
        self.headers = {"Retry-After": str(max(1, int(np.ceil(retry_after_s))))}


def _json(status: int, doc: dict, headers: dict[str, str] | None = None):
    from starlette.responses import Response

    return Response(json.dumps(doc), status_code=status, media_type="application/json", headers=headers)


# ---- the board: what every replica reports ------------------------------------------------------
class Board:
    """One per application (a Ray actor, no CPU): the replicas' last reports, keyed by replica."""

    def __init__(self) -> None:
        self.replicas: dict[str, dict[str, Any]] = {}

    def report(self, replica: str, doc: dict[str, Any]) -> None:
        self.replicas[replica] = dict(doc, reported_at=time.time())

    def forget(self, replica: str) -> None:
        self.replicas.pop(replica, None)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.replicas


# ---- the model deployment ------------------------------------------------------------------------
class ModelReplica:
    """One model copy: a Segmenter with ``threads`` CPU threads; images batched by ``@serve.batch``."""

    def __init__(self, model: str, device: str, threads: int | None, max_batch: int, batch_wait_ms: float,
                 board: Any, runner_options: dict[str, Any] | None = None):
        from .. import runtime

        self.segmenter = runtime.load(model, device=device, threads=threads, **(runner_options or {}))
        self.board, self.max_batch = board, int(max_batch)
        self.segment.set_max_batch_size(self.max_batch)
        self.segment.set_batch_wait_timeout_s(float(batch_wait_ms) / 1000.0)
        try:
            self.id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (a unit test)
            self.id = f"pid{os.getpid()}"
        self.batch_counts: dict[int, int] = {}
        self.recent: list[int] = []
        self.images, self.model_seconds = 0, 0.0
        self._report()

    def _report(self) -> None:
        import ray

        seg = self.segmenter
        doc = {"replica": self.id, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()[:12],
               "backend": seg.backend, "precision": seg.precision, "device": seg.device,
               "threads": seg.threads if hasattr(seg, "threads") else None,
               "runner": seg.runner() if hasattr(seg, "runner") else None,
               "graph_max_batch": seg.max_batch, "batch_counts": dict(self.batch_counts),
               "recent_batch_sizes": self.recent[-20:], "images": self.images,
               "model_seconds": round(self.model_seconds, 4)}
        self.board.report.remote(self.id, doc)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def segment(self, images: list[np.ndarray]) -> list[np.ndarray]:
        start = time.perf_counter()
        # in a thread: the replica's event loop keeps accepting requests into the next batch
        preds, _, _ = await asyncio.to_thread(self.segmenter.run, images)
        self.model_seconds += time.perf_counter() - start
        n = len(images)
        self.images += n
        self.batch_counts[n] = self.batch_counts.get(n, 0) + 1
        self.recent = (self.recent + [n])[-100:]
        self._report()
        return list(preds)

    def __del__(self) -> None:  # Serve calls it when it stops the replica
        try:
            self.board.forget.remote(self.id)
        except Exception:
            pass


# ---- the ingress deployment ----------------------------------------------------------------------
class Ingress:
    """HTTP in front of the model: limits, health, metrics, v1 and v2 routes."""

    def __init__(self, model_handle: Any, name: str, model: str, board: Any, options: dict[str, Any]):
        from ..artifacts import read_artifact_meta
        from ..evaluation.evaluate import label_set_of_model
        from ..runtime import parse_model_spec
        from .serve_metrics import ServeMetrics

        self.model, self.name, self.board = model_handle, name, board
        self.opts = ServeOptions(**options)
        path = parse_model_spec(model)[0]
        self.meta, self.io = read_artifact_meta(path)
        self.labels = label_set_of_model(self.meta, where=path)
        self.file = Path(path).name
        self.metrics = ServeMetrics(name)
        self.clients: dict[str, int] = {}
        self.queued = 0
        self._first: dict[str, Any] = {}

    # -- replicas' reports
    async def _replicas(self) -> dict[str, dict[str, Any]]:
        try:
            reps = await asyncio.wait_for(self.board.snapshot.remote(), timeout=5.0)
        except Exception:  # the board is gone (its serve process ended): say so, do not hang
            return {}
        if reps:
            self._first = next(iter(reps.values()))
        return reps

    async def _first_replica(self) -> dict[str, Any]:
        """One replica's report (backend, precision) for answer headers; asked once, then kept."""
        if not self._first:
            await self._replicas()
        return self._first

    async def health(self) -> dict[str, Any]:
        reps = await self._replicas()
        first = next(iter(reps.values()), {})
        o = self.opts
        return {"status": "ok" if reps else "starting", "name": self.name, "model": self.file,
                "backend": first.get("backend"), "precision": first.get("precision", self.io.get("precision")),
                "runner": first.get("runner"),
                "device": first.get("device", o.device), "label_set": self.labels.name,
                "num_classes": len(self.meta.class_names), "classes": list(self.meta.class_names),
                "input_size": list(self.io.get("size") or self.meta.input_size), "max_batch": o.max_batch,
                "max_queue": o.max_queue, "timeout_s": o.timeout_s, "body_timeout_s": o.body_timeout_s,
                "max_body_bytes": o.max_body, "queue_depth": self.queued,
                "recent_batch_sizes": [n for r in reps.values() for n in r.get("recent_batch_sizes", [])][-20:],
                "replicas": sorted(reps.values(), key=lambda r: str(r.get("replica")))}

    # -- request plumbing
    async def _read_body(self, request, deadline: float) -> bytes:
        from starlette.requests import ClientDisconnect

        check_length(request.headers.get("content-length"), self.opts.max_body)
        limit = self.opts.max_body

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(413, f"body over the {limit}-byte limit; send a smaller image")
                chunks.append(chunk)
            return b"".join(chunks)

        wait = max(0.0, min(self.opts.body_timeout_s, deadline - time.monotonic()))
        self.metrics.uploads.labels(self.name).inc()
        try:
            return await asyncio.wait_for(read(), timeout=wait)
        except asyncio.TimeoutError:
            self.metrics.rejected.labels(self.name, "body_timeout").inc()
            raise BadRequest(408, f"the request body did not arrive within {wait:g} s") from None
        except ClientDisconnect:
            raise BadRequest(499, "client disconnected during the upload") from None
        finally:
            self.metrics.uploads.labels(self.name).dec()

    async def _segment(self, images: list[np.ndarray], deadline: float) -> list[np.ndarray]:
        from ray.serve.exceptions import BackPressureError

        self.queued += len(images)
        self.metrics.queue.labels(self.name).set(self.queued)
        responses = [self.model.segment.remote(im) for im in images]
        try:
            wait = max(0.0, deadline - time.monotonic())
            return list(await asyncio.wait_for(asyncio.gather(*responses), timeout=wait))
        except BackPressureError:
            _cancel(responses)
            self.metrics.rejected.labels(self.name, "queue_full").inc()
            raise Refused(503, f"the model's queue is full ({self.opts.max_queue} waiting); retry "
                               f"later", self.opts.retry_after_s) from None
        except asyncio.TimeoutError:
            _cancel(responses)  # frees the queue of what nobody waits for any more
            self.metrics.rejected.labels(self.name, "timeout").inc()
            raise Refused(504, f"no answer within the {self.opts.timeout_s:g} s request timeout",
                          self.opts.retry_after_s) from None
        finally:
            self.queued -= len(images)
            self.metrics.queue.labels(self.name).set(self.queued)

    def _client_slot(self, request) -> str:
        host = request.client.host if request.client else "?"
        if self.clients.get(host, 0) >= self.opts.max_per_client:
            self.metrics.rejected.labels(self.name, "per_client").inc()
            raise Refused(429, f"{self.opts.max_per_client} requests from {host} already in progress",
                          self.opts.retry_after_s)
        self.clients[host] = self.clients.get(host, 0) + 1
        return host

    def _release(self, host: str) -> None:
        left = self.clients.get(host, 1) - 1
        if left > 0:
            self.clients[host] = left
        else:
            self.clients.pop(host, None)

    async def __call__(self, request):
        from starlette.responses import Response

        start = time.monotonic()
        deadline = start + self.opts.timeout_s
        path = request.scope.get("path", request.url.path)
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        path = "/" + path.strip("/")
        route, host = _route_label(path, self.name), None
        status = 500
        try:
            if request.method == "POST":
                host = self._client_slot(request)
            answer = await self._route(request, path, deadline)
        except BadRequest as exc:
            answer = _json(exc.status, {"error": exc.message}, getattr(exc, "headers", None))
        except Exception as exc:  # a bug must not take the replica down; say what it was
            answer = _json(500, {"error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        finally:
            if host is not None:
                self._release(host)
        status = getattr(answer, "status_code", 200)
        seconds = time.monotonic() - start
        self.metrics.observe(route, status, seconds)
        if isinstance(answer, Response) and status == 200 and route in ("segment", "infer"):
            answer.headers["X-Server-Latency-Ms"] = f"{1000 * seconds:.2f}"
            answer.headers["Server-Timing"] = f"segment;dur={1000 * seconds:.2f}"
        return answer

    async def _route(self, request, path: str, deadline: float):
        from starlette.responses import Response

        from . import kserve
        from .serve_metrics import CONTENT_TYPE

        method = request.method
        if path == "/v1/health":
            _allow(method, ("GET", "HEAD"), "GET /v1/health")
            return _json(200, await self.health())
        if path == "/v1/segment":
            _allow(method, ("POST",), "POST the image to /v1/segment")
            fmt = parse_format(request.query_params.get("format"))
            check_content_type(request.headers.get("content-type"))
            body = await self._read_body(request, deadline)
            image = await asyncio.to_thread(decode_upload, body)
            (labels,) = await self._segment([image], deadline)
            png = await asyncio.to_thread(encode_answer, labels, image, self.labels, fmt)
            first = await self._first_replica()
            return Response(png, media_type="image/png", headers={
                "X-Model": self.file, "X-Precision": str(first.get("precision", "")),
                "X-Backend": str(first.get("backend", "")), "X-Format": fmt})
        if path == "/metrics":
            _allow(method, ("GET",), "GET /metrics")
            text = self.metrics.render(await self._replicas(), self.opts.max_batch)
            return Response(text, media_type=CONTENT_TYPE)
        if path == "/v2":
            return _json(200, kserve.server_metadata())
        if path == "/v2/health/live":
            return _json(200, {"live": True})
        if path == "/v2/health/ready":
            ready = bool(await self._replicas())
            return _json(200 if ready else 503, {"ready": ready})
        prefix = f"/v2/models/{self.name}"
        if path.startswith("/v2/models/") and not (path == prefix or path.startswith(prefix + "/")):
            raise BadRequest(404, f"this server serves model {self.name!r} (GET {prefix})")
        if path in (prefix, prefix + "/versions/1"):
            first = await self._first_replica()
            return _json(200, kserve.model_metadata(self.name, str(first.get("backend", "unknown"))))
        if path in (prefix + "/ready", prefix + "/versions/1/ready"):
            ready = bool(await self._replicas())
            return _json(200 if ready else 503, {"name": self.name, "ready": ready})
        if path in (prefix + "/infer", prefix + "/versions/1/infer"):
            _allow(method, ("POST",), f"POST {prefix}/infer")
            body = await self._read_body(request, deadline)
            req = kserve.parse_infer(body, request.headers.get(kserve.HEADER_LENGTH),
                                     max_pixels=MAX_TENSOR_PIXELS)
            labels = await self._segment(req.images, deadline)
            data, headers = kserve.infer_response(self.name, labels, req)
            return Response(data, headers=headers)
        raise BadRequest(404, f"no route {path}; use POST /v1/segment, GET /v1/health, GET /metrics "
                              f"or the v2 routes under {prefix}")


def _cancel(responses: list) -> None:
    for r in responses:
        try:
            r.cancel()
        except Exception:  # already answered or failed
            pass


def _allow(method: str, allowed: tuple[str, ...], hint: str) -> None:
    if method not in allowed:
        raise BadRequest(405, hint)


def _route_label(path: str, name: str) -> str:
    """A bounded label for metrics (never the raw path: clients choose paths)."""
    table = {"/v1/segment": "segment", "/v1/health": "health", "/metrics": "metrics",
             f"/v2/models/{name}/infer": "infer", f"/v2/models/{name}/versions/1/infer": "infer"}
    if path in table:
        return table[path]
    return "v2" if path.startswith("/v2") else "other"


# ---- building and starting ---------------------------------------------------------------------
def app_name(model: str, name: str | None = None) -> str:
    """``--name``, or the model file's stem, as Serve application and v2 model name."""
    from ..export.triton import _safe_name
    from ..runtime import parse_model_spec

    path = Path(parse_model_spec(model)[0])
    return _safe_name(name or path.name.removesuffix("_openvino_model").rsplit(".", 1)[0])


def static_batch(model: str) -> int | None:
    """The batch size a static graph is fixed to, or None when the batch is free."""
    from ..artifacts import artifact_kind, read_artifact_meta
    from ..deploy import artifact_of
    from ..runtime import parse_model_spec

    path = artifact_of(parse_model_spec(model)[0])  # a deploy folder: the artifact it chose
    kind = artifact_kind(path)
    if kind == "torch":
        return None
    if kind == "onnx":
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        dim = next(v for v in graph.input if v.name not in inits).type.tensor_type.shape.dim[0]
        return int(dim.dim_value) if dim.HasField("dim_value") else None
    _, io = read_artifact_meta(path)
    return None if io.get("dynamic") else int(io.get("batch", 1) or 1)


def check_batching(model: str, max_batch: int) -> None:
    """Refuse ``--max-batch > 1`` on a static graph: a "batch" would run as one call per image."""
    fixed = static_batch(model)
    if fixed is not None and max_batch > fixed:
        raise CitysegError(
            f"--max-batch {max_batch}: {model} is a static batch-{fixed} graph, so a batch of "
            f"{max_batch} would run as {-(-max_batch // fixed)} calls; export a batch-dynamic graph "
            f"(cityseg export CKPT --format onnx --dynamic) or serve with --max-batch {fixed}")


def build_app(model: str, name: str, board: Any, options: ServeOptions):
    """The Serve application (not started): an ingress and ``replicas`` model copies."""
    o = options
    device = "cuda" if o.gpus_per_replica > 0 and o.device == "cpu" else o.device
    actor: dict[str, Any] = {"num_cpus": o.cpus_per_replica}
    if o.gpus_per_replica:  # a None here breaks Serve 2.60's controller (usage recording)
        actor["num_gpus"] = o.gpus_per_replica
    replica = serve.deployment(ModelReplica).options(
        name="Model", num_replicas=o.replicas, max_ongoing_requests=2 * o.max_batch,
        max_queued_requests=o.max_queue,  # the ingress turns the BackPressureError into 503 + Retry-After
        graceful_shutdown_timeout_s=max(5.0, o.timeout_s),
        ray_actor_options=actor)
    ingress = serve.deployment(Ingress).options(
        name="Ingress", num_replicas=1, max_ongoing_requests=max(1024, 4 * o.max_per_client),
        graceful_shutdown_timeout_s=max(5.0, o.timeout_s), ray_actor_options={"num_cpus": 0})
    model_app = replica.bind(model, device, o.replica_threads(), o.max_batch, o.batch_wait_ms, board,
                             dict(o.runner_options))
    return ingress.bind(model_app, name, model, board, asdict(o))


@dataclass
class Served:
    """What ``start`` deployed: the URL clients use and what to delete on the way out."""

    name: str
    route_prefix: str
    host: str
    port: int
    joined_running_serve: bool
    board: Any = None
    private_cluster: bool = False

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}{self.route_prefix.rstrip('/')}"


def _absolute(model: str) -> str:
    """The model spec with an absolute path: replicas run in other folders (and on other nodes)."""
    from ..runtime import parse_model_spec

    path, precision = parse_model_spec(model)
    absolute = str(Path(path).expanduser().resolve())
    return f"{absolute}@{precision}" if precision else absolute


def _running_serve() -> dict[str, Any] | None:
    """The cluster's Serve details (HTTP options, applications), or None when Serve is not running."""
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client(raise_if_no_controller_running=False)
    except Exception:
        return None
    return None if client is None else client.get_serve_details()


def _plan(name: str, route_prefix: str | None, host: str, port: int | None,
          details: dict[str, Any] | None) -> tuple[str, str, int]:
    """Route prefix, host and port for this application — or a CitysegError that says why not."""
    if route_prefix is not None and not (route_prefix == "/" or (route_prefix.startswith("/")
                                                                 and not route_prefix.endswith("/"))):
        raise CitysegError(f"--route-prefix {route_prefix!r}: start with '/' and end without one (e.g. /{name})")
    if details is None:
        return route_prefix or "/", host, port or DEFAULT_PORT
    http = details.get("http_options") or {}
    apps = details.get("applications") or {}
    running_host, running_port = str(http.get("host") or host), int(http.get("port") or DEFAULT_PORT)
    if port is not None and port != running_port:
        raise CitysegError(f"--port {port}: Ray Serve already runs on this cluster with its HTTP proxy on "
                           f":{running_port} (one port per cluster); drop --port to add this model there "
                           f"under its own route prefix, or use another cluster")
    if name in apps:
        raise CitysegError(f"an application named {name!r} already serves on this cluster "
                           f"(route {apps[name].get('route_prefix')}); choose another --name (if its "
                           f"serve process was killed, remove it with: serve shutdown --address ...)")
    taken = {str(a.get("route_prefix")): n for n, a in apps.items() if a.get("route_prefix")}
    prefix = route_prefix or ("/" if "/" not in taken else f"/{name}")
    if prefix in taken:
        raise CitysegError(f"--route-prefix {prefix}: taken by application {taken[prefix]!r} on this "
                           f"cluster; choose another")
    return prefix, running_host, running_port


def _probe(url: str, name: str, deadline: float) -> None:
    """The health route answers with *this* application's name, or a CitysegError (no lying URL)."""
    import urllib.error
    import urllib.request

    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/v1/health", timeout=5) as resp:
                doc = json.loads(resp.read())
            if doc.get("name") == name and doc.get("status") == "ok":
                return
            last = (f"it answers for {doc.get('name') or doc.get('model')!r}" if doc.get("name") != name
                    else "no model replica is up yet")
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            last = str(exc)[:120]
        time.sleep(0.5)
    raise CitysegError(f"serve: {url}/v1/health does not answer for {name!r} ({last}); is the port "
                       f"taken by another program or another cluster's Serve?")


def start(model: str, *, name: str | None = None, route_prefix: str | None = None,
          host: str = "127.0.0.1", port: int | None = None, address: str | None = None,
          options: ServeOptions | None = None) -> Served:
    """Join/start a cluster, deploy this model as its own application and check it answers."""
    import ray

    from ..artifacts import read_artifact_meta
    from ..evaluation.evaluate import label_set_of_model
    from ..runtime import parse_model_spec
    from .cluster import connect

    options = options or ServeOptions()
    model = _absolute(model)
    path = parse_model_spec(model)[0]
    meta, _ = read_artifact_meta(path)  # a bad model fails before the cluster starts
    label_set_of_model(meta, where=path)
    check_batching(model, options.max_batch)
    name = app_name(model, name)
    connect(address, what="serve")
    details = _running_serve()
    prefix, host, port = _plan(name, route_prefix, host, port, details)
    try:
        if details is None:
            serve.start(http_options={"host": host, "port": int(port)})
        board = ray.remote(num_cpus=0)(Board).options(name=f"board:{name}", namespace=NAMESPACE).remote()
        serve.run(build_app(model, name, board, options), name=name, route_prefix=prefix, blocking=False)
    except CitysegError:
        raise
    except Exception as exc:  # port taken, replica failed to load the model ...
        raise CitysegError(f"serve: could not start {name!r} on {host}:{port} "
                           f"({str(exc).strip().splitlines()[-1][:200]})") from None
    served = Served(name, prefix, host, port, details is not None, board, private_cluster=address is None)
    try:
        _probe(served.url, name, time.monotonic() + 120)
    except CitysegError:
        _stop(served, private_cluster=served.private_cluster)
        raise
    return served


def _stop(served: Served, *, private_cluster: bool) -> None:
    """Delete this application only (its replicas drain); on a shared cluster, stop Serve when
    this was its last application (a private cluster goes down with this process anyway)."""
    try:
        serve.delete(served.name, _blocking=True)
    except Exception:  # already gone (the cluster went down first)
        return
    if private_cluster:
        return
    details = _running_serve()
    if details is not None and not details.get("applications"):
        _shutdown_serve()


def _shutdown_serve(timeout_s: float = 30.0) -> None:
    """Stop Serve's controller and proxies without ``serve.shutdown()``'s retried-task warning.

    Why: ``serve.shutdown`` waits on a controller task that can only end by the controller being
    killed, and Ray prints "graceful_shutdown failed ... retried" for it; asking without waiting
    and watching the named actor go is the same shutdown, quietly.
    """
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve.context import _get_global_client, _set_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return
    client._controller.graceful_shutdown.remote(False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:
            break
        time.sleep(0.2)
    _set_global_client(None)


def service_runner(url: str, timeout: float = 10.0) -> str | None:
    """The runner a replica loaded (from ``GET /v1/health``), for the serve command's runner
    line; None when the health answer does not come or no replica reported yet (the server
    still serves)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v1/health", timeout=timeout) as answer:
            return json.loads(answer.read().decode()).get("runner")
    except (OSError, ValueError):
        return None


def serve_until_signal(served: Served, echo: Callable[[str], None] = print) -> int:
    """Block until SIGTERM/SIGINT, then delete this application (in-flight requests finish first);
    0.  If the application or the cluster goes away under us: one line, 2."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        last_check = time.monotonic()
        while not stop.wait(0.5):
            if time.monotonic() - last_check < 5.0:
                continue
            last_check = time.monotonic()
            if not _still_deployed(served.name):
                echo(f"error: application {served.name!r} is no longer on the cluster (deleted, or "
                     f"Serve/the cluster stopped); exiting")
                return 2
        echo(f"stopping {served.name}: draining in-flight requests")
        _stop(served, private_cluster=served.private_cluster)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    echo("stopped")
    return 0


def _still_deployed(name: str) -> bool:
    try:
        details = _running_serve()
    except Exception:
        return False
    return details is not None and name in (details.get("applications") or {})
