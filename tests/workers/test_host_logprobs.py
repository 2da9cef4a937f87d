"""Logprobs and echo through the real model host, checked against llama.cpp and transformers
computed directly in this process on the same tokens."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from app.workers.host_client import HostProcess

TOL = 1e-4
N_CTX = 512
THREADS = 2
MESSAGES = [{"role": "user", "content": "Name a fruit."}]
PROMPT = "The capital of France is Paris. The capital of Italy is"


@pytest.fixture(scope="module")
def host(gemma_gguf: Path, tiny_llama_dir: Path) -> Iterator[HostProcess]:
    h = HostProcess(threads=THREADS, n_ctx=N_CTX)
    h.start({"gemma": (gemma_gguf, "gguf"), "tiny": (tiny_llama_dir, "hf")})
    yield h
    h.stop()


@pytest.fixture
def client(host: HostProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=host.base_url, api_key=host.token, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def llama(gemma_gguf: Path) -> Iterator[Any]:
    """The Gemma GGUF in a plain ``llama_cpp.Llama`` that keeps every position's logits."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(gemma_gguf), n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS,
        logits_all=True, verbose=False,
    )  # fmt: skip
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), use_safetensors=True)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_llama_dir))


def log_softmax(row: Any) -> Any:
    x = np.asarray(row, dtype=np.float64)
    m = x.max()
    return x - (m + math.log(float(np.exp(x - m).sum())))


def post(host: HostProcess, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        host.base_url.removesuffix("/v1") + path, data=json.dumps(body).encode(), method="POST"
    )
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {host.token}")
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    if raw.startswith(b"data:"):
        events = [ln[6:] for ln in raw.decode().splitlines() if ln.startswith("data: ")]
        return status, [json.loads(e) for e in events if e != "[DONE]"]
    return status, json.loads(raw)


def gemma_prompt_tokens(llama: Any, text: str) -> list[int]:
    return list(llama.tokenize(text.encode(), add_bos=not text.startswith("<bos>"), special=True))


def gemma_chat_prompt(gemma_gguf: Path) -> str:
    """The chat prompt the host renders (the model's own template)."""
    from app.core.infer import EngineOptions, open_engine

    with open_engine(gemma_gguf, "gguf", EngineOptions(threads=THREADS, n_ctx=64)) as engine:
        return str(engine.chat_template.render(MESSAGES, add_generation_prompt=True))


def llama_greedy(llama: Any, tokens: list[int], n: int) -> list[tuple[int, Any]]:
    """Greedy decoding as the host runs it (prompt but its last token in one batch, then one
    token at a time): (token, log-softmax of the logits that chose it) per step."""
    import llama_cpp

    llama.reset()
    llama.eval(tokens[:-1])
    llama.eval(tokens[-1:])
    out = []
    for _ in range(n):
        lp = log_softmax(llama.scores[llama.n_tokens - 1])
        tok = int(np.argmax(lp))
        if llama_cpp.llama_vocab_is_eog(llama._model.vocab, tok):
            break
        out.append((tok, lp))
        llama.eval([tok])
    return out


def check_chat_entries(entries: list[Any], expected: list[tuple[int, Any]], llama: Any) -> None:
    assert len(entries) == len(expected) > 0
    for e, (tok, lp) in zip(entries, expected, strict=True):
        assert bytes(e["bytes"]) == bytes(llama.detokenize([tok]))
        assert abs(e["logprob"] - lp[tok]) < TOL
        top = np.argsort(-lp)[:3]
        assert len(e["top_logprobs"]) == 3
        for alt, t in zip(e["top_logprobs"], top, strict=True):
            assert bytes(alt["bytes"]) == bytes(llama.detokenize([int(t)]))
            assert abs(alt["logprob"] - lp[t]) < TOL


def test_gguf_chat_logprobs_equal_llama_cpp(
    client: openai.OpenAI, llama: Any, gemma_gguf: Path
) -> None:
    kw: dict[str, Any] = {
        "model": "gemma", "messages": MESSAGES, "max_tokens": 8, "temperature": 0,
        "logprobs": True, "top_logprobs": 3,
    }  # fmt: skip
    reply = client.chat.completions.create(**kw)
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = [c.model_dump() for c in choice.logprobs.content]
    tokens = gemma_prompt_tokens(llama, gemma_chat_prompt(gemma_gguf))
    expected = llama_greedy(llama, tokens, 8)
    check_chat_entries(entries, expected, llama)
    assert "".join(e["token"] for e in entries) == choice.message.content
    assert reply.usage is not None and reply.usage.completion_tokens == len(entries)

    streamed: list[Any] = []
    text = []
    for chunk in client.chat.completions.create(**kw, stream=True):
        for ch in chunk.choices:
            text.append(ch.delta.content or "")
            if ch.logprobs is not None and ch.logprobs.content:
                streamed.extend(c.model_dump() for c in ch.logprobs.content)
    check_chat_entries(streamed, expected, llama)
    assert "".join(text) == choice.message.content

    # Without logprobs the reply has none (and the same text).
    plain = client.chat.completions.create(**{**kw, "logprobs": None, "top_logprobs": None})
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == choice.message.content


def test_gguf_echo_scores_the_prompt(client: openai.OpenAI, host: HostProcess, llama: Any) -> None:
    tokens = gemma_prompt_tokens(llama, PROMPT)
    llama.reset()
    llama.eval(tokens)
    expected = [log_softmax(llama.scores[i]) for i in range(len(tokens) - 1)]

    reply = client.completions.create(
        model="gemma", prompt=PROMPT, max_tokens=0, echo=True, logprobs=5
    )
    choice = reply.choices[0]
    assert choice.text == PROMPT  # the prompt and no generated text
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(tokens), 0)
    lp = choice.logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
    assert len(lp.token_logprobs) == len(tokens)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for i in range(1, len(tokens)):
        assert abs(lp.token_logprobs[i] - expected[i - 1][tokens[i]]) < TOL
        top = np.argsort(-expected[i - 1])[:5]
        want = {bytes(llama.detokenize([int(t)])).decode(): expected[i - 1][t] for t in top}
        got = lp.top_logprobs[i]
        assert set(got) == set(want)
        assert all(abs(got[k] - want[k]) < TOL for k in want)
    assert lp.tokens is not None and "".join(lp.tokens) == PROMPT
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(tokens))]

    # Streamed: the same scores, and no generated text.
    status, events = post(
        host, "/v1/completions",
        {"model": "gemma", "prompt": PROMPT, "max_tokens": 0, "echo": True, "logprobs": 5,
         "stream": True},
    )  # fmt: skip
    assert status == 200
    texts = "".join(ch["text"] for ev in events for ch in ev["choices"])
    assert texts == PROMPT
    got_lp = [
        v for ev in events for ch in ev["choices"] if ch["logprobs"]
        for v in ch["logprobs"]["token_logprobs"]
    ]  # fmt: skip
    assert got_lp[0] is None and len(got_lp) == len(tokens)
    assert max(abs(got_lp[i] - expected[i - 1][tokens[i]]) for i in range(1, len(tokens))) < TOL
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_gguf_token_prompts_as_lm_eval_sends_them(host: HostProcess, llama: Any) -> None:
    """Token-id prompts in a batch, echo, logprobs 1, max_tokens 1 (lm-eval's loglikelihood
    request): one choice per prompt; the scores are the prompt's, then one generated token
    with its own score."""
    a = gemma_prompt_tokens(llama, "The sky is blue")
    b = gemma_prompt_tokens(llama, "Two plus two is four")
    status, reply = post(
        host, "/v1/completions",
        {"model": "gemma", "prompt": [a, b], "max_tokens": 1, "logprobs": 1, "echo": True,
         "temperature": 0, "seed": 1234},
    )  # fmt: skip
    assert status == 200, reply
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    for toks, choice in zip((a, b), reply["choices"], strict=True):
        llama.reset()
        llama.eval(toks)
        lps = choice["logprobs"]["token_logprobs"]
        assert len(lps) == len(toks) + 1 and lps[0] is None
        for i in range(1, len(toks)):
            assert abs(lps[i] - log_softmax(llama.scores[i - 1])[toks[i]]) < TOL
        # The generated token is the greedy one, scored as generation computes it (the
        # last prompt token evaluated alone: llama.cpp's batched logits differ slightly).
        [(tok, last)] = llama_greedy(llama, toks, 1)
        assert choice["logprobs"]["tokens"][-1] == bytes(llama.detokenize([tok])).decode()
        assert abs(lps[-1] - last[tok]) < TOL
        assert max(choice["logprobs"]["top_logprobs"][-1].values()) == lps[-1]
    assert reply["usage"]["prompt_tokens"] == len(a) + len(b)
    assert reply["usage"]["completion_tokens"] == 2


def tiny_greedy(tiny: Any, tokens: list[int], n: int) -> list[tuple[int, Any]]:
    import torch

    model, _ = tiny
    ids = list(tokens)
    out = []
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            lp = log_softmax(logits.numpy())
            tok = int(np.argmax(lp))
            if tok == eos:
                break
            out.append((tok, lp))
            ids.append(tok)
    return out


def test_hf_logprobs_equal_transformers(host: HostProcess, tiny: Any) -> None:
    import torch

    model, tok = tiny
    tokens = list(tok("The cat reads a book")["input_ids"])
    with torch.no_grad():
        rows = model(input_ids=torch.tensor([tokens])).logits[0].numpy()
    status, reply = post(
        host, "/v1/completions",
        {"model": "tiny", "prompt": "The cat reads a book", "max_tokens": 0, "echo": True,
         "logprobs": 2},
    )  # fmt: skip
    assert status == 200, reply
    lp = reply["choices"][0]["logprobs"]
    assert reply["choices"][0]["text"] == "The cat reads a book"
    assert len(lp["token_logprobs"]) == len(tokens) and lp["token_logprobs"][0] is None
    for i in range(1, len(tokens)):
        assert abs(lp["token_logprobs"][i] - log_softmax(rows[i - 1])[tokens[i]]) < TOL
        assert len(lp["top_logprobs"][i]) <= 2

    # Generation, streamed and not: each token's logprob from a full forward pass.
    body = {"model": "tiny", "prompt": tokens, "max_tokens": 6, "temperature": 0, "logprobs": 3}
    expected = tiny_greedy(tiny, tokens, 6)
    status, whole = post(host, "/v1/completions", body)
    assert status == 200, whole
    got = whole["choices"][0]["logprobs"]["token_logprobs"]
    assert len(got) == len(expected) > 0
    assert max(abs(g - lp[t]) for g, (t, lp) in zip(got, expected, strict=True)) < TOL
    status, events = post(host, "/v1/completions", {**body, "stream": True})
    assert status == 200
    streamed = [
        v for ev in events for ch in ev["choices"] if ch["logprobs"]
        for v in ch["logprobs"]["token_logprobs"]
    ]  # fmt: skip
    assert streamed == pytest.approx(got, abs=TOL)

    chat = {"model": "tiny", "messages": MESSAGES, "max_tokens": 5, "temperature": 0,
            "logprobs": True, "top_logprobs": 2}  # fmt: skip
    status, reply = post(host, "/v1/chat/completions", chat)
    assert status == 200, reply
    content = reply["choices"][0]["logprobs"]["content"]
    assert 0 < len(content) == reply["usage"]["completion_tokens"]
    assert all(len(c["top_logprobs"]) == 2 for c in content)
    assert all(c["logprob"] == pytest.approx(c["top_logprobs"][0]["logprob"]) for c in content)
    status, events = post(host, "/v1/chat/completions", {**chat, "stream": True})
    assert status == 200
    streamed_c = [
        c for ev in events for ch in ev["choices"] if ch.get("logprobs")
        for c in ch["logprobs"]["content"]
    ]  # fmt: skip
    assert [c["logprob"] for c in streamed_c] == pytest.approx(
        [c["logprob"] for c in content], abs=TOL
    )


@pytest.mark.parametrize(
    ("path", "extra", "needle"),
    [
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": "3"}, "top_logprobs"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "needs logprobs"),
        ("/v1/chat/completions", {"logprobs": 1}, "logprobs"),
        ("/v1/completions", {"logprobs": 21}, "logprobs"),
        ("/v1/completions", {"logprobs": -1}, "logprobs"),
        ("/v1/completions", {"logprobs": True}, "logprobs"),
        ("/v1/completions", {"echo": "yes"}, "echo"),
        ("/v1/completions", {"max_tokens": 0}, "echo"),
        ("/v1/completions", {"max_tokens": -1, "echo": True}, "max_tokens"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": [2, 10**9], "echo": True, "max_tokens": 0}, "vocabulary"),
        ("/v1/completions", {"prompt": [2, -5], "logprobs": 1}, "vocabulary"),
        ("/v1/completions", {"prompt": [[2, 3], []], "logprobs": 1}, "prompt"),
        ("/v1/completions", {"prompt": ["a", "b"], "stream": True, "logprobs": 1}, "stream"),
        ("/v1/completions", {"prompt": ["a"] * 65}, "prompt"),
        ("/v1/completions", {"prompt": [2] * (N_CTX + 1), "echo": True, "max_tokens": 0},
         "context length"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("model", ["gemma", "tiny"])
def test_bad_values_are_400(
    host: HostProcess, path: str, extra: dict[str, Any], needle: str, model: str
) -> None:
    body: dict[str, Any] = {"model": model, "max_tokens": 2}
    body.update({"messages": MESSAGES} if "chat" in path else {"prompt": "Hi"})
    body.update(extra)
    status, reply = post(host, path, body)
    assert status == 400, reply
    assert needle in reply["error"]["message"]
    ok, _ = post(host, "/v1/completions", {"model": model, "prompt": "Hi", "max_tokens": 1})
    assert ok == 200


def get(host: HostProcess, path: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(host.base_url.removesuffix("/v1") + path)
    req.add_header("Authorization", f"Bearer {token or host.token}")
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_tokenizer_routes(host: HostProcess, llama: Any, tiny: Any) -> None:
    """/tokenize, /detokenize and /tokenizer_info (lm-eval's remote tokenizer backend)."""
    text = "The capital of France is Paris."
    status, out = post(
        host, "/tokenize", {"model": "gemma", "prompt": text, "add_special_tokens": False}
    )
    assert status == 200, out
    assert out["tokens"] == gemma_prompt_tokens(llama, text)[1:]  # without BOS
    status, with_bos = post(host, "/tokenize", {"model": "gemma", "prompt": text})
    assert with_bos["tokens"] == gemma_prompt_tokens(llama, text)
    assert post(host, "/detokenize", {"model": "gemma", "tokens": out["tokens"]})[1] == {
        "prompt": text
    }
    status, info = get(host, "/tokenizer_info?model=gemma")
    assert status == 200 and info["eos_token"] and info["vocab_size"] == llama.n_vocab()
    _, eos = post(host, "/tokenize", {"model": "gemma", "prompt": info["eos_token"],
                                      "add_special_tokens": False})  # fmt: skip
    assert eos["tokens"] == [llama.token_eos()]

    _, tok = tiny
    status, out = post(host, "/tokenize", {"model": "tiny", "prompt": text})
    assert out["tokens"] == list(tok(text)["input_ids"])
    status, back = post(host, "/detokenize", {"model": "tiny", "tokens": out["tokens"]})
    assert back["prompt"] == tok.decode(out["tokens"], skip_special_tokens=True)

    # Several models and none named: a 400 that says so; bad input is a 400; a key is needed.
    status, err = get(host, "/tokenizer_info")
    assert status == 400 and "several models" in err["error"]["message"]
    for body in ({"model": "gemma", "tokens": [1, 10**9]}, {"model": "gemma", "tokens": "x"}):
        status, err = post(host, "/detokenize", body)
        assert status == 400, err
    assert post(host, "/tokenize", {"model": "gemma", "prompt": 5})[0] == 400
    assert get(host, "/tokenizer_info?model=gemma", token="wrong")[0] == 401
    assert post(host, "/detokenize", {"model": "gemma", "tokens": [2]})[0] == 200


def test_gguf_echo_of_a_prompt_longer_than_one_scoring_decode(
    host: HostProcess, llama: Any
) -> None:
    """Scoring splits a long prompt over several llama.cpp decodes (128 positions each for
    Gemma's vocabulary): the scores still equal one whole evaluation."""
    text = "One two three four five six seven eight nine ten. " * 30
    tokens = gemma_prompt_tokens(llama, text)
    assert 300 < len(tokens) < N_CTX
    llama.reset()
    llama.eval(tokens)
    status, reply = post(
        host, "/v1/completions",
        {"model": "gemma", "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 0},
    )  # fmt: skip
    assert status == 200, reply
    got = reply["choices"][0]["logprobs"]["token_logprobs"]
    assert len(got) == len(tokens) and got[0] is None
    worst = max(
        abs(got[i] - log_softmax(llama.scores[i - 1])[tokens[i]]) for i in range(1, len(tokens))
    )
    assert worst < TOL
    assert reply["choices"][0]["logprobs"]["top_logprobs"][5] == {}
