"""``demoai agent`` end to end: create, list, show, run against a scripted server, export, import."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import demoai
from tests.support.scripted_server import ScriptedServer


def test_agent_cli(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    granted = tmp_path / "files"
    granted.mkdir()
    (granted / "n.txt").write_text("forty-two")
    spec = tmp_path / "agent.yaml"
    spec.write_text(
        "name: reader\n"
        "description: reads notes\n"
        "sampling: {temperature: 0, seed: 1}\n"
        f"tools: [calculator, {{name: read_file, folder: '{granted}'}}, "
        f"{{name: write_file, folder: '{granted}'}}]\n"
    )
    r = demoai(ws, "agent", "create", str(spec), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == 1
    listing = json.loads(demoai(ws, "agent", "list", "--json").stdout)
    assert listing["agents"][0]["tools"] == ["calculator", "read_file", "write_file"]
    shown = json.loads(demoai(ws, "agent", "show", "reader", "--json").stdout)
    assert shown["description"] == "reads notes"

    script = [
        {"tool": "read_file", "arguments": {"path": "n.txt"}},
        {"tool": "write_file", "arguments": {"path": "w.txt", "content": "x"}},
        {"final": "It says forty-two."},
    ]
    with ScriptedServer(script) as srv:
        base = ["agent", "run", "reader", "--input", "what does n.txt say?",
                "--base-url", srv.base_url, "--api-key", srv.token]  # fmt: skip
        refused = demoai(ws, *base)
        assert refused.returncode != 0 and "--approve-all-read-only" in refused.stderr
        r = demoai(ws, *base, "--approve-all-read-only", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["run"]["final"] == "It says forty-two."
    assert "denied: write_file" in r.stderr
    assert not (granted / "w.txt").exists()
    kinds = [s["kind"] for s in out["steps"]]
    assert kinds.count("tool_result") == 2 and "approval" in kinds

    runs = json.loads(demoai(ws, "agent", "runs", "--search", "forty", "--json").stdout)
    assert [x["id"] for x in runs] == [out["run"]["id"]]

    bundle = tmp_path / "reader.tar.gz"
    assert demoai(ws, "agent", "export", "reader", str(bundle)).returncode == 0
    other = tmp_path / "ws2"
    imp = demoai(other, "agent", "import", str(bundle), "--json")
    assert imp.returncode == 0, imp.stderr
    assert json.loads(imp.stdout)["imported"] == ["agent reader v1"]


def test_agent_run_stopped_at_its_step_limit_is_not_an_error(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    spec = tmp_path / "agent.yaml"
    spec.write_text("name: counter\ntools: [calculator]\nlimits: {max_steps: 2}\n")
    assert demoai(ws, "agent", "create", str(spec)).returncode == 0
    script = [{"tool": "calculator", "arguments": {"expression": f"{n}+1"}} for n in range(4)]
    with ScriptedServer(script) as srv:
        r = demoai(ws, "agent", "run", "counter", "--input", "count", "--approve-all-read-only",
                   "--base-url", srv.base_url, "--api-key", srv.token)  # fmt: skip
    assert r.returncode == 1
    assert "stopped: reached its step limit of 2" in r.stderr, r.stderr
    assert "error" not in r.stderr.lower() and "max_steps:" not in r.stderr
    runs = json.loads(demoai(ws, "agent", "runs", "--json").stdout)
    assert [x["status"] for x in runs] == ["stopped"]
