"""train.lora with world_size 2: real rank processes, gloo on CPU, over loopback.

A 2-process run takes the same steps as a 1-process run with the same effective
batch (loss curve and adapter within 1e-5); kill -9 of one rank fails the job
cleanly (every rank exits) and a resume finishes it like an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.core.jobs.events import EventReader
from app.core.jobs.store import JobService, JobState
from app.workers.supervisor import Supervisor
from tests.support.training import one_train_thread, write_chat_data  # noqa: F401

STEPS = 8


def params(base: Path, data: Path, **over: Any) -> dict[str, Any]:
    from app.core.train.config import TrainConfig

    values = {
        "base_model": str(base),
        "data_path": str(data),
        "max_steps": STEPS,
        # 8 records, 3 held out: epochs of 5 samples, so every other batch has 1 sample
        # and rank 1 makes an empty (weight 0) pass; the eval batch is all on rank 0.
        "batch_size": 4,
        "grad_accum": 2,
        "eval_fraction": 0.375,
        "eval_every": 4,
        "learning_rate": 3e-3,
        "lr_scheduler": "cosine",
        "warmup_steps": 2,
        "lora_rank": 8,
        "lora_dropout": 0.0,
        "max_seq_len": 128,
        "device": "cpu",
        "save_every": 3,
        "keep_checkpoints": 2,
        **over,
    }
    return TrainConfig.from_dict(values).to_dict()


def _events(job: Any) -> list[dict[str, Any]]:
    return EventReader(job.run_dir / "events.jsonl").read_new()


def _metric(events: list[dict[str, Any]], name: str) -> dict[int, float]:
    return {e["step"]: e["value"] for e in events if e["type"] == "metric" and e["name"] == name}


def _adapter(job: Any) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(job.run_dir / "adapter" / "adapter_model.safetensors"))


def _ckpt_steps(job: Any) -> list[int]:
    folder = job.run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in folder.iterdir() if p.name[-1].isdigit())


def _max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _run(ws: Any, p: dict[str, Any]) -> dict[str, Any]:
    sup = Supervisor(ws)
    job = sup.jobs.submit("train.lora", p)
    assert sup.start(job.id)
    final = sup.wait(job.id, timeout=300)
    assert final.state == JobState.SUCCEEDED, (final.error, sup.jobs.log_tail(job.id))
    return {"job": final, "events": _events(final), "adapter": _adapter(final)}


@pytest.fixture(scope="module")
def runs(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 1-process and one 2-process run of the same config."""
    from app.core.workspace import Workspace

    os.environ["DEMOAI_TRAIN_THREADS"] = "1"
    tmp = tmp_path_factory.mktemp("train-ddp")
    data = write_chat_data(tmp / "train.jsonl")
    ws = Workspace.open(tmp / "ws")
    out = {
        "data": data,
        "one": _run(ws, params(tiny_llama_dir, data)),
        "two": _run(ws, params(tiny_llama_dir, data, world_size=2)),
    }
    ws.close()
    return out


def test_two_processes_match_one_process(runs: dict[str, Any]) -> None:
    one, two = runs["one"], runs["two"]
    for name in ("train_loss", "grad_norm", "eval_loss"):
        a, b = _metric(one["events"], name), _metric(two["events"], name)
        assert sorted(a) == sorted(b) and a, name
        assert max(abs(a[s] - b[s]) for s in a) < 1e-5, name
    assert sorted(_metric(two["events"], "train_loss")) == list(range(1, STEPS + 1))
    assert _max_diff(one["adapter"], two["adapter"]) < 1e-5
    # The adapter moved: equality is not two untrained adapters.
    first, last = _metric(two["events"], "train_loss")[1], _metric(two["events"], "train_loss")[8]
    assert last < first
    job = two["job"]
    assert job.result["world_size"] == 2 and one["job"].result["world_size"] == 1
    assert json.loads((job.run_dir / "manifest.json").read_text())["config"]["world_size"] == 2
    # Per-rank throughput and memory, every step, for both ranks.
    for r in (0, 1):
        for name in (f"tokens_per_s.rank{r}", f"cpu_mem_mb.rank{r}"):
            values = _metric(two["events"], name)
            assert sorted(values) == list(range(1, STEPS + 1)), name
            assert all(v > 0 for v in values.values()), name
    assert not _metric(one["events"], "tokens_per_s.rank0")
    # Rank 1 exited by itself after the last step.
    pids = json.loads((job.run_dir / "ddp" / "attempt-1" / "pids.json").read_text())
    assert _gone(int(pids["1"]))


def test_kill_9_of_one_rank_then_resume_matches_uninterrupted(
    runs: dict[str, Any], tiny_llama_dir: Path, workspace: Any
) -> None:
    # Dropout on: the resume must restore each rank's own RNG stream.
    p = params(tiny_llama_dir, runs["data"], world_size=2, lora_dropout=0.1, max_steps=12)
    ref = _run(workspace, p)

    sup = Supervisor(workspace)
    job = sup.jobs.submit("train.lora", p)
    assert sup.start(job.id)
    end = time.monotonic() + 180
    while max(_ckpt_steps(job), default=0) < 3:
        sup.pump()
        assert time.monotonic() < end, sup.jobs.log_tail(job.id)
        time.sleep(0.02)
    pids = json.loads((job.run_dir / "ddp" / "attempt-1" / "pids.json").read_text())
    rank0 = sup.jobs.get(job.id).pid
    assert rank0 is not None
    os.kill(int(pids["1"]), signal.SIGKILL)
    killed = sup.wait(job.id, timeout=120)
    assert killed.state == JobState.FAILED
    assert "rank 1 stopped (killed by signal 9" in (killed.error or ""), killed.error
    assert _gone(rank0) and _gone(int(pids["1"]))
    first = _events(killed)
    resume_from = max(_ckpt_steps(killed))

    JobService(workspace).resume(job.id)
    final = sup.wait(job.id, timeout=300)
    assert final.state == JobState.SUCCEEDED and final.attempt == 2, final.error
    events = _events(final)
    second = events[len(first) :]
    assert sorted(_metric(second, "train_loss")) == list(range(resume_from + 1, 13))
    curve, want = _metric(events, "train_loss"), _metric(ref["events"], "train_loss")
    assert sorted(curve) == list(range(1, 13))
    assert max(abs(curve[s] - want[s]) for s in want) < 1e-6
    assert _max_diff(_adapter(final), ref["adapter"]) < 1e-5


def test_rank_0_killed_takes_the_other_ranks_down(
    runs: dict[str, Any], tiny_llama_dir: Path, workspace: Any
) -> None:
    p = params(tiny_llama_dir, runs["data"], world_size=2, max_steps=2000, save_every=0)
    sup = Supervisor(workspace)
    job = sup.jobs.submit("train.lora", p)
    assert sup.start(job.id)
    end = time.monotonic() + 180
    while len(_metric(_events(job), "train_loss")) < 2:
        sup.pump()
        assert time.monotonic() < end, sup.jobs.log_tail(job.id)
        time.sleep(0.02)
    pids = json.loads((job.run_dir / "ddp" / "attempt-1" / "pids.json").read_text())
    rank0 = sup.jobs.get(job.id).pid
    assert rank0 is not None
    os.kill(rank0, signal.SIGKILL)
    assert sup.wait(job.id, timeout=60).state == JobState.FAILED
    end = time.monotonic() + 30
    while not _gone(int(pids["1"])):
        assert time.monotonic() < end, "rank 1 outlived rank 0"
        time.sleep(0.05)


def test_cli_world_size_and_cancel(
    tiny_llama_dir: Path, tmp_path: Path, workspace: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli.main import main

    data = write_chat_data(tmp_path / "train.jsonl")
    ws = str(workspace.root)
    base = ["--workspace", ws, "train", "--base", str(tiny_llama_dir), "--data", str(data)]
    base += ["--max-seq-len", "128", "--device", "cpu"]
    assert main([*base, "--batch-size", "3", "--world-size", "2"]) == 2
    assert "multiple of world_size 2" in capsys.readouterr().err
    assert JobService(workspace).list_jobs() == []

    assert (
        main([*base, "--batch-size", "2", "--steps", "2000", "--world-size", "2", "--detach"]) == 0
    )
    job_id = capsys.readouterr().out.strip()
    sup = Supervisor(workspace)
    job = sup.jobs.get(job_id)
    assert job.params["world_size"] == 2
    end = time.monotonic() + 180
    while not _metric(_events(job), "train_loss"):
        sup.pump()
        assert time.monotonic() < end, sup.jobs.log_tail(job_id)
        time.sleep(0.02)
    # The rendezvous and gloo listen on loopback only (a LAN peer cannot join).
    pids = json.loads((job.run_dir / "ddp" / "attempt-1" / "pids.json").read_text())
    listening = [
        c.laddr.ip
        for pid in (sup.jobs.get(job_id).pid, int(pids["1"]))
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and set(listening) <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
    sup.cancel(job_id)
    final = sup.wait(job_id, timeout=120)
    assert final.state == JobState.CANCELLED, final.error
    last = max(_metric(_events(final), "train_loss"))
    assert _ckpt_steps(final) == [last]
    end = time.monotonic() + 30
    while not _gone(int(pids["1"])):
        assert time.monotonic() < end, "rank 1 outlived the cancelled job"
        time.sleep(0.05)
