"""A pipeline step that runs an lm-eval task (``kind: harness``): its eval run gates the
chain like an ``eval`` step; a task file's code runs only with ``--trust-task-code`` given
for the run (a spec cannot approve it); an unchanged re-run starts no job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.eval.runner import EvalStore
from app.core.jobs.store import JobService
from app.core.models.registry import ModelRegistry
from app.core.workspace import Workspace
from tests.cli.test_eval_harness_job import MC, MC_YAML, needs_lm_eval
from tests.support.cli import demoai


def _spec(task: Path, gate_min: float) -> dict[str, Any]:
    return {
        "format": 1,
        "name": "bench-flow",
        "inputs": {"base": {"model": "tiny"}},
        "steps": [
            {
                "id": "bench",
                "kind": "harness",
                "model": "base",
                "config": {"task": str(task), "limit": 4, "n_ctx": 512, "threads": 2},
                "gate": {"mc_accuracy": {"min": gate_min}},
            }
        ],
    }


def _jobs(ws_dir: Path) -> list[Any]:
    ws = Workspace.open(ws_dir)
    try:
        return JobService(ws).list_jobs()
    finally:
        ws.close()


@needs_lm_eval
def test_a_harness_step_runs_gates_and_is_reused(tmp_path: Path, tiny_llama_dir: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mc.jsonl").write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in MC)
    )
    (tasks / "mc.yaml").write_text(MC_YAML)
    wsdir = tmp_path / "ws"
    ws = Workspace.open(wsdir)
    ModelRegistry(ws).import_path(tiny_llama_dir, copy=False, name="tiny")
    ws.close()
    spec_file = tmp_path / "flow.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(tasks / "mc.yaml", 0.0), sort_keys=False))
    assert demoai(wsdir, "pipeline", "create", str(spec_file)).returncode == 0

    # the task file is code: without the user's yes for this run, no job starts
    r = demoai(wsdir, "pipeline", "run", "bench-flow")
    assert r.returncode != 0 and "runs code in the job" in r.stderr, r.stderr
    assert _jobs(wsdir) == []
    # and a spec cannot say yes on the user's behalf
    bad = _spec(tasks / "mc.yaml", 0.0)
    bad["steps"][0]["config"]["trust_task_code"] = True
    spec_file.write_text(yaml.safe_dump(bad, sort_keys=False))
    r = demoai(wsdir, "pipeline", "create", str(spec_file))
    assert r.returncode != 0 and "trust_task_code" in r.stderr

    r = demoai(wsdir, "pipeline", "run", "bench-flow", "--trust-task-code", "--json", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    step = out["run"]["steps"][0]
    assert step["kind"] == "harness" and step["state"] == "succeeded"
    assert out["gate"]["passed"]
    jobs = _jobs(wsdir)
    assert [j.kind for j in jobs] == ["eval.harness"]
    ws = Workspace.open(wsdir)
    try:
        agg = EvalStore(ws).aggregates(jobs[0].id)
    finally:
        ws.close()
    model_id = step["output"]["model_id"]
    assert step["output"]["metrics"]["mc_accuracy"] == agg[model_id]["mc_accuracy"]

    # unchanged: reused, no new job
    r = demoai(wsdir, "pipeline", "run", "bench-flow", "--trust-task-code", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["run"]["steps"][0]["state"] == "reused"
    assert len(_jobs(wsdir)) == 1

    # a gate it cannot pass stops the chain: exit 4, the figures printed
    spec_file.write_text(yaml.safe_dump(_spec(tasks / "mc.yaml", 1.01), sort_keys=False))
    assert demoai(wsdir, "pipeline", "create", str(spec_file)).returncode == 0
    r = demoai(wsdir, "pipeline", "run", "bench-flow", "--trust-task-code")
    assert r.returncode == 4, r.stderr[-3000:]
    assert "mc_accuracy" in r.stdout + r.stderr
    assert len(_jobs(wsdir)) == 1  # the gate changed, not the step: its run is reused


pytestmark = pytest.mark.timeout(1200)
