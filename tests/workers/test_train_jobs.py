"""The train.lora job in real worker processes: run, cancel, kill -9 + resume, CLI checks."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from app.core.jobs.events import EventReader
from app.core.jobs.store import JobService, JobState
from app.workers.supervisor import Supervisor
from tests.support.training import one_train_thread, write_chat_data  # noqa: F401


def params(base: Path, data: Path, **over: Any) -> dict[str, Any]:
    from app.core.train.config import TrainConfig

    values = {
        "base_model": str(base),
        "data_path": str(data),
        "max_steps": 40,
        "batch_size": 3,
        "grad_accum": 2,
        "learning_rate": 3e-3,
        "lr_scheduler": "cosine",
        "warmup_steps": 3,
        "lora_rank": 8,
        "lora_dropout": 0.1,
        "max_seq_len": 128,
        "device": "cpu",
        "save_every": 5,
        "keep_checkpoints": 2,
        "eval_fraction": 0.25,
        "eval_every": 10,
        **over,
    }
    return TrainConfig.from_dict(values).to_dict()


def _events(job: Any) -> list[dict[str, Any]]:
    return EventReader(job.run_dir / "events.jsonl").read_new()


def _metric(events: list[dict[str, Any]], name: str) -> list[tuple[int, float]]:
    return [(e["step"], e["value"]) for e in events if e["type"] == "metric" and e["name"] == name]


def _ckpt_steps(job: Any) -> list[int]:
    folder = job.run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name.split("-")[1]) for p in folder.iterdir() if p.name.split("-")[1].isdigit()
    )


def _adapter(job: Any) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(job.run_dir / "adapter" / "adapter_model.safetensors"))


def _wait_until(cond: Any, sup: Supervisor, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sup.pump()
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One complete run in a worker: the reference for the resume test."""
    from app.core.workspace import Workspace

    os.environ["DEMOAI_TRAIN_THREADS"] = "1"
    tmp = tmp_path_factory.mktemp("train-ref")
    data = write_chat_data(tmp / "train.jsonl")
    ws = Workspace.open(tmp / "ws")
    sup = Supervisor(ws)
    job = sup.jobs.submit("train.lora", params(tiny_llama_dir, data))
    assert sup.start(job.id)
    final = sup.wait(job.id, timeout=300)
    assert final.state == JobState.SUCCEEDED, (final.error, sup.jobs.log_tail(job.id))
    out = {"job": final, "data": data, "events": _events(final), "adapter": _adapter(final)}
    ws.close()
    return out


def test_a_run_reports_curves_and_writes_adapter_and_manifest(
    uninterrupted: dict[str, Any],
) -> None:
    job, events = uninterrupted["job"], uninterrupted["events"]
    losses = _metric(events, "train_loss")
    assert [s for s, _ in losses] == list(range(1, 41))
    assert sum(v for _, v in losses[-5:]) < 0.7 * sum(v for _, v in losses[:5])
    for name in ("learning_rate", "grad_norm", "tokens_per_s", "cpu_mem_mb"):
        assert len(_metric(events, name)) == 40, name
    assert [s for s, _ in _metric(events, "eval_loss")] == [10, 20, 30, 40]
    assert (job.run_dir / "adapter" / "adapter_config.json").is_file()
    manifest = json.loads((job.run_dir / "manifest.json").read_text())
    assert manifest["config"] == job.params and manifest["seed"] == 42
    assert manifest["base_model"]["weights_sha256"]["model.safetensors"]
    assert len(manifest["data"]["sha256"]) == 64 and manifest["packages"]["torch"]
    assert manifest["metrics"]["steps"] == 40
    assert job.result["adapter"].endswith("adapter") and job.result["steps"] == 40
    assert any(e["type"] == "artifact" and e["kind"] == "adapter" for e in events)
    assert _ckpt_steps(job) == [30, 35]  # the last K=2 kept


def test_kill_9_then_resume_matches_an_uninterrupted_run(
    uninterrupted: dict[str, Any], tiny_llama_dir: Path, workspace: Any
) -> None:
    sup = Supervisor(workspace)
    job = sup.jobs.submit("train.lora", params(tiny_llama_dir, uninterrupted["data"]))
    assert sup.start(job.id)
    _wait_until(lambda: max(_ckpt_steps(job), default=0) >= 15, sup)
    time.sleep(0.1)  # let it run a few steps past the checkpoint
    pid = sup.jobs.get(job.id).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = sup.wait(job.id, timeout=60)
    assert killed.state == JobState.FAILED
    first = _events(killed)
    resume_from = max(_ckpt_steps(killed))
    steps_before = [s for s, _ in _metric(first, "train_loss")]
    assert steps_before and steps_before[-1] >= resume_from

    JobService(workspace).resume(job.id)
    final = sup.wait(job.id, timeout=300)
    assert final.state == JobState.SUCCEEDED and final.attempt == 2, final.error
    events = _events(final)
    second = events[len(first) :]
    # Attempt 2 starts right after the checkpoint: no step skipped, none run twice in it.
    steps_after = [s for s, _ in _metric(second, "train_loss")]
    assert steps_after == list(range(resume_from + 1, 41))
    assert any("resumed from checkpoint-" in str(e.get("text", "")) for e in second)
    # The curve (a later point for a step replaces an earlier one) equals the reference.
    curve = dict(_metric(events, "train_loss"))
    ref = dict(_metric(uninterrupted["events"], "train_loss"))
    assert sorted(curve) == list(range(1, 41))
    assert max(abs(curve[s] - ref[s]) for s in ref) < 1e-6
    got, want = _adapter(final), uninterrupted["adapter"]
    assert got.keys() == want.keys()
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-5


def test_cancel_writes_a_checkpoint_and_stops(
    tiny_llama_dir: Path, tmp_path: Path, workspace: Any
) -> None:
    data = write_chat_data(tmp_path / "train.jsonl")
    sup = Supervisor(workspace)
    job = sup.jobs.submit(
        "train.lora", params(tiny_llama_dir, data, max_steps=2000, save_every=0, eval_fraction=0.0)
    )
    assert sup.start(job.id)
    _wait_until(lambda: len(_metric(_events(job), "train_loss")) >= 3, sup)
    sup.cancel(job.id)
    final = sup.wait(job.id, timeout=60)
    assert final.state == JobState.CANCELLED and final.exit_code == 3
    last = _metric(_events(final), "train_loss")[-1][0]
    assert _ckpt_steps(final) == [last] and last < 2000
    state = json.loads(
        (final.run_dir / "checkpoints" / f"checkpoint-{last}" / "state.json").read_text()
    )
    assert state["step"] == last and len(state["history"]) == last
    assert not (final.run_dir / "adapter").exists()


def _cli(*argv: str) -> int:
    from app.cli.main import main

    return main(list(argv))


def test_cli_bad_configs_fail_before_a_job_exists(
    tiny_llama_dir: Path, tmp_path: Path, workspace: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_chat_data(tmp_path / "train.jsonl")
    ws = str(workspace.root)
    base = ["--workspace", ws, "train", "--base", str(tiny_llama_dir), "--data", str(data)]
    cases = {
        "beyond the model's context": ["--max-seq-len", "1024"],  # explicit, > 512 (a default fits)
        "unknown target module(s) attn": ["--max-seq-len", "128", "--set", 'target_modules=["attn"]'],
        "lacks column(s) prompt, completion": [
            "--max-seq-len", "128", "--format", "prompt_completion",
        ],
    }  # fmt: skip
    for needle, extra in cases.items():
        assert _cli(*base, *extra) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert _cli("--workspace", ws, "train", "--config", str(tmp_path / "nope.json")) == 2
    assert JobService(workspace).list_jobs() == []


def test_cli_runs_detached_and_repeats_from_manifest(
    uninterrupted: dict[str, Any], workspace: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli.train import build_config, register  # noqa: F401

    manifest = uninterrupted["job"].run_dir / "manifest.json"
    ws = str(workspace.root)
    assert _cli("--workspace", ws, "train", "--from-manifest", str(manifest), "--detach") == 0
    job_id = capsys.readouterr().out.strip()
    job = JobService(workspace).get(job_id)
    assert job.kind == "train.lora" and job.params == uninterrupted["job"].params
    JobService(workspace).request_cancel(job_id)
    final = Supervisor(workspace).wait(job_id, timeout=120)
    assert final.state in (JobState.CANCELLED, JobState.SUCCEEDED, JobState.FAILED)


def test_cli_merge_writes_a_model_folder(
    uninterrupted: dict[str, Any], tiny_llama_dir: Path, tmp_path: Path
) -> None:
    adapter = uninterrupted["job"].run_dir / "adapter"
    out = tmp_path / "merged"
    argv = ["train", "merge", "--base", str(tiny_llama_dir), "--adapter", str(adapter)]
    assert _cli(*argv, "--out", str(out)) == 0
    assert (out / "model.safetensors").is_file() and (out / "merge.json").is_file()
    assert _cli(*argv, "--out", str(out)) == 2  # refuses to overwrite
