"""Agent evaluation (job ``eval.agent``) in real worker processes.

Six tasks against the scripted OpenAI-compatible server (a real child process on
127.0.0.1; known right and wrong tool calls) give exactly the expected success and
tool-call accuracy; every task's run is stored like an Agents pane run; nothing outside
the per-task scratch copies changes; a worker killed with SIGKILL resumes without redoing
finished tasks; the CLI runs the real Gemma 3 270M end to end through the model host.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from app.core.agents import AgentSpec, AgentStore, Limits, RunStore, ToolGrant
from app.core.agents.approvals import ApprovalStore, Grant
from app.core.agents.spec import McpServerConfig
from app.core.data.store import DatasetStore
from app.core.errors import ConfigError
from app.core.eval.agent_eval import AgentEvalConfig, submit_agent_eval
from app.core.eval.gate import gate_runs
from app.core.eval.runner import EvalStore
from app.core.jobs.store import JobService, JobState
from app.core.models.registry import ModelRegistry
from app.workers.supervisor import Supervisor
from tests.support.cli import demoai
from tests.support.scripted_server import ScriptedServer

KEY_ENV = "DEMOAI_TEST_AGENT_EVAL_KEY"


def _call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"tool": tool, "arguments": arguments}


# marker in the task -> (script, reference, expected calls, checker); expected outcome below.
TASKS: list[tuple[str, list[Any], str | None, Any, Any]] = [
    # 0: right tool, right answer
    ("[t1] What is 6*7?", [_call("calculator", expression="6*7"), {"final": "It is 42."}],
     "42", [{"name": "calculator", "arguments": {"expression": "6*7"}}], None),
    # 1: reads the granted folder; regex checker on the answer
    ("[t2] Read notes.txt and tell me the code.",
     [_call("read_file", path="notes.txt"), {"final": "The code is 1234."}],
     None, [{"name": "read_file", "arguments": {"path": "notes.txt"}}], r"\b1234\b"),
    # 2: writes a file (approved automatically: it lands in the scratch copy); file checker
    ("[t3] Write hello into out.txt.",
     [_call("write_file", path="out.txt", content="hello world"), {"final": "Done."}],
     None, [{"name": "write_file", "arguments": {"path": "out.txt"}}],
     {"file": "out.txt", "content": "^hello"}),
    # 3: the wrong tool (valid arguments), right answer: no success, accuracy 0
    ("[t4] What is 2+3?", [_call("read_file", path="sum"), {"final": "5"}],
     "5", [{"name": "calculator", "arguments": {"expression": "2+3"}}], None),
    # 4: invalid arguments first, then the right call: success, accuracy 1/2
    ("[t5] Compute 10/4.",
     [_call("calculator", expr="10/4"), _call("calculator", expression="10/4"), {"final": "2.5"}],
     "2.5", [{"name": "calculator", "arguments": {"expression": "10/4"}}], None),
    # 5: no tool expected and none made, wrong answer: no success, accuracy 1
    ("[t6] What is the capital of France?", [{"final": "Berlin"}], "Paris", [], None),
]  # fmt: skip
SUCCESS = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
ACCURACY = [1.0, 1.0, 1.0, 0.0, 0.5, 1.0]
STEPS = [2.0, 2.0, 2.0, 2.0, 3.0, 1.0]


def _script(delay_s: float = 0.0) -> dict[str, Any]:
    by_input = {task.split("]")[0] + "]": script for task, script, *_ in TASKS}
    return {"by_input": by_input, "delay_s": delay_s}


def _dataset(ws: Any) -> str:
    cols = {
        "task": [t[0] for t in TASKS],
        "answer": [t[2] for t in TASKS],
        "tools": [json.dumps(t[3]) for t in TASKS],
        "check": [None if t[4] is None else t[4] if isinstance(t[4], str) else json.dumps(t[4])
                  for t in TASKS],
    }  # fmt: skip
    ver = DatasetStore(ws).create_dataset("agent-tasks", pa.table(cols))
    return f"{ver.dataset_id}@{ver.hash}"


def _granted(tmp_path: Path) -> Path:
    folder = tmp_path / "granted"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("The secret code is 1234.\n", encoding="utf-8")
    (folder / "sub" / "keep.md").write_text("# keep\n", encoding="utf-8")
    os.mkfifo(folder / "pipe")  # a FIFO is skipped by the copy (reading it would block)
    return folder


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under ``root``: content hash (or kind) and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "other"
        out[p.relative_to(root).as_posix()] = (digest, st.st_mtime_ns)
    return out


def _agent(ws: Any, folder: Path) -> AgentSpec:
    return AgentStore(ws.db).save(
        AgentSpec(
            name="filer",
            system_prompt="You help with files and sums.",
            tools=(
                ToolGrant("calculator"),
                ToolGrant("read_file", str(folder)),
                ToolGrant("write_file", str(folder)),
            ),
            tool_mode="json",
            limits=Limits(max_steps=4, max_tokens=64, timeout_s=60),
        )
    )


def _config(dataset: str, server: ScriptedServer, **over: Any) -> AgentEvalConfig:
    values: dict[str, Any] = {
        "agents": ["filer"],
        "dataset": dataset,
        "input_column": "task",
        "reference_column": "answer",
        "tools_column": "tools",
        "checker_column": "check",
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "model_name": "scripted",
        "bootstrap": 200,
        **over,
    }
    return AgentEvalConfig.from_dict(values)


def test_six_scripted_tasks_score_exactly(
    workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _granted(tmp_path)
    spec = _agent(workspace, folder)
    before = _snapshot(folder)
    with ScriptedServer(_script()) as server:
        monkeypatch.setenv(KEY_ENV, server.token)
        job = submit_agent_eval(workspace, _config(_dataset(workspace), server))
        sup = Supervisor(workspace)
        sup.start(job.id)
        done = sup.wait(job.id, timeout=180)
    assert done.state == JobState.SUCCEEDED, JobService(workspace).log_tail(job.id, 80)
    store = EvalStore(workspace)
    run = store.get_run(job.id)
    subject = "filer@1:scripted"
    assert run.state == "succeeded" and run.models == [subject]
    samples = store.samples(job.id)
    assert [s.idx for s in samples] == list(range(6))
    assert [s.scores["agent_success"] for s in samples] == SUCCESS, [s.extra for s in samples]
    assert [s.scores["tool_accuracy"] for s in samples] == ACCURACY
    assert [s.scores["agent_steps"] for s in samples] == STEPS
    assert all(s.scores["agent_time_s"] > 0 and s.scores["agent_tokens"] == 0 for s in samples)
    assert samples[4].extra["calls"][0]["valid"] is False  # {"expr": ...}: not the schema
    assert samples[3].extra["checks"] == {"reference": True, "tool_calls": False}
    assert samples[5].extra["checks"] == {"reference": False, "tool_calls": True}
    agg = store.aggregates(job.id)[subject]
    assert agg["agent_success"]["value"] == pytest.approx(4 / 6)
    assert agg["tool_accuracy"]["value"] == pytest.approx(4.5 / 6)
    for m in ("agent_success", "tool_accuracy", "agent_steps"):
        a = agg[m]
        assert a["ci_low"] <= a["value"] <= a["ci_high"] and a["n"] == 6
    assert run.summary and run.summary["aggregates"][subject]["agent_success"]["n"] == 6
    # Compare and gate read agent runs like any other eval run.
    assert {r["metric"] for r in store.compare([job.id])} >= {"agent_success", "tool_accuracy"}
    assert gate_runs(workspace, job.id, {"agent_success": {"min": 0.5}}).passed
    assert not gate_runs(workspace, job.id, {"agent_success": {"min": 0.9}}).passed

    # Each task's agent run is stored like an Agents pane run, in its own scratch copy.
    runs = RunStore(workspace.db)
    scratch_root = job.run_dir / "scratch"
    for s, (task, *_rest) in zip(samples, TASKS, strict=True):
        r = runs.get(s.extra["agent_run_id"])
        assert (r.agent, r.agent_version, r.input) == ("filer", spec.version, task)
        assert r.status == "succeeded" and r.final == s.prediction
        folders = {t["folder"] for t in r.spec["tools"] if t.get("folder")}
        assert len(folders) == 1
        copy = Path(folders.pop())
        assert copy.is_relative_to(scratch_root) and (copy / "notes.txt").is_file()
        assert not (copy / "pipe").exists()  # the FIFO was not copied
    out = job.run_dir / samples[2].extra["scratch"] / "folder-1" / "out.txt"
    assert out.read_text(encoding="utf-8") == "hello world"
    approvals = [s for s in runs.path(samples[2].extra["agent_run_id"]) if s.kind == "approval"]
    assert [a.content for a in approvals] == ["once"]
    # Nothing outside the scratch copies changed: the granted folder is as it was.
    assert _snapshot(folder) == before
    assert not (folder / "out.txt").exists()


def test_killed_eval_resumes_without_redoing_tasks(
    workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _granted(tmp_path)
    _agent(workspace, folder)
    before = _snapshot(folder)
    store = EvalStore(workspace)
    jobs = JobService(workspace)
    subject = "filer@1:scripted"
    with ScriptedServer(_script(delay_s=0.4)) as server:
        monkeypatch.setenv(KEY_ENV, server.token)
        job = submit_agent_eval(workspace, _config(_dataset(workspace), server))
        sup = Supervisor(workspace)
        sup.start(job.id)
        end = time.monotonic() + 120
        while len(store.done_indices(job.id, subject)) < 2:
            assert time.monotonic() < end, jobs.log_tail(job.id)
            sup.pump()
            time.sleep(0.02)
        pid = jobs.get(job.id).pid
        assert pid
        os.kill(pid, signal.SIGKILL)
        dead = sup.wait(job.id, timeout=60)
        assert dead.state in (JobState.FAILED, JobState.INTERRUPTED)
        assert store.get_run(job.id).state == "interrupted"
        first = {s.idx: s for s in store.samples(job.id)}
        assert 2 <= len(first) < 6
        jobs.resume(job.id)
        sup.start(job.id)
        final = sup.wait(job.id, timeout=180)
    assert final.state == JobState.SUCCEEDED, jobs.log_tail(job.id, 80)
    after = {s.idx: s for s in store.samples(job.id)}
    assert sorted(after) == list(range(6))
    assert [after[i].scores["agent_success"] for i in range(6)] == SUCCESS
    assert [after[i].scores["tool_accuracy"] for i in range(6)] == ACCURACY
    for i, s in first.items():  # finished tasks were not run again
        assert after[i].extra["agent_run_id"] == s.extra["agent_run_id"]
    rows = workspace.db.query("SELECT input, status FROM agent_runs WHERE agent = 'filer'")
    per_task = {t[0]: [r["status"] for r in rows if r["input"] == t[0]] for t in TASKS}
    for i in first:
        assert per_task[TASKS[i][0]] == ["succeeded"]
    # A task the kill cut short was run again; its first run is recorded as failed, not running.
    assert all(st in ("succeeded", "failed") for sts in per_task.values() for st in sts)
    assert sum(len(v) for v in per_task.values()) in (6, 7)
    assert "already stored" in jobs.log_tail(job.id, 200)
    assert _snapshot(folder) == before


def test_bad_task_cells_fail_before_the_job(workspace: Any, tmp_path: Path) -> None:
    _agent(workspace, _granted(tmp_path))
    table = pa.table({"task": ["do it"], "tools": ['[{"arguments": {}}]']})
    ver = DatasetStore(workspace).create_dataset("bad", pa.table(table))
    cfg = AgentEvalConfig.from_dict(
        {"agents": ["filer"], "dataset": ver.dataset_id, "input_column": "task",
         "tools_column": "tools", "base_url": "http://127.0.0.1:9/v1"}
    )  # fmt: skip
    with pytest.raises(ConfigError, match='Row 0: an expected tool call needs a "name"'):
        submit_agent_eval(workspace, cfg)
    cfg2 = AgentEvalConfig.from_dict(
        {"agents": ["filer"], "dataset": ver.dataset_id, "input_column": "question",
         "base_url": "http://127.0.0.1:9/v1"}
    )  # fmt: skip
    with pytest.raises(ConfigError, match="no input column 'question'"):
        submit_agent_eval(workspace, cfg2)
    assert JobService(workspace).list_jobs() == []


def test_cli_with_gemma_end_to_end(tmp_path: Path, gemma_gguf: Path) -> None:
    """The real Gemma 3 270M through the model host: the structure holds, runs are stored
    (success may be 0: it is a 270M base model)."""
    from app.core.workspace import Workspace

    ws_dir = tmp_path / "ws"
    ws = Workspace.open(ws_dir)
    try:
        model = ModelRegistry(ws).import_path(gemma_gguf, copy=False).id
        AgentStore(ws.db).save(
            AgentSpec(
                name="gcalc",
                model_id=model,
                system_prompt="You are a calculator assistant.",
                sampling={"temperature": 0.0, "seed": 5},
                tools=(ToolGrant("calculator"),),
                limits=Limits(max_steps=2, max_tokens=64, timeout_s=300),
            )
        )
        tasks = pa.table(
            {
                "task": ["What is 6 * 7?", "What is 12 + 30?"],
                "answer": ["42", "42"],
                "tools": ['[{"name": "calculator"}]', '[{"name": "calculator"}]'],
            }
        )
        DatasetStore(ws).create_dataset("gtasks", tasks)
    finally:
        ws.close()
    res = demoai(
        ws_dir, "eval", "agent", "--agent", "gcalc", "--dataset", "gtasks", "--input", "task",
        "--reference", "answer", "--expected-tools", "tools", "--n-ctx", "2048", "--json",
        timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    subject = f"gcalc@1:{model}"
    agg = out["aggregates"][subject]
    assert set(agg) == {"agent_success", "tool_accuracy", "agent_steps", "agent_tokens",
                        "agent_time_s"}  # fmt: skip
    assert agg["agent_success"]["n"] == 2 and 0.0 <= agg["agent_success"]["value"] <= 1.0
    assert agg["agent_tokens"]["value"] > 0  # the host reports usage
    assert [t["idx"] for t in out["tasks"]] == [0, 1]
    ws = Workspace.open(ws_dir)
    try:
        runs = RunStore(ws.db)
        for t in out["tasks"]:
            r = runs.get(t["agent_run_id"])
            assert r.agent == "gcalc" and r.model_id == model and r.status == t["status"]
            assert len(runs.path(r.id)) >= 3  # system, user, a model turn at least
        shown = demoai(ws_dir, "eval", "show", out["run_id"], "--json")
        assert shown.returncode == 0, shown.stderr
    finally:
        ws.close()


MCP_SERVER = textwrap.dedent(
    """
    import pathlib, sys
    from mcp.server.mcpserver import MCPServer
    from mcp.types import ToolAnnotations

    app = MCPServer("fx")

    @app.tool()
    def touch(name: str) -> str:
        "Create a file (a side effect outside any scratch copy)."
        pathlib.Path(sys.argv[1], name).write_text("touched")
        return "ok"

    @app.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def shout(text: str) -> str:
        "Upper-case a text."
        return text.upper() + "!"

    app.run()
    """
)


def test_side_effecting_mcp_call_is_refused_and_fails_the_task(
    workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    script = tmp_path / "fx_server.py"
    script.write_text(MCP_SERVER, encoding="utf-8")
    server_cfg = McpServerConfig(
        name="fx", command=sys.executable, args=(str(script), str(outside))
    )
    spec = AgentStore(workspace.db).save(
        AgentSpec(name="mcper", mcp_servers=(server_cfg,), tool_mode="json",
                  limits=Limits(max_steps=3, max_tokens=64, timeout_s=60))
    )  # fmt: skip
    ApprovalStore(workspace.db).approve(spec, Grant.for_server(server_cfg))  # may start
    tasks = {
        "[m1] Shout hi.": [_call("fx.shout", text="hi"), {"final": "HI!"}],
        "[m2] Touch evil.txt.": [_call("fx.touch", name="evil.txt"), {"final": "Done."}],
    }
    ver = DatasetStore(workspace).create_dataset("mcp-tasks", pa.table({"task": list(tasks)}))
    with ScriptedServer({"by_input": {k[:4]: v for k, v in tasks.items()}}) as server:
        monkeypatch.setenv(KEY_ENV, server.token)
        cfg = AgentEvalConfig.from_dict(
            {"agents": ["mcper"], "dataset": ver.dataset_id, "input_column": "task",
             "base_url": server.base_url, "api_key_env": KEY_ENV, "model_name": "scripted"}
        )  # fmt: skip
        job = submit_agent_eval(workspace, cfg)
        sup = Supervisor(workspace)
        sup.start(job.id)
        done = sup.wait(job.id, timeout=180)
    assert done.state == JobState.SUCCEEDED, JobService(workspace).log_tail(job.id, 80)
    shout, touch = EvalStore(workspace).samples(job.id)
    assert shout.scores["agent_success"] == 1.0 and shout.prediction == "HI!"
    assert touch.scores["agent_success"] == 0.0 and touch.scores["tool_accuracy"] == 1.0
    assert touch.extra["refused"] == ["fx.touch"] and "refused" in (touch.error or "")
    assert [c["refused"] for c in touch.extra["calls"]] == [True]
    assert list(outside.iterdir()) == []  # the side effect never happened


def test_killed_eval_with_a_library_model_stops_the_orphaned_host(
    workspace: Any, gemma_gguf: Path
) -> None:
    """SIGKILL of the worker orphans its model host; the resumed attempt stops it first."""
    import psutil

    model = ModelRegistry(workspace).import_path(gemma_gguf, copy=False).id
    AgentStore(workspace.db).save(
        AgentSpec(name="gq", model_id=model, tools=(ToolGrant("calculator"),),
                  limits=Limits(max_steps=1, max_tokens=16, timeout_s=300))
    )  # fmt: skip
    tasks = pa.table({"task": ["What is 6 * 7?", "What is 2 + 2?"]})
    ver = DatasetStore(workspace).create_dataset("gq-tasks", tasks)
    cfg = AgentEvalConfig.from_dict(
        {"agents": ["gq"], "dataset": ver.dataset_id, "input_column": "task", "n_ctx": 1024}
    )
    job = submit_agent_eval(workspace, cfg)
    jobs = JobService(workspace)
    sup = Supervisor(workspace)
    sup.start(job.id)
    ready = job.run_dir / "host" / "ready.json"
    end = time.monotonic() + 300
    while not ready.is_file():
        assert time.monotonic() < end, jobs.log_tail(job.id)
        sup.pump()
        time.sleep(0.05)
    host_pid = int(json.loads(ready.read_text())["pid"])
    pid = jobs.get(job.id).pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    sup.wait(job.id, timeout=60)
    assert psutil.pid_exists(host_pid)  # orphaned: nothing else would stop it
    jobs.resume(job.id)
    sup.start(job.id)
    final = sup.wait(job.id, timeout=600)
    assert final.state == JobState.SUCCEEDED, jobs.log_tail(job.id, 80)
    assert not psutil.pid_exists(host_pid) or psutil.Process(host_pid).status() == "zombie"
    assert f"stopped the model host (pid {host_pid})" in jobs.log_tail(job.id, 200)
    assert len(EvalStore(workspace).samples(job.id)) == 2


def test_cli_refuses_a_bad_setup_before_any_job(tmp_path: Path) -> None:
    from app.core.workspace import Workspace

    ws_dir = tmp_path / "ws"
    ws = Workspace.open(ws_dir)
    try:
        DatasetStore(ws).create_dataset("t", pa.table({"task": ["x"]}))
        AgentStore(ws.db).save(AgentSpec(name="nomodel"))
    finally:
        ws.close()
    base = ["eval", "agent", "--dataset", "t", "--input", "task"]
    unknown = demoai(ws_dir, *base, "--agent", "nope")
    assert unknown.returncode == 2 and "No agent 'nope'" in unknown.stderr, unknown.stderr
    no_model = demoai(ws_dir, *base, "--agent", "nomodel")
    assert no_model.returncode == 2 and "names no model" in no_model.stderr, no_model.stderr
    jobs = demoai(ws_dir, "jobs", "list", "--json")
    assert json.loads(jobs.stdout or "[]") == [], jobs.stdout
