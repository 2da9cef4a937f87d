"""The agent loop with the real Gemma 3 270M through the real model host, JSON-constrained.

``response_format: json_object`` makes its replies parse as JSON; the loop's
``json_schema`` turn schema (one of the tools with its arguments, or a final
answer) makes even this base model call the calculator correctly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.agents import (
    AgentSpec,
    AgentStore,
    Limits,
    OpenAIChatClient,
    RunStore,
    ToolGrant,
    agent_tools,
    run_agent,
)
from app.workers.host_client import HostProcess


@pytest.fixture(scope="module")
def gemma_host(gemma_gguf: Path) -> Iterator[HostProcess]:
    host = HostProcess(threads=2, n_ctx=2048)
    host.start({"gemma": (gemma_gguf, "gguf")})
    yield host
    host.stop()


def test_json_object_mode_replies_parse(gemma_host: HostProcess) -> None:
    client = OpenAIChatClient(gemma_host.base_url, gemma_host.token, model="gemma")
    text = client.chat(
        [{"role": "user", "content": 'Answer in JSON like {"final": "..."}: what is 2+2?'}],
        sampling={"temperature": 0.0, "seed": 1},
        max_tokens=48,
        timeout=300,
    )
    assert isinstance(json.loads(text), dict), text


def test_agent_loop_with_gemma(workspace: Any, gemma_host: HostProcess) -> None:
    """The turn schema (a call of an existing tool with its arguments, or a final answer)
    holds even the 270M base model to the protocol: it calls the calculator correctly."""
    spec = AgentStore(workspace.db).save(
        AgentSpec(
            name="gemma-calc",
            model_id="gemma",
            system_prompt="You are a calculator assistant.",
            sampling={"temperature": 0.0, "seed": 5},
            tools=(ToolGrant("calculator"),),
            limits=Limits(max_steps=1, max_tokens=96, timeout_s=400),
        )
    )
    client = OpenAIChatClient(gemma_host.base_url, gemma_host.token, model="gemma")
    with agent_tools(spec) as tools:
        res = run_agent(
            spec, "What is 6 * 7?", client=client, runs=RunStore(workspace.db), tools=tools
        )
    assert res.steps[0].data["tool_mode"] == "json"  # Gemma's template has no tool format
    kinds = [s.kind for s in res.steps]
    assert kinds == ["system", "user", "model", "tool_result", "stop"], kinds
    model = res.steps[2]
    assert model.content.lstrip().startswith("{") and "problem" not in model.data
    call = model.data["reply"]
    assert call["tool"] == "calculator", call
    assert call["arguments"]["expression"].replace(" ", "") == "6*7", call
    assert res.steps[3].content == "42" and not res.steps[3].data["error"]
    assert res.status == "stopped"  # one model turn allowed
    assert res.error == "reached its step limit of 1"


def test_schema_the_server_cannot_use_falls_back_to_json_object(gemma_host: HostProcess) -> None:
    client = OpenAIChatClient(gemma_host.base_url, gemma_host.token, model="gemma")
    remote = {"$ref": "https://example.com/schema.json"}  # never fetched: offline
    text = client.chat(
        [{"role": "user", "content": 'Answer in JSON like {"final": "..."}: what is 2+2?'}],
        sampling={"temperature": 0.0, "seed": 1},
        max_tokens=48,
        timeout=300,
        schema=remote,
    )
    assert isinstance(json.loads(text), dict), text
    assert client._schema_ok is False  # later turns go straight to json_object
