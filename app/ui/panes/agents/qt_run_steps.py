"""How the Agents pane shows a run's steps: one-line descriptions, the effect of a
side-effecting call, and the dialog that edits a step before a fork."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

from app.core.agents import AgentSpec, Step, ToolCall
from app.core.agents.approvals import Grant
from app.core.agents.builtin_tools import resolve_inside
from app.core.agents.tools import ToolError

STEP_ROLE = Qt.ItemDataRole.UserRole
EDITABLE_KINDS = ("user", "model", "tool_result")
ERROR_COLOR = "#b00020"
STOP_COLOR = "#44546a"  # a run that reached a limit: neutral, not the error red


def format_call(tool: str, arguments: dict[str, Any] | None, width: int = 80) -> str:
    """``write_file(path='a.txt', content='hello…')`` with long values shortened."""
    parts = []
    for k, v in (arguments or {}).items():
        r = repr(v)
        parts.append(f"{k}={r if len(r) <= width else r[: width - 1] + '…'}")
    return f"{tool}({', '.join(parts)})"


def describe_step(step: Step) -> tuple[str, str]:
    """(label, one-line content) of a step for the run view."""
    first = " ".join(step.content.split())[:300]
    if step.kind == "system":
        n = len(step.data.get("tools") or [])
        mode = {"native": " · native tool calls", "json": " · JSON tool protocol"}
        return "system", f"system prompt and {n} tool(s){mode.get(step.data.get('tool_mode'), '')}"
    if step.kind == "model":
        reply = step.data.get("reply")
        if isinstance(reply, dict) and "final" in reply:
            return "final answer", str(reply["final"])
        if isinstance(reply, dict) and reply.get("tool"):
            calls = [reply, *(step.data.get("more_calls") or [])]
            label = "tool call" if len(calls) == 1 else f"tool calls ({len(calls)})"
            return label, "; ".join(format_call(str(c["tool"]), c.get("arguments")) for c in calls)
        return "model (unusable reply)", f"{step.data.get('problem', '')}: {first}"
    if step.kind == "approval":
        who = step.data.get("by", "")
        return (
            f"approval: {step.content}",
            f"{format_call(step.tool or '?', step.arguments)} ({who})",
        )
    if step.kind == "tool_result":
        if step.data.get("repeated"):
            n = step.data["repeated"]
            return f"repeated call #{n} · not run", f"[{step.tool}] {first}"
        flag = " · error" if step.data.get("error") else ""
        return f"tool result · UNTRUSTED{flag}", f"[{step.tool}] {first}"
    if step.kind == "stop":
        return "stopped", first
    return step.kind, first


def call_effect(spec: AgentSpec, call: ToolCall) -> str | None:
    """What a side-effecting call will do, for the approval bar; None when we cannot tell.

    For ``write_file``: "creates X" or "OVERWRITES existing X (N bytes)", X resolved in
    the agent's granted folder as the tool resolves it.
    """
    if call.tool != "write_file":
        return None
    grant = next((t for t in spec.tools if t.name == "write_file"), None)
    rel = call.arguments.get("path")
    if grant is None or not grant.folder or not isinstance(rel, str):
        return None
    root = Path(grant.folder).expanduser()
    try:
        target = resolve_inside(root, rel)
    except ToolError as exc:
        return f"call will be refused: {exc.message}"
    shown = target.relative_to(root.resolve()).as_posix()
    if target.is_dir():
        return f"call will fail: {shown} is a folder"
    if target.exists():
        size = target.stat().st_size
        return f"OVERWRITES existing {shown} ({size} bytes) in {root}"
    return f"creates {shown} in {root}"


def approval_text(call: ToolCall | Grant, run: Any = None) -> str:
    """What the approval bar says about a call (of ``run``'s agent) or a grant."""
    if isinstance(call, Grant):
        return (
            f"This agent version needs your approval before it can use this:\n"
            f"{call.describe()}\n"
            "Approve once (this run), always for this version, or deny (it stays inactive)."
        )
    agent = run.agent if run is not None else "The agent"
    effect = call_effect(run.agent_spec(), call) if run is not None else None
    lines = [f"Agent {agent} wants to call {format_call(call.tool, call.arguments, 400)}"]
    if effect:
        lines.append(f"This {effect}.")
    lines.append("This tool changes things outside the conversation.")
    return "\n".join(lines)


class ForkDialog(QDialog):
    """Edit a step's content before forking (or keep it to continue from the step)."""

    def __init__(self, step: Step, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.step = step
        self.setWindowTitle("Fork from this step")
        lay = QVBoxLayout(self)
        label, _ = describe_step(step)
        self.editable = step.kind in EDITABLE_KINDS
        lay.addWidget(
            QLabel(
                f"Fork from <b>{label}</b>. Edit the content; the run continues after it "
                "on a new branch."
                if self.editable
                else f"Continue the run from <b>{label}</b> on a new branch."
            )
        )
        self.editor = QPlainTextEdit(step.content)
        self.editor.setReadOnly(not self.editable)
        lay.addWidget(self.editor)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setText("Fork and run")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)
        self.resize(560, 320)

    def content(self) -> str | None:
        """The edited content, or None to continue from the step unchanged."""
        text = self.editor.toPlainText()
        if not self.editable or text == self.step.content:
            return None
        return text
