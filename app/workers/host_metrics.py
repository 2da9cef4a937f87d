"""The model host's metrics in the Prometheus text format (``GET /metrics``, with the key).

What IT and the app's status need to watch a host: requests by route and status,
errors by code, latency, time to first token and generation speed per model, tokens
in and out, requests in progress and waiting for a model, and what is loaded with the
memory it holds. ``prometheus-client`` keeps the counters and histograms and writes the
exposition format; each host has a registry of its own (two hosts in one process, as
in the tests, do not mix their figures).

The host calls :meth:`HostMetrics.observe` once per request with the request-log
record it already keeps (route, status, model, tokens, latency; for generations the
time to the first token and the generation time), and wraps its wait for a model's
lock in :meth:`HostMetrics.waiting`. Loaded models are read when scraped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Routes counted under their own name; anything else is "other" (bounded label values:
#: a client cannot grow the metrics by asking for random paths).
ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/host/status",
    "/v1/host/models",
    "/admin/unload",
    "/metrics",
)
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")
#: Seconds: a first token in 25 ms on a small model up to a minute behind a queue.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 40, 80, 160, 320, 640)

#: (name, loaded, bytes held) of each served model, read at scrape time.
ModelsFn = Callable[[], Iterable[tuple[str, bool, int]]]


def route_label(path: str) -> str:
    return path if path in ROUTES else "other"


class _ModelsCollector:
    def __init__(self, models: ModelsFn) -> None:
        self._models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loaded = GaugeMetricFamily(
            "demoai_model_loaded", "1 when the model's weights are in memory", labels=["model"]
        )
        held = GaugeMetricFamily(
            "demoai_model_memory_bytes",
            "memory the host accounts to the model's weights (0 when not loaded)",
            labels=["model"],
        )
        for name, is_loaded, size in self._models():
            loaded.add_metric([name], 1.0 if is_loaded else 0.0)
            held.add_metric([name], float(size if is_loaded else 0))
        yield loaded
        yield held


class HostMetrics:
    """One host's metrics (see the module docstring)."""

    def __init__(self, models: ModelsFn | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "demoai_requests", "requests answered, by route and HTTP status",
            ["route", "status"], registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "demoai_request_errors", "requests answered with an error, by error code",
            ["code"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "demoai_request_duration_seconds", "time from request to the last byte, by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "demoai_time_to_first_token_seconds",
            "time from request to the first generated token, by model",
            ["model"], buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.speed = Histogram(
            "demoai_generation_tokens_per_second",
            "completion tokens per second of generation (after the first token), by model",
            ["model"], buckets=TOKENS_PER_S_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "demoai_prompt_tokens", "prompt tokens read, by model", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "demoai_completion_tokens", "tokens generated, by model", ["model"], registry=r
        )
        self.in_progress = Gauge(
            "demoai_requests_in_progress", "requests being answered now", registry=r
        )
        self.queued = Gauge(
            "demoai_requests_waiting", "requests waiting for a model that is busy", registry=r
        )
        self._names: set[str] = set()
        self._lock = threading.Lock()
        self._models = models
        if models is not None:
            r.register(_ModelsCollector(models))

    def _model(self, name: Any) -> str | None:
        """A model label: only names the host serves (bounded, like routes)."""
        if not isinstance(name, str):
            return None
        with self._lock:
            served = set(self._names)
        if self._models is not None:
            served |= {n for n, _, _ in self._models()}
        return name if name in served else None

    def serve(self, names: Iterable[str]) -> None:
        """More model names the host serves, besides those its models function lists."""
        with self._lock:
            self._names = set(names)

    @contextmanager
    def request(self) -> Iterator[None]:
        self.in_progress.inc()
        try:
            yield
        finally:
            self.in_progress.dec()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around a request's wait for a model lock (queue depth)."""
        self.queued.inc()
        try:
            yield
        finally:
            self.queued.dec()

    @contextmanager
    def locked(self, lock: Any, record: dict[str, Any] | None = None) -> Iterator[None]:
        """Hold ``lock`` (a model's request queue), counted as waiting until it is ours.

        With ``record`` (the request's log record), the time spent waiting is added to
        its ``queue_ms``: how long the request queued behind others for the model.
        """
        t0 = time.perf_counter()
        with self.waiting():
            lock.acquire()
        if record is not None:
            waited = (time.perf_counter() - t0) * 1000
            record["queue_ms"] = round(float(record.get("queue_ms", 0.0)) + waited, 1)
        try:
            yield
        finally:
            lock.release()

    def observe(self, record: Mapping[str, Any]) -> None:
        """Count one answered request from its request-log record."""
        route = route_label(str(record.get("path", "")))
        status = int(record.get("status", 0) or 0)
        self.requests.labels(route, str(status)).inc()
        if record.get("error"):
            self.errors.labels(str(record["error"])[:64]).inc()
        latency = record.get("latency_ms")
        if isinstance(latency, int | float):
            self.latency.labels(route).observe(max(0.0, latency / 1000))
        model = self._model(record.get("model"))
        if model is None or status != 200:
            return
        prompt = int(record.get("prompt_tokens") or 0)
        completion = int(record.get("completion_tokens") or 0)
        if prompt:
            self.prompt_tokens.labels(model).inc(prompt)
        if completion:
            self.completion_tokens.labels(model).inc(completion)
        if route not in GENERATION_ROUTES:
            return
        ttft = record.get("ttft_ms")
        if isinstance(ttft, int | float):
            self.ttft.labels(model).observe(max(0.0, ttft / 1000))
        gen = record.get("generation_ms")
        if isinstance(gen, int | float) and gen > 0 and completion > 1:
            self.speed.labels(model).observe((completion - 1) / (gen / 1000))

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the exposition."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
