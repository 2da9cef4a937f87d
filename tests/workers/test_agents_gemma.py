"""The agent loop with the real Gemma 3 270M through the real model host, JSON-constrained.

The tiny model cannot be relied on to pick sensible tools; these tests check the
mechanism: ``response_format: json_object`` makes its replies parse as JSON, and
the loop records a parsed step or a clear failure.
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
    spec = AgentStore(workspace.db).save(
        AgentSpec(
            name="gemma-calc",
            model_id="gemma",
            system_prompt="You are a calculator assistant.",
            sampling={"temperature": 0.0, "seed": 5},
            tools=(ToolGrant("calculator"),),
            limits=Limits(max_steps=1, max_tokens=64, timeout_s=400),
        )
    )
    client = OpenAIChatClient(gemma_host.base_url, gemma_host.token, model="gemma")
    with agent_tools(spec) as tools:
        res = run_agent(
            spec, "What is 6 * 7?", client=client, runs=RunStore(workspace.db), tools=tools
        )
    assert res.status in ("succeeded", "failed", "max_steps"), res.status
    models = [s for s in res.steps if s.kind == "model"]
    assert models, res.steps
    for s in models:
        # Grammar-constrained: every reply is JSON (possibly cut off at max_tokens).
        assert s.content.lstrip().startswith("{"), s.content
        assert "reply" in s.data or "problem" in s.data
    if res.status == "failed":
        assert res.error and res.steps[-1].kind == "error"
    else:
        assert any("reply" in s.data for s in models)
    if res.status == "succeeded":
        assert res.final is not None
