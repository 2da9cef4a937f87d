"""Replay a recorded run: same agent version, seed and system prompt, recorded tool results.

The model is called again (the same model and seed should give the same
replies); tool calls are answered from the recording instead of being run
(``overrides`` may change a recorded result). The replay is stored as a new
run (``replay_of``) and compared step by step with the original: the report
names the first step that differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.agents.loop import ChatClient, StopRun, run_agent, run_tool_mode
from app.core.agents.runs import Run, RunStore, Step
from app.core.agents.tools import Tool, ToolCall, ToolError, ToolRegistry
from app.core.errors import ConfigError


@dataclass(frozen=True)
class Divergence:
    """The first differing step: its position on the path and both versions."""

    index: int
    expected: Step | None
    actual: Step | None

    def describe(self) -> str:
        def show(s: Step | None) -> str:
            if s is None:
                return "(nothing)"
            extra = f" {s.tool}({s.arguments})" if s.tool else ""
            return f"{s.kind}{extra}: {s.content[:200]!r}"

        return f"step {self.index}: expected {show(self.expected)}, got {show(self.actual)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "expected": self.expected.to_dict() if self.expected else None,
            "actual": self.actual.to_dict() if self.actual else None,
            "description": self.describe(),
        }


@dataclass(frozen=True)
class ReplayReport:
    original: Run
    replay: Run
    divergence: Divergence | None

    @property
    def identical(self) -> bool:
        return self.divergence is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "original": self.original.id,
            "replay": self.replay.id,
            "identical": self.identical,
            "divergence": self.divergence.to_dict() if self.divergence else None,
        }


def compare_paths(expected: list[Step], actual: list[Step]) -> Divergence | None:
    """The first position where two step paths differ (kind, content, tool, arguments)."""
    for i in range(max(len(expected), len(actual))):
        a = expected[i] if i < len(expected) else None
        b = actual[i] if i < len(actual) else None
        if a is None or b is None or a.signature() != b.signature():
            return Divergence(i, a, b)
    return None


def _stub_registry(system: Step) -> ToolRegistry:
    """Tools as the original run described them; they cannot run (results come from the record)."""

    def refuse(args: dict[str, Any]) -> str:
        raise StopRun("Replay: the model called a tool with no recorded result.")

    reg = ToolRegistry()
    for d in system.data.get("tools") or []:
        reg.register(
            Tool(
                name=d["name"],
                description=d.get("description", ""),
                parameters=d.get("parameters") or {"type": "object"},
                fn=refuse,
                side_effect=bool(d.get("side_effect")),
                source=d.get("source", "builtin"),
            )
        )
    return reg


def replay_run(
    run_id: str,
    *,
    client: ChatClient,
    runs: RunStore,
    overrides: dict[str, str] | None = None,
    tools: ToolRegistry | None = None,
) -> ReplayReport:
    """Re-execute ``run_id`` with its recorded tool results and compare.

    ``overrides`` maps a recorded ``tool_result`` step id to a replacement
    result. With ``tools`` given, tools run live instead (approvals are still
    taken from the recording), e.g. to see whether changed files change the run.
    """
    original = runs.get(run_id)
    path = runs.path(run_id)
    if not path or path[0].kind != "system":
        raise ConfigError(f"Run {run_id} has no recorded system step: it cannot be replayed.")
    overrides = dict(overrides or {})
    unknown = [k for k in overrides if k not in {s.id for s in path if s.kind == "tool_result"}]
    if unknown:
        raise ConfigError(f"Not a tool result of this run: {', '.join(unknown)}.")
    recorded = [s for s in path if s.kind == "tool_result" and "elapsed_s" in s.data]
    approvals = [s for s in path if s.kind == "approval" and s.data.get("by") != "remembered"]
    all_approvals = [s for s in path if s.kind == "approval"]

    def executor(call: ToolCall, tool: Tool) -> str:
        if not recorded:
            raise StopRun(f"Replay diverged: the model called {call.tool}, no call was recorded.")
        rec = recorded.pop(0)
        if (rec.tool, rec.arguments) != (call.tool, call.arguments):
            raise StopRun(
                f"Replay diverged: the model called {call.tool}({call.arguments}), "
                f"the recording has {rec.tool}({rec.arguments})."
            )
        if tools is not None:
            return tool.fn(dict(call.arguments))
        content = overrides.get(rec.id, rec.content)
        if rec.data.get("error") and rec.id not in overrides:
            raise ToolError(content.removeprefix("Error: "))
        return content

    def approve(call: ToolCall) -> str:
        if approvals and approvals[0].tool == call.tool:
            return approvals.pop(0).content
        for s in all_approvals:
            if s.tool == call.tool:
                return s.content
        return "deny"

    result = run_agent(
        original.agent_spec(),
        original.input,
        client=client,
        runs=runs,
        tools=tools if tools is not None else _stub_registry(path[0]),
        approve=approve,
        seed=original.seed,
        executor=executor,
        system_text=path[0].content,
        replay_of=run_id,
        tool_mode=run_tool_mode(runs, run_id),
    )
    return ReplayReport(original, result.run, compare_paths(path, result.steps))
