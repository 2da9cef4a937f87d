"""The host's Prometheus metrics: what a scraper reads back from the exposition text."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from app.workers.host_metrics import HostMetrics


def scrape(m: HostMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, ctype = m.render()
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def record(**kw: Any) -> dict[str, Any]:
    base = {"path": "/v1/chat/completions", "model": "gemma", "status": 200, "latency_ms": 120.0}
    return {**base, **kw}


def test_requests_tokens_and_timings_are_counted_per_route_and_model() -> None:
    loaded = {"gemma": True, "tiny": False}
    m = HostMetrics(lambda: [(n, v, 300_000_000 if v else 0) for n, v in loaded.items()])
    m.serve(loaded)
    m.observe(record(prompt_tokens=10, completion_tokens=21, ttft_ms=40.0, generation_ms=400.0))
    m.observe(record(prompt_tokens=5, completion_tokens=1, ttft_ms=30.0, generation_ms=0.0))
    m.observe(record(path="/v1/models", model=None, latency_ms=1.0))
    m.observe(record(status=401, error="invalid_api_key", model=None, latency_ms=0.5))
    m.observe(record(path="/etc/passwd", status=404, error="not_found", model=None))
    m.observe(record(model="not-served", prompt_tokens=99, completion_tokens=99))
    s = scrape(m)
    chat = "/v1/chat/completions"
    assert s[("demoai_requests_total", (("route", chat), ("status", "200")))] == 3
    assert s[("demoai_requests_total", (("route", chat), ("status", "401")))] == 1
    assert s[("demoai_requests_total", (("route", "other"), ("status", "404")))] == 1
    assert s[("demoai_requests_total", (("route", "/v1/models"), ("status", "200")))] == 1
    assert s[("demoai_request_errors_total", (("code", "invalid_api_key"),))] == 1
    # tokens of served models only: a client cannot add label values
    assert s[("demoai_prompt_tokens_total", (("model", "gemma"),))] == 15
    assert s[("demoai_completion_tokens_total", (("model", "gemma"),))] == 22
    assert not [k for k in s if ("model", "not-served") in k[1]]
    # two first tokens (40 ms, 30 ms); one speed sample: 20 tokens after the first in 0.4 s
    assert s[("demoai_time_to_first_token_seconds_count", (("model", "gemma"),))] == 2
    assert abs(s[("demoai_time_to_first_token_seconds_sum", (("model", "gemma"),))] - 0.07) < 1e-9
    assert (
        s[("demoai_time_to_first_token_seconds_bucket", (("le", "0.05"), ("model", "gemma")))] == 2
    )
    assert (
        s[("demoai_time_to_first_token_seconds_bucket", (("le", "0.025"), ("model", "gemma")))] == 0
    )
    assert s[("demoai_generation_tokens_per_second_count", (("model", "gemma"),))] == 1
    assert s[("demoai_generation_tokens_per_second_sum", (("model", "gemma"),))] == 50.0
    assert s[("demoai_model_loaded", (("model", "gemma"),))] == 1
    assert s[("demoai_model_loaded", (("model", "tiny"),))] == 0
    assert s[("demoai_model_memory_bytes", (("model", "gemma"),))] == 300_000_000
    loaded["gemma"] = False  # read at scrape time
    assert scrape(m)[("demoai_model_loaded", (("model", "gemma"),))] == 0


def test_in_progress_and_waiting_follow_the_requests() -> None:
    m = HostMetrics()
    with m.request(), m.request(), m.waiting():
        s = scrape(m)
        assert s[("demoai_requests_in_progress", ())] == 2
        assert s[("demoai_requests_waiting", ())] == 1
    s = scrape(m)
    assert s[("demoai_requests_in_progress", ())] == 0 and s[("demoai_requests_waiting", ())] == 0


def test_two_hosts_do_not_mix_their_figures() -> None:
    a, b = HostMetrics(), HostMetrics()
    a.observe(record(path="/v1/models", model=None))
    assert ("demoai_requests_total", (("route", "/v1/models"), ("status", "200"))) in scrape(a)
    assert ("demoai_requests_total", (("route", "/v1/models"), ("status", "200"))) not in scrape(b)
