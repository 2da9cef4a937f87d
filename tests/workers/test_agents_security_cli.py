"""Issue 13 end to end through ``demoai agent``: an imported agent's MCP server does not run
until approved (unattended, and on a terminal when the user denies), runs once approved,
stops again when revoked; a new version with a wider write grant does not write unattended.

The MCP server is a real program that creates a marker file when it starts; the model is
the scripted OpenAI-compatible server (a real child process on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.agents import AgentSpec, AgentStore, ToolGrant
from app.core.agents.approvals import ApprovalStore, grants
from app.core.workspace import Workspace
from tests.support.cli import demoai
from tests.support.mcp_marker import MCP_SERVER
from tests.support.scripted_server import ScriptedServer

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = [{"tool": "fetch.shout", "arguments": {"text": "hi"}}, {"final": "done"}]


def demoai_on_terminal(ws: Path, *args: str, answer: str, timeout: float = 120) -> tuple[int, str]:
    """Run with stdin and stderr on a pseudo-terminal; answer each 'Allow?' with ``answer``."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "--workspace", str(ws), *args],
        cwd=ROOT, stdin=slave, stderr=slave, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(slave)
    out, answered = b"", 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                out += chunk
                if out.count(b"Allow?") > answered:
                    answered += 1
                    os.write(master, answer.encode() + b"\n")
            elif proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return rc, out.decode("utf-8", "replace")


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(SCRIPT) as srv:
        yield srv


@pytest.fixture
def imported(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace that imported an agent bundle with an MCP server; (workspace, marker)."""
    pytest.importorskip("mcp")
    script = tmp_path / "fetch_server.py"
    script.write_text(MCP_SERVER)
    marker = tmp_path / "marker"
    spec = {
        "name": "fetcher",
        "tools": ["calculator"],
        "mcp_servers": [{"name": "fetch", "command": sys.executable,
                         "args": [str(script), str(marker)], "env": {"GREETING": "hello"}}],
    }  # fmt: skip
    author = tmp_path / "author-ws"
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert demoai(author, "agent", "create", str(tmp_path / "spec.json")).returncode == 0
    bundle = tmp_path / "fetcher.tar.gz"
    assert demoai(author, "agent", "export", "fetcher", str(bundle)).returncode == 0
    marker.unlink(missing_ok=True)
    ws = tmp_path / "ws"
    imp = demoai(ws, "agent", "import", str(bundle))
    assert imp.returncode == 0, imp.stderr
    # The report shows the full argv and environment, and that it is inactive.
    assert f"{script} {marker}" in imp.stdout and "GREETING=hello" in imp.stdout
    assert "Inactive until you approve" in imp.stdout
    assert "demoai agent approvals approve fetcher" in imp.stdout
    assert not marker.exists()
    return ws, marker


def run_args(srv: ScriptedServer) -> list[str]:
    return ["agent", "run", "fetcher", "--input", "shout hi", "--json",
            "--base-url", srv.base_url, "--api-key", srv.token]  # fmt: skip


def tool_results(stdout: str) -> list[str]:
    return [s["content"] for s in json.loads(stdout)["steps"] if s["kind"] == "tool_result"]


def test_imported_mcp_server_does_not_run_unattended_until_approved(
    imported: tuple[Path, Path], server: ScriptedServer
) -> None:
    ws, marker = imported
    r = demoai(ws, *run_args(server), "--approve-all-read-only")
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    assert "not started: MCP server 'fetch'" in r.stderr
    assert "no tool named 'fetch.shout'" in tool_results(r.stdout)[0]

    # Headless approval: shows exactly what is approved.
    listed = json.loads(demoai(ws, "agent", "approvals", "list", "--json").stdout)
    assert listed["approvals"] == [] and listed["pending"][0]["detail"]["env"] == {
        "GREETING": "hello"
    }
    refused = demoai(ws, "agent", "approvals", "approve", "fetcher")  # no terminal, no --yes
    assert refused.returncode != 0 and "--yes" in refused.stderr
    ok = demoai(ws, "agent", "approvals", "approve", "fetcher", "--yes")
    assert ok.returncode == 0, ok.stderr
    assert "approved: MCP server 'fetch' starts the program:" in ok.stdout
    assert "GREETING=hello" in ok.stdout and str(marker) in ok.stdout

    r = demoai(ws, *run_args(server), "--approve-all-read-only")
    assert r.returncode == 0, r.stderr
    assert marker.read_text() == "started"
    assert tool_results(r.stdout) == ["HI!"]

    # Revoked: it does not start again.
    marker.unlink()
    [approval] = json.loads(demoai(ws, "agent", "approvals", "list", "--json").stdout)["approvals"]
    assert approval["kind"] == "mcp_server" and approval["versions"] == [1]
    rv = demoai(ws, "agent", "approvals", "revoke", str(approval["id"]))
    assert rv.returncode == 0 and "revoked" in rv.stdout
    r = demoai(ws, *run_args(server), "--approve-all-read-only")
    assert r.returncode == 0 and not marker.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_on_a_terminal_the_server_starts_only_when_the_user_allows(
    imported: tuple[Path, Path], server: ScriptedServer
) -> None:
    ws, marker = imported
    rc, out = demoai_on_terminal(ws, *run_args(server), answer="d")
    assert rc == 0, out
    assert "This agent version needs your approval" in out and "GREETING=hello" in out
    assert not marker.exists()
    assert "not started: MCP server 'fetch'" in out
    rc, out = demoai_on_terminal(ws, *run_args(server), answer="o")
    assert rc == 0, out
    assert marker.exists()
    assert approvals_in(ws) == []  # 'once' is not remembered


def approvals_in(ws: Path) -> list[Any]:
    w = Workspace.open(ws)
    try:
        return ApprovalStore(w.db).list()
    finally:
        w.close()


def test_a_wider_grant_in_a_new_version_does_not_write_unattended(
    tmp_path: Path,
) -> None:
    granted = tmp_path / "granted"
    granted.mkdir()
    ws = tmp_path / "ws"
    w = Workspace.open(ws)
    try:
        v1 = AgentStore(w.db).save(
            AgentSpec("writer", tools=(ToolGrant("write_file", str(granted)),))
        )
        # An earlier interactive run answered 'always' for write_file in the granted folder.
        ApprovalStore(w.db).allow_always(v1, "write_file", grants(v1)[0])
    finally:
        w.close()
    inside = [{"tool": "write_file", "arguments": {"path": "a.txt", "content": "1"}},
              {"final": "ok"}]  # fmt: skip
    base = ["agent", "run", "writer", "--input", "write", "--approve-all-read-only", "--json"]
    with ScriptedServer(inside) as srv:
        r = demoai(ws, *base, "--base-url", srv.base_url, "--api-key", srv.token)
    assert r.returncode == 0, r.stderr
    assert (granted / "a.txt").read_text() == "1"  # the remembered approval works

    # The attacker's new version: same name, write_file granted in the parent folder.
    author = tmp_path / "author"
    spec = {"name": "writer", "tools": [{"name": "write_file", "folder": str(tmp_path)}]}
    (tmp_path / "wide.json").write_text(json.dumps(spec))
    assert demoai(author, "agent", "create", str(tmp_path / "wide.json")).returncode == 0
    assert demoai(author, "agent", "export", "writer", str(tmp_path / "wide")).returncode == 0
    imp = demoai(ws, "agent", "import", str(tmp_path / "wide"))
    assert imp.returncode == 0, imp.stderr
    assert f"write_file may create and replace files in {tmp_path}" in imp.stdout
    escalate = [{"tool": "write_file", "arguments": {"path": "escaped.txt", "content": "x"}},
                {"final": "ok"}]  # fmt: skip
    with ScriptedServer(escalate) as srv:
        r = demoai(ws, *base, "--base-url", srv.base_url, "--api-key", srv.token)
        assert r.returncode == 0, r.stderr
        assert not (tmp_path / "escaped.txt").exists()
        assert "not offered: write_file" in r.stderr
        # Even with the grant approved, unattended calls need an 'always' for this version.
        assert demoai(ws, "agent", "approvals", "approve", "writer", "--yes").returncode == 0
        r = demoai(ws, *base, "--base-url", srv.base_url, "--api-key", srv.token)
    assert r.returncode == 0 and "denied: write_file" in r.stderr
    assert not (tmp_path / "escaped.txt").exists()
