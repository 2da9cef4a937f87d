"""Reading a model server's metrics: the rates the Serving pane plots, from two scrapes."""

from __future__ import annotations

import pytest

from app.core.serving import ServingError, figures, histogram_quantile, parse
from app.workers.host_metrics import HostMetrics


def chat(**kw: object) -> dict[str, object]:
    return {"path": "/v1/chat/completions", "model": "gemma", "status": 200, "latency_ms": 50.0,
            **kw}  # fmt: skip


def test_two_readings_give_rates_and_first_token_percentiles() -> None:
    m = HostMetrics(lambda: [("gemma", True, 1000)])
    m.observe(chat(prompt_tokens=3, completion_tokens=10, ttft_ms=500.0, generation_ms=300.0))
    first = parse(m.render()[0].decode(), at=100.0)
    # 10 s later: 4 more answers (first tokens 30, 40, 70, 80 ms), 1 error, 60 more tokens
    for ttft in (30.0, 40.0, 70.0, 80.0):
        m.observe(chat(prompt_tokens=2, completion_tokens=15, ttft_ms=ttft, generation_ms=200.0))
    m.observe({"path": "/v1/chat/completions", "status": 401, "error": "invalid_api_key"})
    with m.request(), m.waiting():
        second = parse(m.render()[0].decode(), at=110.0)
    f = figures(first, second)
    assert f.seconds == 10.0
    assert f.requests_per_s == pytest.approx(0.5)  # 5 answers in 10 s
    assert f.errors_per_s == pytest.approx(0.1)
    assert f.tokens_per_s == pytest.approx(6.0)
    # the interval's four first tokens only (the earlier 500 ms one is not in it):
    # buckets 0.025 < 30, 40 <= 0.05 < 70, 80 <= 0.1 -> median at the 0.05 bound
    assert f.ttft_p50 == pytest.approx(0.05)
    assert 0.05 < f.ttft_p95 <= 0.1
    assert (f.in_progress, f.waiting) == (1.0, 1.0)
    assert second.loaded == {"gemma": 1000.0}
    assert second.prompt_tokens == 11


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (float("inf"), 40.0)]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # rank 10: first bound
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.5 + 0.5 * (38 - 30) / 10)
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.99, [(0.1, 1.0), (float("inf"), 5.0)]) == 0.1  # open top bucket


def test_a_restarted_server_does_not_give_negative_rates() -> None:
    m = HostMetrics()
    for _ in range(5):
        m.observe(chat())
    before = parse(m.render()[0].decode(), at=0.0)
    fresh = HostMetrics()
    fresh.observe(chat())
    f = figures(before, parse(fresh.render()[0].decode(), at=2.0))
    assert f.requests_per_s == pytest.approx(0.5)


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(ServingError, match="could not be read"):
        parse('demoai_requests_total{route="x" 1\n')
