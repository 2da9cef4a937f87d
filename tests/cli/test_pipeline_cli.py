"""``demoai pipeline`` as a user runs it (child processes, real jobs): recipe -> tiny LoRA ->
eval with a gate -> GGUF Q8_0; no new jobs on a re-run; exit 4 on a failed gate; triggers
under ``watch --once``; kill -9 during training, then a resume that redoes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from app.core.data.store import DatasetStore
from app.core.jobs.store import JobService
from app.core.models.registry import ModelRegistry
from app.core.workspace import Workspace
from tests.support.cli import ROOT, demoai
from tests.support.training import add_tiny_model_and_echo_data, one_train_thread  # noqa: F401

TRAIN = {
    "preset": "quick_test",
    "max_steps": 6,
    "batch_size": 2,
    "max_seq_len": 64,
    "device": "cpu",
    "seed": 7,
}
SPEC: dict[str, Any] = {
    "format": 1,
    "name": "echo-flow",
    "trigger": {"dataset": "data"},
    "inputs": {"data": {"dataset": "echo", "policy": "latest"}, "base": {"model": "tiny"}},
    "steps": [
        {"id": "prep", "kind": "recipe", "data": "data", "recipe": [{"name": "dedupe"}]},
        {"id": "train", "kind": "train", "base": "base", "data": "prep", "config": TRAIN},
        {
            "id": "eval",
            "kind": "eval",
            "model": "train",
            "data": "prep",
            "baseline": "base",
            "config": {
                "input_column": "prompt",
                "reference_column": "completion",
                "metrics": ["perplexity", "f1"],
                "max_tokens": 4,
                "threads": 1,
                "bootstrap": 100,
            },
            "gate": {"perplexity": {"max_drop_pct": 1000}},
        },
        {"id": "export", "kind": "export", "model": "train", "quants": ["Q8_0"]},
    ],
}


def _jobs(ws_dir: Path) -> list[Any]:
    ws = Workspace.open(ws_dir)
    try:
        return JobService(ws).list_jobs()
    finally:
        ws.close()


def _new_ws(root: Path, tiny_llama_dir: Path) -> Path:
    ws = Workspace.open(root)
    add_tiny_model_and_echo_data(ws, tiny_llama_dir, repeats=3)
    ws.close()
    return root


def _write(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cli_flow(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    os.environ["DEMOAI_TRAIN_THREADS"] = "1"
    tmp = tmp_path_factory.mktemp("pipecli")
    ws = _new_ws(tmp / "ws", tiny_llama_dir)
    created = demoai(ws, "pipeline", "create", str(_write(tmp / "flow.yaml", SPEC)))
    assert created.returncode == 0 and created.stdout.strip() == "echo-flow v1", created.stderr
    run = demoai(ws, "pipeline", "run", "echo-flow", "--json", timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return {"ws": ws, "tmp": tmp, "run": json.loads(run.stdout)}


def test_recipe_lora_eval_gate_gguf_end_to_end(cli_flow: Any) -> None:
    ws, out = cli_flow["ws"], cli_flow["run"]
    run = out["run"]
    assert out["exit_code"] == 0 and run["state"] == "succeeded" and out["gate"]["passed"]
    assert [(s["step_id"], s["state"]) for s in run["steps"]] == [
        ("prep", "succeeded"),
        ("train", "succeeded"),
        ("eval", "succeeded"),
        ("export", "succeeded"),
    ]
    kinds = sorted(j.kind for j in _jobs(ws))
    assert kinds == ["data.apply", "eval.run", "export.gguf", "train.lora"]
    gguf = run["steps"][3]["output"]["outputs"][0]
    assert gguf["quant"] == "Q8_0" and gguf["passed"] and Path(gguf["path"]).is_file()
    w = Workspace.open(ws)
    try:
        rec = ModelRegistry(w).get(gguf["model_id"])
        parents = {e.model_id for e in ModelRegistry(w).lineage(rec.id).parents}
    finally:
        w.close()
    assert rec.format == "gguf" and rec.quantization == "Q8_0" and parents
    shown = demoai(ws, "pipeline", "show", run["id"])
    assert shown.returncode == 0 and "gate: PASS" in shown.stdout and "perplexity" in shown.stdout
    listed = json.loads(demoai(ws, "pipeline", "list", "--json").stdout)
    assert [(p["name"], p["last_run"]) for p in listed if p["name"] == "echo-flow"] == [
        ("echo-flow", run["id"])
    ]


def test_export_import_and_diff(cli_flow: Any) -> None:
    ws, tmp = cli_flow["ws"], cli_flow["tmp"]
    out = tmp / "exported.yaml"
    assert demoai(ws, "pipeline", "export", "echo-flow", "--out", str(out)).returncode == 0
    text = out.read_text()
    assert text.startswith("format: 1\nname: echo-flow\n")
    imported = demoai(ws, "pipeline", "import", str(out), "--name", "echo-copy")
    assert imported.returncode == 0 and imported.stdout.strip() == "echo-copy v1"
    again = demoai(ws, "pipeline", "export", "echo-copy", "--format", "json")
    assert json.loads(again.stdout)["steps"] == yaml.safe_load(text)["steps"]
    d = json.loads(demoai(ws, "pipeline", "diff", "echo-flow@1", "echo-copy@1", "--json").stdout)
    assert d == [{"path": "name", "a": "echo-flow", "b": "echo-copy"}]
    bad = tmp / "bad.yaml"
    bad.write_text("name: x\ninputs: {}\nsteps: [{id: a, kind: train, base: nope}]\n")
    res = demoai(ws, "pipeline", "import", str(bad))
    assert res.returncode == 2 and "step 'a'" in res.stderr


def test_rerunning_an_unchanged_spec_creates_no_jobs(cli_flow: Any) -> None:
    ws = cli_flow["ws"]
    assert demoai(ws, "pipeline", "run", "echo-flow", timeout=900).returncode == 0
    before = len(_jobs(ws))
    res = demoai(ws, "pipeline", "run", "echo-flow", "--json", timeout=900)
    assert res.returncode == 0 and len(_jobs(ws)) == before
    assert {s["state"] for s in json.loads(res.stdout)["run"]["steps"]} == {"reused"}


def test_a_failing_gate_exits_4_before_export(cli_flow: Any) -> None:
    ws, tmp = cli_flow["ws"], cli_flow["tmp"]
    spec = json.loads(json.dumps(SPEC))
    spec["name"] = "echo-gate"
    del spec["trigger"]
    spec["steps"][2]["gate"] = {"perplexity": {"max": 1.0}}
    assert demoai(ws, "pipeline", "create", str(_write(tmp / "gate.yaml", spec))).returncode == 0
    before = [j for j in _jobs(ws) if j.kind == "export.gguf"]
    res = demoai(ws, "pipeline", "run", "echo-gate", timeout=900)
    assert res.returncode == 4, res.stderr[-2000:]
    assert "gate: FAIL" in res.stdout and "[FAIL]" in res.stdout and "perplexity" in res.stdout
    assert "export       export  skipped" in res.stdout
    assert [j for j in _jobs(ws) if j.kind == "export.gguf"] == before


def test_watch_once_runs_a_pipeline_on_a_new_dataset_version(cli_flow: Any) -> None:
    ws, tmp = cli_flow["ws"], cli_flow["tmp"]
    w = Workspace.open(ws)
    rows = [{"text": t} for t in ("a", "b", "b")]
    DatasetStore(w).create_dataset("notes", pa.Table.from_pylist(rows))
    w.close()
    spec = {
        "name": "notes-flow",
        "trigger": {"dataset": "notes"},
        "inputs": {"notes": {"dataset": "notes"}},
        "steps": [
            {"id": "prep", "kind": "recipe", "data": "notes", "recipe": [{"name": "dedupe"}]}
        ],
    }
    assert demoai(ws, "pipeline", "create", str(_write(tmp / "notes.yaml", spec))).returncode == 0
    first = demoai(ws, "pipeline", "watch", "--once", timeout=600)
    assert first.returncode == 0 and "notes-flow: new version" in first.stdout, first.stderr
    idle = demoai(ws, "pipeline", "watch", "--once", timeout=600)
    assert idle.returncode == 0 and idle.stdout.strip() == "nothing to run"
    w = Workspace.open(ws)
    new = DatasetStore(w).create_version(
        "notes", pa.Table.from_pylist([*rows, {"text": "c"}]), message="added c", operation={}
    )
    w.close()
    res = demoai(ws, "pipeline", "watch", "--once", timeout=600)
    assert res.returncode == 0 and f"notes-flow: new version {new.hash[:12]}" in res.stdout
    runs = json.loads(demoai(ws, "pipeline", "show", "notes-flow", "--json").stdout)["runs"]
    assert len(runs) == 2 and runs[0]["snapshot"]["inputs"]["notes"]["hash"] == new.hash
    assert runs[0]["steps"][0]["output"]["rows"] == 3


def _ckpt_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in folder.iterdir() if p.name[-1].isdigit())


def test_kill_9_during_training_then_resume(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    ws = _new_ws(tmp_path / "ws", tiny_llama_dir)
    spec = json.loads(json.dumps(SPEC))
    spec["name"] = "echo-kill"
    spec["steps"] = spec["steps"][:2]
    spec["steps"][1]["config"] = {**TRAIN, "max_steps": 150, "save_every": 10}
    assert demoai(ws, "pipeline", "create", str(_write(tmp_path / "k.yaml", spec))).returncode == 0
    cli = subprocess.Popen(
        [sys.executable, "-m", "app", "--workspace", str(ws), "pipeline", "run", "echo-kill"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    w = Workspace.open(ws)
    try:
        end = time.monotonic() + 300
        train = None
        while time.monotonic() < end:
            train = next((j for j in JobService(w).list_jobs() if j.kind == "train.lora"), None)
            if train is not None and max(_ckpt_steps(train.run_dir), default=0) >= 20:
                break
            assert cli.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        assert train is not None
        worker = JobService(w).get(train.id).pid
        assert worker is not None
        os.kill(cli.pid, signal.SIGKILL)
        os.kill(worker, signal.SIGKILL)
        cli.wait(30)
    finally:
        w.close()
    killed_at = max(_ckpt_steps(train.run_dir))
    assert killed_at < 150
    shown = json.loads(demoai(ws, "pipeline", "show", "echo-kill", "--json").stdout)
    assert [r["state"] for r in shown["runs"]] == ["interrupted"]
    res = demoai(ws, "pipeline", "run", "echo-kill", "--json", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    steps = json.loads(res.stdout)["run"]["steps"]
    assert [(s["step_id"], s["state"]) for s in steps] == [
        ("prep", "reused"),
        ("train", "succeeded"),
    ]
    assert steps[1]["job_id"] == train.id and steps[1]["detail"] == "resumed (attempt 2)"
    kinds = sorted(j.kind for j in _jobs(ws))
    assert kinds == ["data.apply", "train.lora"]  # the recipe was not redone, nor the training
    events = [json.loads(x) for x in (train.run_dir / "events.jsonl").read_text().splitlines()]
    assert any("resumed from checkpoint-" in str(e.get("text", "")) for e in events)
    # The same spec computed again without interruption (a repeat of the run's snapshot).
    rep = demoai(
        ws,
        "pipeline",
        "run",
        "--snapshot",
        json.loads(res.stdout)["run"]["id"],
        "--no-reuse",
        "--json",
        timeout=900,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert json.loads(rep.stdout)["compared"] == {"prep": "identical", "train": "identical"}
    rep_steps = json.loads(rep.stdout)["run"]["steps"]
    resumed = load_file(str(Path(steps[1]["output"]["adapter"]) / "adapter_model.safetensors"))
    fresh = load_file(str(Path(rep_steps[1]["output"]["adapter"]) / "adapter_model.safetensors"))
    assert resumed.keys() == fresh.keys()
    diff = max(float((resumed[k] - fresh[k]).abs().max()) for k in fresh)
    print(f"resumed vs uninterrupted adapter: max |diff| = {diff:.3g}")
    assert diff == 0.0  # bit-identical: exact resume from the checkpoint
