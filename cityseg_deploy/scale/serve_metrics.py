"""Prometheus ``/metrics`` of ``cityseg serve``: what the HTTP front saw and what the replicas ran.

Why two sources: requests, latency, uploads and the model queue are counted where requests enter
(the ingress); batch sizes and model time are counted where the model runs (each replica), which
report them to the application's board actor.  :meth:`ServeMetrics.render` joins both into one
Prometheus text page, so one scrape sees every replica (not the one a load balancer picked).
"""
from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CollectorRegistry, disable_created_metrics, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

disable_created_metrics()  # the _created series double the page and no dashboard reads them
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServeMetrics:
    """The ingress's own series, labelled with the application (model) name."""

    def __init__(self, model: str):
        self.model = model
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model", "route", "code"]
        self.requests = Counter("cityseg_requests", "HTTP requests answered, by route and status",
                                labels, registry=self.registry)
        self.latency = Histogram("cityseg_request_duration_seconds", "time from request to answer",
                                 ["model", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Gauge("cityseg_queue_depth", "images sent to the model replicas and not yet "
                           "answered (running or queued)", ["model"], registry=self.registry)
        self.uploads = Gauge("cityseg_uploads_in_progress", "request bodies being received",
                             ["model"], registry=self.registry)
        self.rejected = Counter("cityseg_rejected", "requests refused before the model "
                                "(queue full, per-client limit, body timeout)", ["model", "reason"],
                                registry=self.registry)

    def observe(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(self.model, route, str(code)).inc()
        self.latency.labels(self.model, route).observe(seconds)

    def render(self, replicas: dict[str, dict[str, Any]], max_batch: int) -> bytes:
        """Prometheus text: the ingress's series, then the replicas' batch sizes and model time."""
        extra = CollectorRegistry(auto_describe=False)
        extra.register(_ReplicaCollector(self.model, replicas, max_batch))
        return generate_latest(self.registry) + generate_latest(extra)


def _bucket_bounds(max_batch: int) -> list[int]:
    bounds, b = [], 1
    while b < max_batch:
        bounds.append(b)
        b *= 2
    return bounds + [max_batch]


class _ReplicaCollector:
    """Batch-size histogram and model seconds summed over the replicas' reports."""

    def __init__(self, model: str, replicas: dict[str, dict[str, Any]], max_batch: int):
        self.model, self.replicas, self.max_batch = model, replicas, max(1, int(max_batch))

    def collect(self) -> Iterable[Any]:
        counts: dict[int, int] = {}
        seconds = images = 0.0
        for doc in self.replicas.values():
            for size, n in (doc.get("batch_counts") or {}).items():
                counts[int(size)] = counts.get(int(size), 0) + int(n)
            seconds += float(doc.get("model_seconds", 0.0))
            images += float(doc.get("images", 0))
        hist = HistogramMetricFamily("cityseg_batch_size", "images per model call (dynamic batching)",
                                     labels=["model"])
        bounds = _bucket_bounds(self.max_batch)
        cumulative = [(str(b), sum(n for s, n in counts.items() if s <= b)) for b in bounds]
        cumulative.append(("+Inf", sum(counts.values())))
        hist.add_metric([self.model], cumulative, sum_value=float(sum(s * n for s, n in counts.items())))
        yield hist
        for name, doc, value in (("cityseg_model_seconds", "seconds the replicas spent in the model", seconds),
                                 ("cityseg_model_images", "images the replicas segmented", images),
                                 ("cityseg_replicas", "model replicas that reported in", len(self.replicas))):
            g = GaugeMetricFamily(name, doc, labels=["model"])
            g.add_metric([self.model], float(value))
            yield g
