"""A backup taken by ``demoai backup create`` while a real training job writes checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from app.core.jobs.store import JobService, JobState
from app.core.store.files import sha256_file
from app.core.workspace import Workspace
from app.workers.supervisor import Supervisor
from tests.support.cli import ROOT, demoai
from tests.support.training import one_train_thread, write_chat_data  # noqa: F401


def _train_params(base: Path, data: Path) -> dict[str, Any]:
    from app.core.train.config import TrainConfig

    return TrainConfig.from_dict(
        {
            "base_model": str(base),
            "data_path": str(data),
            "max_steps": 100000,
            "batch_size": 2,
            "lora_rank": 4,
            "max_seq_len": 64,
            "device": "cpu",
            "save_every": 2,
            "keep_checkpoints": 2,
            "eval_fraction": 0.0,
        }
    ).to_dict()


def _checkpoints(run_dir: Path) -> list[Path]:
    from app.core.train.loop import complete_checkpoints

    return complete_checkpoints(run_dir / "checkpoints")


def _last_step(run_dir: Path) -> int:
    return max((int(c.name.split("-")[1]) for c in _checkpoints(run_dir)), default=0)


def _wait(cond: Any, sup: Supervisor, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sup.pump()
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_backup_during_training_restores_a_clean_complete_workspace(
    workspace: Workspace, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from app.core.agents import AgentSpec, AgentStore
    from app.core.data.store import DatasetStore
    from app.core.models.registry import ModelRegistry

    ws = workspace
    model = ModelRegistry(ws).import_hf_folder(tiny_llama_dir, copy=True, name="tiny")
    store = DatasetStore(ws)
    store.create_dataset("echo", pa.Table.from_pylist([{"t": f"row {i}"} for i in range(50)]))
    store.create_version(
        "echo",
        pa.Table.from_pylist([{"t": f"row {i}!"} for i in range(60)]),
        message="second",
        operation={"name": "test"},
    )
    agents = AgentStore(ws.db)
    first = agents.save(AgentSpec(name="helper"))
    agents.save(AgentSpec.from_dict({**first.to_dict(), "description": "v2"}))
    checked = demoai(ws.root, "check")
    assert checked.returncode == 0, checked.stderr

    data = write_chat_data(tmp_path / "train.jsonl")
    sup = Supervisor(ws)
    job = sup.jobs.submit("train.lora", _train_params(tiny_llama_dir, data))
    assert sup.start(job.id)
    _wait(lambda: len(_checkpoints(job.run_dir)) >= 1, sup)

    out = tmp_path / "backups" / "ws.tar"
    step_before = _last_step(job.run_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--workspace", str(ws.root), "backup", "create",
         "--out", str(out), "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    while proc.poll() is None:
        sup.pump()
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    created = json.loads(stdout)
    # The job kept running (and checkpointing) through the whole backup.
    running = sup.jobs.get(job.id)
    assert running.state == JobState.RUNNING, running.error
    step_after = _last_step(job.run_dir)
    # Checkpoints were written (and older ones pruned) while the backup read the workspace.
    assert step_after > step_before, (step_before, step_after)
    sup.cancel(job.id)
    assert sup.wait(job.id, timeout=120).state == JobState.CANCELLED
    assert created["files"] > 10 and not created["external"]

    verified = demoai(ws.root, "backup", "verify", str(out))
    assert verified.returncode == 0 and "every checksum matches" in verified.stdout

    target = tmp_path / "restored"
    restored = subprocess.run(
        [sys.executable, "-m", "app", "backup", "restore", str(out), "--workspace", str(target)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert f"job {job.id} was running" in restored.stdout

    check = demoai(target, "check")
    assert check.returncode == 0, check.stderr
    assert "0 changed, 0 missing" in check.stdout

    ws2 = Workspace.open(target, create=False)
    try:
        reg = ModelRegistry(ws2)
        got = reg.get(model.id)
        assert got.owned and got.path.is_relative_to(target)
        for f in reg.files(model.id):
            assert sha256_file(got.path / f.relpath) == f.sha256
        store2 = DatasetStore(ws2)
        assert [v.hash for v in store2.versions("echo")] == [v.hash for v in store.versions("echo")]
        assert store2.read_table("echo").num_rows == 60
        rows = {v.rows for v in store2.versions("echo")}
        assert rows == {50, 60}
        for v in store2.versions("echo"):
            assert store2.read_table(f"echo@{v.hash}").num_rows == v.rows
        assert AgentStore(ws2.db).versions("helper") == [1, 2]
        job2 = JobService(ws2).get(job.id)
        assert job2.state == JobState.INTERRUPTED and job2.pid is None
        run2 = job2.run_dir
        assert run2.is_relative_to(target)
        assert (run2 / "config.json").is_file() and (run2 / "events.jsonl").is_file()
        ckpts = _checkpoints(run2)
        assert ckpts, "no complete checkpoint in the restored run"
        for c in ckpts:  # every restored checkpoint is whole, none half-pruned
            state = json.loads((c / "state.json").read_text())
            assert state["step"] == int(c.name.split("-")[1])
            names = sorted(p.name for p in c.iterdir())
            assert names == sorted(p.name for p in ckpts[0].iterdir()), names
    finally:
        ws2.close()
