"""Property-based fuzz of the model host's request bodies: no input gives a 5xx.

2,000 bodies (1,000 per endpoint) against a real host serving the real Gemma
GGUF with a 48-token context, so a body that does generate stops quickly:
JSON values of any shape, and valid bodies with fields replaced by wrong
types, huge or negative numbers, nested junk and lone surrogates.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.workers.host_client import HostProcess

EXAMPLES = 1000  # per endpoint

SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc00\ud800", "ok \ud83d"])
TEXT = st.text(max_size=12)
NUMBERS = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63, -(2**63), 10**30])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e308, -1e308, 5e-324, 0.5, 2.5])
)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=10,
)

FIELDS = [
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop", "stream", "stream_options",
    "tools", "tool_choice", "response_format", "n", "logprobs", "user",
]  # fmt: skip

MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool"]) | JSON},
    optional={
        "content": TEXT | JSON | st.lists(st.fixed_dictionaries({"type": JSON, "text": JSON})),
        "tool_calls": JSON
        | st.lists(
            st.fixed_dictionaries(
                {"function": st.fixed_dictionaries({"name": JSON, "arguments": JSON})}
            ),
            max_size=2,
        ),
        "name": JSON,
        "tool_call_id": JSON,
    },
)
TOOL = st.fixed_dictionaries(
    {
        "type": st.just("function") | JSON,
        "function": st.fixed_dictionaries(
            {"name": st.sampled_from(["f", "get_weather"]) | JSON},
            optional={"parameters": JSON, "description": JSON},
        )
        | JSON,
    }
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "messages": st.lists(MESSAGE | JSON, max_size=3) | JSON,
    "prompt": TEXT | st.lists(TEXT, max_size=2) | JSON,
    "max_tokens": st.integers(min_value=-5, max_value=3) | NUMBERS | JSON,
    "max_completion_tokens": st.integers(min_value=-5, max_value=3) | JSON,
    "stream_options": st.fixed_dictionaries({"include_usage": JSON}) | JSON,
    "tools": st.lists(TOOL, max_size=2) | JSON,
    "tool_choice": st.sampled_from(["auto", "none", "required"])
    | st.fixed_dictionaries({"type": JSON, "function": st.fixed_dictionaries({"name": JSON})})
    | JSON,
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema"]) | JSON},
        optional={"json_schema": st.fixed_dictionaries({"schema": JSON}) | JSON},
    )
    | JSON,
    "stop": st.lists(TEXT, max_size=3) | JSON,
}


def _valid(chat: bool) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "gemma", "max_tokens": 1, "seed": 0}
    if chat:
        base["messages"] = [{"role": "user", "content": "Hi"}]
    else:
        base["prompt"] = "Once"
    return base


@st.composite
def bodies(draw: st.DrawFn, chat: bool) -> bytes:
    kind = draw(st.sampled_from(["any", "mutated", "mutated", "mutated", "deep", "surrogate"]))
    if kind == "any":
        value: Any = draw(JSON)
    elif kind == "surrogate":
        value = _valid(chat)
    else:
        value = _valid(chat)
        for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3)):
            value[name] = draw(FIELD_VALUES.get(name, JSON))
        # A body that may generate stays short.
        if not isinstance(value.get("max_tokens"), int) or value["max_tokens"] > 3:
            value.setdefault("max_completion_tokens", 2)
    if kind == "surrogate":
        bad = draw(SURROGATES)
        target = draw(st.sampled_from(["text", "stop", "model", "key", "tool"]))
        if target == "text" and chat:
            value["messages"][0]["content"] = bad
        elif target == "text":
            value["prompt"] = bad
        elif target == "tool":
            fn = {"name": "f", "description": bad, "parameters": {"type": "object"}}
            value["tools"] = [{"type": "function", "function": fn}]
        elif target == "key":
            value[bad] = 1
        else:
            value[target] = bad
    text = json.dumps(value)  # ensure_ascii: lone surrogates become \\udXXX escapes
    if kind == "deep":
        depth = draw(st.sampled_from([100, 990, 5000, 100_000]))
        field = draw(st.sampled_from(FIELDS))
        text = text[:-1] + f', "{field}": ' + "[" * depth + "]" * depth + "}"
    return text.encode()


@pytest.fixture(scope="module")
def host(gemma_gguf: Path) -> Iterator[HostProcess]:
    h = HostProcess(threads=2, n_ctx=48)
    h.start({"gemma": (gemma_gguf, "gguf")})
    yield h
    h.stop()


def send(host: HostProcess, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=60)
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={"Authorization": f"Bearer {host.token}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _fuzz(host: HostProcess, path: str, chat: bool) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(bodies(chat))
    def check(body: bytes) -> None:
        status, reply = send(host, path, body)
        assert status < 500, (body[:300], reply[:300])
        if status >= 400:
            assert json.loads(reply)["error"]["message"]

    t0 = time.monotonic()
    check()
    print(f"{path}: {EXAMPLES} bodies in {time.monotonic() - t0:.1f} s")
    status, reply = send(host, path, json.dumps(_valid(chat)).encode())
    assert status == 200, reply
    assert host.is_alive()


def test_fuzz_chat_completions(host: HostProcess) -> None:
    _fuzz(host, "/v1/chat/completions", chat=True)


def test_fuzz_completions(host: HostProcess) -> None:
    _fuzz(host, "/v1/completions", chat=False)
