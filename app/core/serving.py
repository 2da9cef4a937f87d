"""Watching a model server: read its ``/metrics`` and recent requests, turn two readings
into rates.

Works for the app's own model host, a ``demoai serve`` instance and a deployed Docker
bundle alike: they all run ``app.workers.host``, whose metrics
(``app/workers/host_metrics.py``) and ``GET /v1/host/requests`` need the API key.
:func:`parse` reads the Prometheus text format with ``prometheus-client``'s parser;
:func:`figures` turns two readings into what the Serving pane plots: requests and
errors per second, generated tokens per second, the median and 95th percentile time
to first token over the interval (``histogram_quantile`` as Prometheus computes it,
from the bucket counts that grew between the readings), and requests in progress and
waiting.

What a server sends is untrusted: the answer is bounded (1 MB), the parse errors
become a clear message, and nothing but numbers is taken from it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from app.core.errors import DemoAIError

#: Largest answer read from a server.
MAX_BYTES = 1 << 20
TIMEOUT_S = 3.0


class ServingError(DemoAIError):
    """A server could not be read (down, wrong key, not a DemoAI host)."""


@dataclass
class Reading:
    """One scrape of ``/metrics``: totals summed over labels."""

    at: float
    requests: float = 0.0
    errors: float = 0.0
    completion_tokens: float = 0.0
    prompt_tokens: float = 0.0
    in_progress: float = 0.0
    waiting: float = 0.0
    #: (upper bound, cumulative count) of the time-to-first-token histogram, all models
    ttft: list[tuple[float, float]] = field(default_factory=list)
    #: model -> bytes held while loaded
    loaded: dict[str, float] = field(default_factory=dict)
    #: Whose metrics: "demoai" (our host) or "llama.cpp" (a Docker bundle's llama-server,
    #: which exports token counts and its queue, but no request counts or first-token times)
    engine: str = "demoai"


@dataclass(frozen=True)
class Figures:
    """What happened between two readings."""

    seconds: float
    requests_per_s: float
    errors_per_s: float
    tokens_per_s: float
    ttft_p50: float | None  # seconds; None when no first token was timed
    ttft_p95: float | None
    in_progress: float
    waiting: float


def parse(text: str, at: float | None = None) -> Reading:
    """A :class:`Reading` of Prometheus exposition ``text`` from our host or llama-server."""
    from prometheus_client.parser import text_string_to_metric_families

    r = Reading(at=time.monotonic() if at is None else at)
    buckets: dict[float, float] = {}
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                v = float(s.value)
                if not math.isfinite(v):
                    continue
                name = s.name
                if name == "demoai_requests_total":
                    r.requests += v
                elif name == "demoai_request_errors_total":
                    r.errors += v
                elif name == "demoai_completion_tokens_total":
                    r.completion_tokens += v
                elif name == "demoai_prompt_tokens_total":
                    r.prompt_tokens += v
                elif name == "demoai_requests_in_progress":
                    r.in_progress = v
                elif name == "demoai_requests_waiting":
                    r.waiting = v
                elif name == "demoai_time_to_first_token_seconds_bucket":
                    le = float(s.labels.get("le", "nan"))
                    if not math.isnan(le):
                        buckets[le] = buckets.get(le, 0.0) + v
                elif name == "demoai_model_memory_bytes" and v > 0:
                    r.loaded[str(s.labels.get("model", "?"))[:200]] = v
                elif name.startswith("llamacpp:"):  # a Docker bundle's llama-server
                    r.engine = "llama.cpp"
                    if name == "llamacpp:tokens_predicted_total":
                        r.completion_tokens += v
                    elif name == "llamacpp:prompt_tokens_total":
                        r.prompt_tokens += v
                    elif name == "llamacpp:requests_processing":
                        r.in_progress = v
                    elif name == "llamacpp:requests_deferred":
                        r.waiting = v
    except (ValueError, TypeError, KeyError) as exc:
        raise ServingError(f"The server's /metrics could not be read ({exc}).") from exc
    r.ttft = sorted(buckets.items())
    return r


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated within its bucket as
    Prometheus' ``histogram_quantile`` does; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):  # in the open top bucket: the last finite bound
                return lower_bound
            width = count - lower_count
            if width <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / width
        lower_bound, lower_count = bound, count
    return lower_bound


def figures(prev: Reading, cur: Reading) -> Figures:
    """Rates between two readings (a restarted server's counters start again from 0)."""
    dt = max(cur.at - prev.at, 1e-6)

    def rate(a: float, b: float) -> float:
        return max(b - a, 0.0) / dt if b >= a else b / dt

    before = dict(prev.ttft)
    grown = [(le, max(c - before.get(le, 0.0), 0.0)) for le, c in cur.ttft]
    restarted = cur.requests < prev.requests
    window = cur.ttft if restarted else grown
    return Figures(
        seconds=dt,
        requests_per_s=rate(prev.requests, cur.requests),
        errors_per_s=rate(prev.errors, cur.errors),
        tokens_per_s=rate(prev.completion_tokens, cur.completion_tokens),
        ttft_p50=histogram_quantile(0.5, window),
        ttft_p95=histogram_quantile(0.95, window),
        in_progress=cur.in_progress,
        waiting=cur.waiting,
    )


def _get(base_url: str, path: str, key: str) -> Any:
    import httpx2

    url = base_url.rstrip("/") + path
    try:
        with (
            httpx2.Client(timeout=TIMEOUT_S, trust_env=False, follow_redirects=False) as http,
            http.stream("GET", url, headers={"Authorization": f"Bearer {key}"}) as resp,
        ):
            body = b""
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise ServingError(f"{url} answered more than {MAX_BYTES // 2**20} MB.")
            status = resp.status_code
    except httpx2.HTTPError as exc:
        raise ServingError(
            f"Cannot reach {base_url}: {exc}.", "Check the address and that the server runs."
        ) from exc
    if status == 401:
        raise ServingError(f"{base_url} refused the key (401).", "Check the API key.")
    if status == 404:
        raise ServingError(
            f"{url} is not there (404).",
            "Only DemoAI model hosts (the app's, demoai serve, Docker bundles) can be watched.",
        )
    if status != 200:
        raise ServingError(f"{url} answered HTTP {status}.")
    return body


def read_metrics(root_url: str, key: str) -> Reading:
    """Scrape ``ROOT/metrics`` (``root_url`` without ``/v1``)."""
    body = _get(root_url, "/metrics", key)
    return parse(body.decode("utf-8", "replace"))


def read_requests(root_url: str, key: str) -> list[dict[str, Any]]:
    """The server's most recent requests (``GET /v1/host/requests``), newest first."""
    import json

    body = _get(root_url, "/v1/host/requests", key)
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ServingError(f"{root_url} sent requests that are not JSON.") from exc
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return []
    keep = ("time", "path", "model", "status", "prompt_tokens", "completion_tokens",
            "latency_ms", "queue_ms", "ttft_ms", "error")  # fmt: skip
    return [{k: r.get(k) for k in keep} for r in rows if isinstance(r, dict)][:200]
