"""The host's Prometheus metrics: what a scraper reads back from the exposition text."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.core.serving import figures, read_metrics, read_requests
from app.workers.host_client import HostProcess
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


# -- through the real host ------------------------------------------------------------------


@pytest.fixture(scope="module")
def host(gemma_gguf: Path) -> Iterator[HostProcess]:
    h = HostProcess(threads=2, n_ctx=256)
    h.start({"gemma": (gemma_gguf, "gguf")})
    yield h
    h.stop()


def _get(url: str, key: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_host_serves_metrics_with_the_key_and_counts_what_it_did(host: HostProcess) -> None:
    root = host.base_url.removesuffix("/v1")
    assert _get(root + "/metrics", None)[0] == 401
    assert _get(root + "/metrics", "wrong")[0] == 401
    before = read_metrics(root, host.token)
    client = openai.OpenAI(base_url=host.base_url, api_key=host.token, max_retries=0)
    out = client.completions.create(model="gemma", prompt="The capital of France is",
                                    max_tokens=8, temperature=0)  # fmt: skip
    stream = client.completions.create(
        model="gemma", prompt="One, two,", max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [c.usage for c in stream if c.usage is not None]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=host.base_url, api_key="nope", max_retries=0).models.list()
    after = read_metrics(root, host.token)
    f = figures(before, after)
    # the first scrape (counted once answered), two answers, one refusal
    assert after.requests - before.requests == 4
    assert after.errors - before.errors == 1
    assert out.usage is not None and len(usage) == 1
    assert after.completion_tokens - before.completion_tokens == (
        out.usage.completion_tokens + usage[0].completion_tokens
    )
    assert after.prompt_tokens - before.prompt_tokens == (
        out.usage.prompt_tokens + usage[0].prompt_tokens
    )
    assert f.ttft_p50 is not None and f.ttft_p50 > 0  # first tokens were timed
    assert "gemma" in after.loaded and after.loaded["gemma"] > 100e6  # the Q4_K_M weights
    rows = read_requests(root, host.token)
    assert [r["path"] for r in rows[:3]] == ["/v1/models", "/v1/completions", "/v1/completions"]
    assert rows[0]["status"] == 401 and rows[1]["status"] == 200
    assert rows[1]["ttft_ms"] is not None and rows[1]["ttft_ms"] <= rows[1]["latency_ms"]
    assert all("prompt" not in r for r in rows)  # prompts are never kept


def test_requests_waiting_for_a_busy_model_show_as_waiting(host: HostProcess) -> None:
    root = host.base_url.removesuffix("/v1")
    client = openai.OpenAI(base_url=host.base_url, api_key=host.token, max_retries=0)
    seen = {"waiting": 0.0, "in_progress": 0.0}
    done = threading.Event()

    def ask() -> None:
        client.completions.create(model="gemma", prompt="Count: 1, 2, 3,", max_tokens=48,
                                  temperature=0)  # fmt: skip

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            r = read_metrics(root, host.token)
            seen["waiting"] = max(seen["waiting"], r.waiting)
            seen["in_progress"] = max(seen["in_progress"], r.in_progress)
    finally:
        for t in threads:
            t.join(timeout=120)
        done.set()
    # three requests for one model: while one generates, the others queue for its lock
    assert seen["waiting"] >= 1 and seen["in_progress"] >= 2, seen
    r = read_metrics(root, host.token)
    assert r.waiting == 0 and r.in_progress == 0  # a scrape does not count itself
