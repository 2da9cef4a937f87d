"""The model host as a real child process, called over real HTTP with the official openai client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from app.workers.host import parse_model_spec
from app.workers.host_client import HostProcess, HostStartError
from tests.support.serve import start_serve


@pytest.fixture(scope="module")
def evil_model(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny Llama whose chat template tries to run a shell command."""
    root = tmp_path_factory.mktemp("evil")
    marker = root / "PWNED"
    folder = root / "evil-llama"
    shutil.copytree(tiny_llama_dir, folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = (
        "{{ ''.__class__.__mro__[1].__subclasses__() }}"
        f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}"
    )
    cfg_path.write_text(json.dumps(cfg))
    return folder, marker


@pytest.fixture(scope="module")
def host(
    gemma_gguf: Path,
    tiny_llama_dir: Path,
    evil_model: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HostProcess]:
    folder = tmp_path_factory.mktemp("hostlog")
    log = folder / "requests.jsonl"
    broken = folder / "broken.gguf"
    with gemma_gguf.open("rb") as fh:
        broken.write_bytes(fh.read(2_000_000))  # a truncated download
    h = HostProcess(threads=2, n_ctx=512, request_log=log)
    h.start(
        {
            "gemma": (gemma_gguf, "gguf"),
            "tiny": (tiny_llama_dir, "hf"),
            "evil": (evil_model[0], None),
            "broken": (broken, None),
        }
    )
    yield h
    h.stop()


@pytest.fixture
def client(host: HostProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=host.base_url, api_key=host.token, max_retries=0, timeout=120)


def raw_request(
    host: HostProcess, path: str, body: dict[str, Any] | None = None, token: str | None = ""
) -> tuple[int, Any]:
    url = host.base_url.removesuffix("/v1") + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token or host.token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_models_listed(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["broken", "evil", "gemma", "tiny"]


def test_gemma_chat_stream_and_not_same_seed(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Name a fruit."}]
    kw: dict[str, Any] = {
        "model": "gemma",
        "messages": messages,
        "max_tokens": 20,
        "seed": 42,
        "temperature": 0.9,
    }
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    text = a.choices[0].message.content
    assert text and text == b.choices[0].message.content
    assert a.usage is not None and a.usage.completion_tokens > 0 and a.usage.prompt_tokens > 5
    assert a.object == "chat.completion" and a.choices[0].finish_reason in ("stop", "length")
    pieces, usage = [], None
    stream = client.chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                pieces.append(ch.delta.content)
    assert len(pieces) > 1
    assert "".join(pieces) == text
    assert usage is not None and usage.completion_tokens == a.usage.completion_tokens


def test_gemma_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(model="gemma", prompt="Once upon a time", max_tokens=12, seed=1)
    assert r.choices[0].text and r.usage is not None and r.usage.completion_tokens == 12
    assert r.choices[0].finish_reason == "length"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="gemma", prompt="Once upon a time", max_tokens=12, seed=1, stream=True
        )
        if c.choices
    )
    assert streamed == r.choices[0].text


def test_token_required(host: HostProcess) -> None:
    status, body = raw_request(host, "/v1/models", token=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = raw_request(
        host, "/v1/chat/completions", {"model": "gemma", "messages": []}, token="wrong"
    )
    assert status == 401
    bad = openai.OpenAI(base_url=host.base_url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gemma", messages=[{"role": "user", "content": "x"}])
    with urllib.request.urlopen(host.base_url.removesuffix("/v1") + "/health", timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "ok"


def test_context_overflow_is_400(host: HostProcess, client: openai.OpenAI) -> None:
    long = "word " * 800
    status, body = raw_request(
        host, "/v1/completions", {"model": "gemma", "prompt": long, "max_tokens": 4}
    )
    assert status == 400
    assert body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["type"] == "invalid_request_error" and "512" in body["error"]["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gemma", messages=[{"role": "user", "content": long}], stream=True
        )
    assert info.value.code == "context_length_exceeded"


def test_template_injection_refused(
    host: HostProcess, client: openai.OpenAI, evil_model: tuple[Path, Path]
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="evil", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "unsafe_chat_template"
    assert "unsafe chat template" in str(info.value)
    assert not evil_model[1].exists()
    # The same model still completes raw prompts: only its template is refused.
    r = client.completions.create(model="evil", prompt="The cat", max_tokens=3, seed=0)
    assert r.usage is not None and r.usage.completion_tokens >= 1


def test_bad_requests(host: HostProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    status, body = raw_request(
        host, "/v1/completions", {"model": "gemma", "prompt": "x", "temperature": -2}
    )
    assert status == 400 and "temperature" in body["error"]["message"]
    status, body = raw_request(host, "/v1/chat/completions", {"model": "gemma", "messages": "hi"})
    assert status == 400


def test_load_failure_is_an_api_error(host: HostProcess) -> None:
    body = {"model": "broken", "messages": [{"role": "user", "content": "hi"}]}
    status, reply = raw_request(host, "/v1/chat/completions", body)
    assert status == 500
    assert (
        reply["error"]["code"] == "model_load_failed" and "broken.gguf" in reply["error"]["message"]
    )
    assert host.is_alive()


def test_embeddings(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model="tiny", input=["hello", "world"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 256
    g = client.embeddings.create(model="gemma", input="hello")  # GGUF: llama.cpp embedding mode
    assert len(g.data) == 1 and len(g.data[0].embedding) == 640
    assert g.usage.prompt_tokens >= 1
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="gemma", input="word " * 600)  # n_ctx 512 here
    assert info.value.code == "context_length_exceeded"


def test_hf_model_answers_through_server(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, seed=3
    )
    assert r.usage is not None and r.usage.completion_tokens >= 1


def test_unload_and_reload(host: HostProcess, client: openai.OpenAI) -> None:
    client.completions.create(model="gemma", prompt="A", max_tokens=2)
    status, body = raw_request(host, "/admin/unload", {"model": "gemma"})
    assert status == 200 and body["unloaded"] == ["gemma"]
    status, _ = raw_request(host, "/admin/unload", {"model": "gemma"}, token=None)
    assert status == 401
    listed = {m.id: m.model_extra.get("loaded") for m in client.models.list()}
    assert listed["gemma"] is False
    assert client.completions.create(model="gemma", prompt="A", max_tokens=2).usage is not None


def test_request_log(host: HostProcess, client: openai.OpenAI) -> None:
    reply = client.completions.create(model="gemma", prompt="Hello", max_tokens=3, seed=2)
    assert host.request_log is not None
    # the record is written just after the reply is sent: wait for it (by the reply's id)
    deadline = time.monotonic() + 30
    while True:
        lines = [json.loads(line) for line in host.request_log.read_text().splitlines()]
        mine = [r for r in lines if r.get("id") == reply.id]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(mine) == 1, "the answered request was not logged"
    rec = mine[0]
    assert rec["model"] == "gemma" and rec["status"] == 200 and rec["path"] == "/v1/completions"
    assert rec["completion_tokens"] == 3 and rec["prompt_tokens"] > 0
    assert {"time", "latency_ms", "queue_ms"} <= rec.keys()
    assert any(r["status"] == 401 for r in lines)
    assert any(r.get("error") == "context_length_exceeded" for r in lines)


def test_kill_mid_stream_then_restart(gemma_gguf: Path) -> None:
    with HostProcess(threads=2) as h:
        h.start({"gemma": (gemma_gguf, None)})
        first_port = h.port
        c = openai.OpenAI(base_url=h.base_url, api_key=h.token, max_retries=0, timeout=60)
        stream = c.completions.create(
            model="gemma", prompt="Once upon a time", max_tokens=400, seed=1, stream=True
        )
        got = []
        # The body is chunked: a host that dies mid-stream is a transport error, not a short answer.
        with pytest.raises((httpx2.RemoteProtocolError, openai.APIConnectionError)):
            for chunk in stream:
                got.append(chunk.choices[0].text if chunk.choices else "")
                if len(got) == 3:
                    assert h._proc is not None
                    h._proc.kill()
                    h._proc.wait(10)
        assert 3 <= len(got) < 400
        assert not h.is_alive() and not h.health()
        old_token = h.token
        assert h.ensure_running() is True
        assert h.restarts == 1 and h.token != old_token and h.port == first_port
        assert h.ensure_running() is False and h.health()
        c = openai.OpenAI(base_url=h.base_url, api_key=h.token, max_retries=0, timeout=60)
        r = c.completions.create(model="gemma", prompt="Once upon a time", max_tokens=5, seed=1)
        assert r.usage is not None and r.usage.completion_tokens == 5


def run_host(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.workers.host", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_non_loopback_refused(gemma_gguf: Path, tmp_path: Path) -> None:
    r = run_host("--model", f"g={gemma_gguf}", "--host", "0.0.0.0", "--port", "0", "--api-key", "k")
    assert r.returncode == 2 and "--allow-remote" in r.stderr
    r = run_host("--model", f"g={gemma_gguf}", "--host", "0.0.0.0", "--port", "0", "--allow-remote")
    assert r.returncode == 2 and "API key" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "app", "--workspace", str(tmp_path / "ws"), "serve", "--model", str(gemma_gguf),
         "--host", "0.0.0.0", "--port", "0", "--threads", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "--allow-remote" in r.stderr


def test_start_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(HostStartError, match="exited") as info:
        HostProcess().start({"x": (tmp_path / "missing.gguf", None)})
    assert "There is no model" in str(info.value)


def test_model_spec_parsing(tmp_path: Path) -> None:
    assert parse_model_spec("g=/m/x.gguf:gguf") == ("g", Path("/m/x.gguf"), "gguf")
    assert parse_model_spec("/m/x.gguf") == ("x", Path("/m/x.gguf"), None)
    assert parse_model_spec("/m/folder:lora") == ("folder", Path("/m/folder"), "lora")
    assert parse_model_spec("C:/m/x.gguf") == ("x", Path("C:/m/x.gguf"), None)


def test_serve_cli_foreground(gemma_gguf: Path, tmp_path: Path) -> None:
    proc, out, url = start_serve(
        tmp_path / "ws", "--model", f"g={gemma_gguf}", "--port", "0", "--api-key", "secret-key",
        "--threads", "2",
    )  # fmt: skip
    try:
        assert (
            "API key: secret-key" in out and "curl " in out and "from openai import OpenAI" in out
        )
        c = openai.OpenAI(base_url=url, api_key="secret-key", max_retries=0)
        assert [m.id for m in c.models.list()] == ["g"]
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_serve_a_library_model_by_name(gemma_gguf: Path, tmp_path: Path) -> None:
    from app.core.models.registry import ModelRegistry
    from app.core.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    rec = ModelRegistry(ws).import_gguf(gemma_gguf, copy=False, name="gemma-lib")
    ws.close()
    proc, _out, url = start_serve(
        tmp_path / "ws", "--model", "gemma-lib", "--port", "0", "--api-key", "k2", "--threads", "2"
    )
    try:
        c = openai.OpenAI(base_url=url, api_key="k2", max_retries=0)
        assert [m.id for m in c.models.list()] == [rec.id]
        r = c.completions.create(model=rec.id, prompt="One, two,", max_tokens=4, temperature=0)
        assert r.choices[0].text.strip()
        assert (tmp_path / "ws" / "logs" / "requests.jsonl").exists()  # requests are logged
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_serve_unknown_model_is_one_clear_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "app", "--workspace", str(tmp_path / "ws"), "serve", "--model", "nope"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (
        r.returncode == 2 and r.stderr.startswith("demoai: error:") and "Traceback" not in r.stderr
    )
