"""The Installed tab after importing an untrusted agent bundle: the report lists the MCP
server's full argv and environment (computed from the spec, though the bundle's summary
hides it), the approvals list shows it waiting; a run asks in the approval bar and, denied,
the server never starts; approved in the list it starts; revoked it waits again.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from app.core.agents import OpenAIChatClient
from app.core.export.checksums import write_sums
from tests.support.mcp_marker import MCP_SERVER
from tests.support.scripted_server import ScriptedServer


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    script = [{"tool": "fetch.shout", "arguments": {"text": "hi"}}, {"final": "done"}]
    with ScriptedServer(script) as srv:
        yield srv


def hidden_server_bundle(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A bundle whose bundle.json summary omits its MCP server; (bundle, script, marker)."""
    script = tmp_path / "fetch_server.py"
    script.write_text(MCP_SERVER)
    marker = tmp_path / "marker"
    spec = {
        "name": "fetcher",
        "description": "summarises web pages",
        "tools": ["calculator", {"name": "read_file", "folder": str(tmp_path)}],
        "mcp_servers": [{"name": "fetch", "command": sys.executable,
                         "args": [str(script), str(marker)],
                         "env": {"FETCH_TOKEN": "t0ken"}}],
    }  # fmt: skip
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "agent.json").write_text(json.dumps(spec))
    meta = {"format": 1, "kind": "agent", "name": "fetcher", "files": ["agent.json"],
            "requires": {"models": [], "tools": ["calculator"], "mcp_servers": []}}  # fmt: skip
    (root / "bundle.json").write_text(json.dumps(meta))
    write_sums(root)
    return root, script, marker


def test_import_report_and_approvals_list(
    qtbot: Any, main_window: Any, server: ScriptedServer, tmp_path: Path
) -> None:
    pytest.importorskip("mcp")
    pane = main_window.pane("agents")
    pane.runner.client_factory = lambda spec: OpenAIChatClient(server.base_url, server.token)
    view = pane.store_view
    pane.tabs.setCurrentWidget(view)
    main_window.resize(1400, 1000)
    bundle, script, marker = hidden_server_bundle(tmp_path)

    assert view.import_bundle(bundle) is not None  # through the action layer
    qtbot.waitUntil(lambda: not view.importing, timeout=30_000)
    rep = view.last_report
    assert rep is not None and rep.imported == ["agent fetcher v1"]
    text = view.report.toPlainText()
    assert (
        f"MCP servers (programs it starts):\n    fetch: {sys.executable} {script} {marker}\n"
        in text
    )
    assert "environment: FETCH_TOKEN=t0ken" in text
    assert f"read_file: reads files in {tmp_path}" in text
    assert "WARNING: the bundle's own summary does not mention MCP server 'fetch'" in text
    assert "Inactive until you approve" in text
    view.grab().save("/tmp/A-import-report.png")

    rows = view.approvals.rows()
    assert len(rows) == 1
    agent, version, allows, status = rows[0]
    assert (agent, version, status) == ("fetcher", "v1", "waiting for approval (inactive)")
    assert allows.startswith("MCP server 'fetch' starts the program:")
    assert str(marker) in allows and "FETCH_TOKEN=t0ken" in allows
    assert not view.approvals.approve_btn.isEnabled()  # nothing selected yet

    # A run asks in the approval bar; denied, the server never starts.
    pane.open_agent("fetcher")
    pane.view.input.setPlainText("shout hi")
    qtbot.mouseClick(pane.view.run_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.view.approval_bar.isHidden(), timeout=30_000)
    bar = pane.view.approval_bar.text.text()
    assert "needs your approval" in bar and str(script) in bar and "FETCH_TOKEN=t0ken" in bar
    qtbot.mouseClick(pane.view.approval_bar.deny_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.busy, timeout=30_000)
    assert not marker.exists()
    assert pane.agents.versions("fetcher") == [1]  # the run used the imported version
    results = [s for s in pane.runs.path(pane.run_id) if s.kind == "tool_result"]
    assert "no tool named 'fetch.shout'" in results[0].content

    # Approved in the list: the next run starts it without asking.
    pane.tabs.setCurrentWidget(view)
    assert view.approvals.select_row(0)
    qtbot.mouseClick(view.approvals.approve_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not view.approvals.busy, timeout=10_000)
    [(_, version, allows, status)] = view.approvals.rows()
    assert version == "v1" and status.startswith("approved · user (Agents pane)")
    assert str(marker) in allows
    view.approvals.select_row(0)
    assert view.approvals.revoke_btn.isEnabled() and not view.approvals.approve_btn.isEnabled()
    view.grab().save("/tmp/A-approvals.png")
    pane.tabs.setCurrentIndex(0)
    qtbot.mouseClick(pane.view.run_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.busy, timeout=60_000)
    assert pane.view.approval_bar.isHidden()
    assert marker.read_text() == "started"
    results = [s for s in pane.runs.path(pane.run_id) if s.kind == "tool_result"]
    assert results[0].content == "HI!"

    # Revoked: it waits for approval again.
    pane.tabs.setCurrentWidget(view)
    view.approvals.select_row(0)
    qtbot.mouseClick(view.approvals.revoke_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not view.approvals.busy, timeout=10_000)
    assert [r[3] for r in view.approvals.rows()] == ["waiting for approval (inactive)"]
