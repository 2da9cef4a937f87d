"""Native tool calling in the model host, with the real Gemma 3 270M model.

Gemma's own template has no tools; served with the ``hermes`` preset it gets
the Hermes tool format. A base 270M model does not call tools on its own, but
``tool_choice: required`` (or a named function) constrains its output with a
grammar to a call in the template's syntax, which the host parses into
OpenAI ``tool_calls``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from app.workers.host_client import HostProcess

CALC = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "maxLength": 20}},
            "required": ["expression"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Today's weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is 17 times 3?"}]


@pytest.fixture(scope="module")
def hermes_host(gemma_gguf: Path) -> Iterator[HostProcess]:
    h = HostProcess(threads=2, n_ctx=1024)
    h.start({"gemma": (gemma_gguf, "gguf")}, template="hermes")
    yield h
    h.stop()


@pytest.fixture(scope="module")
def plain_host(gemma_gguf: Path) -> Iterator[HostProcess]:
    h = HostProcess(threads=2, n_ctx=512)
    h.start({"gemma": (gemma_gguf, "gguf")})
    yield h
    h.stop()


def client_for(host: HostProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=host.base_url, api_key=host.token, max_retries=0, timeout=120)


def test_capabilities_report_the_tool_format(
    hermes_host: HostProcess, plain_host: HostProcess
) -> None:
    info = client_for(hermes_host).models.retrieve("gemma").model_dump()
    assert info["capabilities"]["tools"] == "hermes"
    assert info["capabilities"]["chat_template"] == "hermes"
    plain = client_for(plain_host).models.retrieve("gemma").model_dump()
    assert plain["capabilities"]["tools"] is None
    assert plain["capabilities"]["chat_template"] == "gemma"  # the base model ships none


def test_required_tool_choice_gives_a_valid_call(hermes_host: HostProcess) -> None:
    r = client_for(hermes_host).chat.completions.create(
        model="gemma", messages=ASK, tools=[CALC, WEATHER], tool_choice="required",  # type: ignore[list-item]
        max_tokens=60, temperature=0, seed=1,
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    fn = calls[0].function  # type: ignore[union-attr]
    args = json.loads(fn.arguments)
    assert fn.name in ("calculator", "weather")
    key = "expression" if fn.name == "calculator" else "city"
    assert set(args) == {key} and isinstance(args[key], str)
    assert calls[0].id.startswith("call_")


def test_named_tool_choice_and_a_tool_conversation(hermes_host: HostProcess) -> None:
    client = client_for(hermes_host)
    r = client.chat.completions.create(
        model="gemma", messages=ASK, tools=[CALC, WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "weather"}},
        max_tokens=60, temperature=0, seed=1,
    )  # fmt: skip
    call = (r.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "weather"  # type: ignore[union-attr]
    assert set(json.loads(call.function.arguments)) == {"city"}  # type: ignore[union-attr]
    # The call and its result go back as assistant tool_calls + a tool message.
    messages: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "51"},
    ]
    r2 = client.chat.completions.create(
        model="gemma", messages=messages, tools=[CALC, WEATHER], tool_choice="none",  # type: ignore[list-item]
        max_tokens=8, temperature=0, seed=1,
    )  # fmt: skip
    assert r2.choices[0].finish_reason in ("stop", "length")
    assert r2.usage is not None and r2.usage.prompt_tokens > 40


def test_streamed_tool_call(hermes_host: HostProcess) -> None:
    stream = client_for(hermes_host).chat.completions.create(
        model="gemma", messages=ASK, tools=[CALC], tool_choice="required",  # type: ignore[list-item]
        max_tokens=60, temperature=0, seed=1, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    deltas = [c.choices[0] for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in (d.delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function is not None
    assert calls[0].function.name == "calculator"
    assert set(json.loads(calls[0].function.arguments or "")) == {"expression"}
    assert deltas[-1].finish_reason == "tool_calls"


def test_tools_refused_clearly(hermes_host: HostProcess, plain_host: HostProcess) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client_for(plain_host).chat.completions.create(
            model="gemma",
            messages=ASK,
            tools=[CALC],
            max_tokens=4,  # type: ignore[list-item]
        )
    assert err.value.code == "tools_unsupported" and "tool-calling" in str(err.value)
    bad = {"type": "function", "function": {"name": "has space"}}
    with pytest.raises(openai.BadRequestError) as err2:
        client_for(hermes_host).chat.completions.create(
            model="gemma",
            messages=ASK,
            tools=[bad],
            max_tokens=4,  # type: ignore[list-item]
        )
    assert err2.value.code == "invalid_tools"
    with pytest.raises(openai.BadRequestError) as err3:
        client_for(hermes_host).chat.completions.create(
            model="gemma", messages=ASK, tools=[CALC], max_tokens=4,  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )  # fmt: skip
    assert "not in tools" in str(err3.value)
