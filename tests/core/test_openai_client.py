"""The one OpenAI client against the real model host (a child process, the real Gemma 3 270M GGUF)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.openai_client import (
    ModelServerError,
    ModelServerUnreachable,
    OpenAIClient,
    RequestCancelled,
    error_from_body,
)
from app.workers.host_client import HostProcess

USER = [{"role": "user", "content": "The capital of France is"}]
GREEDY = {"max_tokens": 8, "temperature": 0.0, "seed": 1}


@pytest.fixture(scope="module")
def host(gemma_gguf: Path) -> Iterator[HostProcess]:
    h = HostProcess(threads=2, n_ctx=512)
    h.start({"gemma": (gemma_gguf, "gguf")})
    yield h
    h.stop()


@pytest.fixture
def client(host: HostProcess) -> OpenAIClient:
    return OpenAIClient(host.base_url, host.token, model="gemma", timeout=120)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv.getsockname()[1]
    srv.close()


def test_models_and_capabilities_of_a_base_model(client: OpenAIClient) -> None:
    assert [m["id"] for m in client.models()] == ["gemma"]
    caps = client.model_info()["capabilities"]
    # Gemma 3 270M ships no chat template: the host guesses a preset, never "model".
    assert caps["chat_template"] != "model" and caps["context_length"] == 512


def test_chat_and_its_stream_agree(client: OpenAIClient) -> None:
    whole = client.chat(USER, **GREEDY)
    assert whole.text and whole.usage["completion_tokens"] == 8 and whole.finish_reason == "length"
    assert whole.message["role"] == "assistant"
    deltas = list(client.stream_chat(USER, **GREEDY))
    assert "".join(d.text for d in deltas) == whole.text
    assert deltas[-1].usage == whole.usage  # include_usage is asked for by default
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]


def test_completion_and_its_stream_agree(client: OpenAIClient) -> None:
    whole = client.complete("The capital of France is", **GREEDY)
    assert whole.text and whole.usage["prompt_tokens"] > 0
    streamed = "".join(d.text for d in client.stream_complete("The capital of France is", **GREEDY))
    assert streamed == whole.text


def test_embeddings_in_order(client: OpenAIClient) -> None:
    vecs = client.embeddings(["a cat", "a dog", "a cat"])
    assert len(vecs) == 3 and len({len(v) for v in vecs}) == 1 and len(vecs[0]) > 8
    assert vecs[0] == pytest.approx(vecs[2], abs=1e-4)  # same text, same place in the batch
    assert vecs[0] != pytest.approx(vecs[1], abs=1e-4)


def test_unknown_model_is_a_404_with_the_hosts_words(client: OpenAIClient) -> None:
    for call in (
        lambda: client.chat(USER, model="nope"),
        lambda: list(client.stream_chat(USER, model="nope")),
        lambda: client.model_info("nope"),
    ):
        with pytest.raises(ModelServerError) as exc:
            call()
        e = exc.value
        assert e.status == 404 and e.code == "model_not_found"
        assert "'nope' does not exist" in e.message and "Served: gemma" in e.message
        assert e.hint and "/v1/models" in e.hint


def test_bad_token_is_a_401_that_says_what_to_do(host: HostProcess) -> None:
    bad = OpenAIClient(host.base_url, "not-the-token", model="gemma")
    with pytest.raises(ModelServerError) as exc:
        bad.chat(USER, max_tokens=1)
    assert exc.value.status == 401 and exc.value.code == "invalid_api_key"
    assert exc.value.hint and "key" in exc.value.hint
    assert not isinstance(exc.value, ModelServerUnreachable)


def test_bad_body_is_a_400_streamed_or_not(client: OpenAIClient) -> None:
    for call in (lambda: client.chat([]), lambda: list(client.stream_chat([]))):
        with pytest.raises(ModelServerError) as exc:
            call()
        assert exc.value.status == 400 and exc.value.code == "invalid_messages"
        assert "messages must be a non-empty list" in str(exc.value)
    with pytest.raises(ModelServerError) as exc2:
        client.chat(USER, max_tokens="many")
    assert exc2.value.status == 400


def test_close_from_another_thread_ends_a_stream_promptly(
    client: OpenAIClient, host: HostProcess
) -> None:
    got: list[str] = []
    stopped_at = 0.0
    for delta in client.stream_chat(
        [{"role": "user", "content": "Write a long story about a cat."}],
        max_tokens=400,
        temperature=0.8,
    ):
        got.append(delta.text)
        if len(got) == 3:
            stopped_at = time.monotonic()
            threading.Thread(target=client.close).start()
    assert time.monotonic() - stopped_at < 2.0
    assert len(got) < 50 and client.closed
    with pytest.raises(RequestCancelled):
        client.chat(USER, max_tokens=1)
    # The host is unharmed: a new client gets an answer.
    again = OpenAIClient(host.base_url, host.token, model="gemma").chat(USER, max_tokens=2)
    assert again.usage["completion_tokens"] >= 1


def test_close_while_waiting_for_the_answer(silent_port: int) -> None:
    c = OpenAIClient(f"http://127.0.0.1:{silent_port}/v1", "k", model="m", timeout=60)
    threading.Timer(0.3, c.close).start()
    t0 = time.monotonic()
    with pytest.raises(RequestCancelled):
        c.chat(USER)
    assert time.monotonic() - t0 < 0.3 + 2.0
    c2 = OpenAIClient(f"http://127.0.0.1:{silent_port}/v1", "k", model="m", timeout=60)
    threading.Timer(0.3, c2.close).start()
    t0 = time.monotonic()
    assert list(c2.stream_chat(USER)) == []  # a stopped stream ends quietly
    assert time.monotonic() - t0 < 0.3 + 2.0


def test_a_server_that_never_answers_times_out_naming_the_url(silent_port: int) -> None:
    c = OpenAIClient(f"http://127.0.0.1:{silent_port}/v1", "k", model="m", timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(ModelServerUnreachable) as exc:
        c.chat(USER)
    assert time.monotonic() - t0 < 0.5 + 2.0
    assert f"127.0.0.1:{silent_port}" in exc.value.message and "0.5 s" in exc.value.message


def test_connection_refused_names_the_url() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    c = OpenAIClient(f"http://127.0.0.1:{port}/v1", "k", model="m")
    for call in (c.models, lambda: list(c.stream_chat(USER))):
        with pytest.raises(ModelServerUnreachable) as exc:
            call()
        assert f"Cannot reach the model server at http://127.0.0.1:{port}/v1" in str(exc.value)
        assert exc.value.status is None and exc.value.hint


def test_answers_are_bounded(host: HostProcess) -> None:
    small = OpenAIClient(host.base_url, host.token, model="gemma", max_response_bytes=64)
    with pytest.raises(ModelServerError, match="larger than"):
        small.models()
    tiny_events = OpenAIClient(host.base_url, host.token, model="gemma", max_event_bytes=32)
    with pytest.raises(ModelServerError, match="unusable stream"):
        list(tiny_events.stream_chat(USER, max_tokens=2))


@settings(max_examples=300, deadline=None, database=None)
@given(
    status=st.one_of(st.none(), st.integers(100, 599)),
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=2000),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids),
        max_leaves=20,
    ),
)
def test_any_error_body_gives_a_short_clear_error(status: int | None, body: Any) -> None:
    for b in (body, {"error": body}, {"error": {"message": body, "code": body}}):
        e = error_from_body(status, b, "http://127.0.0.1:1/v1/x")
        assert isinstance(e, ModelServerError) and e.status == status
        assert isinstance(e.message, str) and 0 < len(e.message) < 400
        assert e.code is None or isinstance(e.code, str)


def test_openai_style_error_json_is_parsed() -> None:
    body = json.loads('{"error": {"message": "Boom.", "type": "server_error", "code": "x"}}')
    e = error_from_body(503, body, "u")
    assert e.message == "The model server answered HTTP 503: Boom."
    assert (e.status, e.code, e.error_type) == (503, "x", "server_error") and e.hint


def test_importing_the_client_does_not_import_httpx2() -> None:
    code = "import sys, app.core.openai_client; print('httpx2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
