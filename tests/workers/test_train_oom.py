"""Out-of-memory in a real training job: automatic micro-batch reduction, or a clear failure.

The memory shortage is real: the job runs in a child process (the job's own entry
point, ``app.workers.run``) whose ``RLIMIT_DATA`` is capped, once the model and
the data are loaded, at what it uses then + ``HEADROOM_MB`` (see
``tests/support/memcap.py``). With 16 sequences of 512 tokens on the tiny Llama
(1 thread) a forward/backward pass needs about 40 MiB per sequence on top of
that (measured: micro-batch 8 ~330 MiB, 4 ~170 MiB, 2 ~80 MiB, 1 ~30 MiB), so
with 140 MiB the run goes 8 -> 4 -> 2. The allocator's own error ("DefaultCPUAllocator: can't
allocate memory") is what the loop sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from app.core.jobs.events import EventReader
from app.core.jobs.store import Job, JobService, JobState
from app.workers.supervisor import Supervisor
from tests.support.training import WORDS, one_train_thread  # noqa: F401  (autouse)

REPO = Path(__file__).resolve().parents[2]
HEADROOM_MB = 220
BATCH = 8

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="RLIMIT_DATA caps heap and mmap on Linux only"
)


def write_long_data(path: Path) -> Path:
    """16 completions long enough to be cut at 512 tokens."""
    rng = random.Random(0)
    rows = [
        {"prompt": f"Story {i}:", "completion": " ".join(rng.choice(WORDS) for _ in range(400))}
        for i in range(16)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def params(base: Path, data: Path, **over: Any) -> dict[str, Any]:
    from app.core.train.config import TrainConfig

    values = {
        "base_model": str(base),
        "data_path": str(data),
        "data_format": "prompt_completion",
        "max_steps": 3,
        "batch_size": BATCH,
        "grad_accum": 1,
        "max_seq_len": 512,
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "lora_rank": 8,
        "lora_dropout": 0.1,  # the retried step must replay the same dropout masks
        "device": "cpu",
        "save_every": 1,
        "keep_checkpoints": 5,
        **over,
    }
    return TrainConfig.from_dict(values).to_dict()


def run_capped(ws: Any, job_id: str) -> tuple[int, dict[str, int]]:
    """Claim ``job_id`` and run it in a child capped at load + HEADROOM_MB; (exit code, cap)."""
    assert JobService(ws).claim(job_id)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    argv = ["-m", "tests.support.memcap", job_id, "--workspace", str(ws.root)]
    proc = subprocess.run(
        [sys.executable, *argv, "--headroom-mb", str(HEADROOM_MB)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    caps = [ln for ln in proc.stdout.splitlines() if ln.startswith("memcap: ")]
    assert caps, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.returncode, json.loads(caps[-1].removeprefix("memcap: "))


def events(job: Job) -> list[dict[str, Any]]:
    return EventReader(job.run_dir / "events.jsonl").read_all()


def losses(evs: list[dict[str, Any]]) -> dict[int, float]:
    return {
        e["step"]: e["value"] for e in evs if e["type"] == "metric" and e["name"] == "train_loss"
    }


def checkpoint_hashes(job: Job) -> dict[str, str]:
    folder = job.run_dir / "checkpoints"
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def session_losses(cfg_dict: dict[str, Any], steps: int, **over: Any) -> list[float]:
    """The reference: the same run in this process, without a cap."""
    from app.core.train.config import TrainConfig
    from app.core.train.loop import TrainSession

    s = TrainSession(TrainConfig.from_dict({**cfg_dict, **over}))
    return [s.train_step().loss for _ in range(steps)]


def cli_config(*argv: str) -> Any:
    """The TrainConfig ``demoai train ARGV`` would submit."""
    from app.cli.main import build_parser
    from app.cli.train import build_config

    return build_config(build_parser().parse_args(["train", *argv]))


REDUCED = re.compile(
    r"out of memory at step (\d+) with micro-batch (\d+): retrying with micro-batch (\d+) "
    r"x (\d+) accumulated passes \(effective batch (\d+) unchanged\)"
)


def test_oom_halves_the_micro_batch_and_keeps_the_run(
    tiny_llama_dir: Path, tmp_path: Path, workspace: Any
) -> None:
    from app.core.train.config import TrainConfig
    from app.core.train.loop import TrainSession

    data = write_long_data(tmp_path / "long.jsonl")
    p = params(tiny_llama_dir, data)
    job = JobService(workspace).submit("train.lora", p)
    code, cap = run_capped(workspace, job.id)
    final = JobService(workspace).get(job.id)
    assert code == 0 and final.state == JobState.SUCCEEDED, (final.error, final.hint)

    # The event log: one warning per halving, each from the previous size, each keeping the
    # effective batch. When the allocator gives out (step 1 or a later step) is the
    # allocator's business, not an assertion.
    evs = events(final)
    warnings = [e["text"] for e in evs if e["type"] == "log" and e.get("level") == "warning"]
    found = [REDUCED.fullmatch(w) for w in warnings]
    assert found and all(found), warnings
    chain = [(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5])) for m in found if m]
    assert chain[0][1] == BATCH
    for (_, _, new, passes, eff), nxt in zip(chain, [*chain[1:], None], strict=True):
        assert new * passes == eff == BATCH
        if nxt is not None:
            assert nxt[1] == new and nxt[2] == new // 2
    assert [c[0] for c in chain] == sorted(c[0] for c in chain)
    assert all(1 <= c[0] <= 3 for c in chain)
    micro = chain[-1][2]
    assert micro < BATCH, chain
    assert any("micro-batch" in (e.get("message") or "") for e in evs if e["type"] == "progress")

    def micro_after(step: int) -> int:
        """The micro-batch in effect once ``step`` was done."""
        return min([BATCH] + [c[2] for c in chain if c[0] <= step])

    # Result, checkpoints and manifest say the size the run ended with.
    assert final.result["micro_batch_size"] == micro
    assert final.result["oom_reductions"] == len(chain)
    for step in (1, 2):
        state = json.loads(
            (final.run_dir / "checkpoints" / f"checkpoint-{step}" / "state.json").read_text()
        )
        assert state["micro_batch_size"] == micro_after(step)
        assert len(state["oom_reductions"]) == sum(1 for c in chain if c[0] <= step)
        assert state["config"] == p  # the configured run: resume checks it against the job
    manifest = json.loads((final.run_dir / "manifest.json").read_text())
    mem = manifest["memory"]
    assert mem["micro_batch_size"] * mem["accumulated_passes"] == mem["effective_batch"] == BATCH
    assert mem["configured_micro_batch"] == BATCH and mem["auto_reduce_batch"] is True
    assert [r["new"] for r in mem["oom_reductions"]] == [c[2] for c in chain]
    assert "can't allocate memory" in mem["oom_reductions"][0]["error"]
    # A repeat (--from-manifest) starts with the reduced micro-batch, same data and rate.
    repeat = TrainConfig.from_json(final.run_dir / "manifest.json")
    assert repeat.micro_batch_size == micro and repeat.batch_size == BATCH
    assert repeat.with_changes(micro_batch_size=None).to_dict() == p
    assert cli_config("--from-manifest", str(final.run_dir / "manifest.json")) == repeat

    # The curve is the one of an uncapped run that uses the same micro-batch at each step
    # (same data order, rate and dropout masks: the retried step replays its batch) ...
    curve = losses(evs)
    assert sorted(curve) == [1, 2, 3]
    replay = TrainSession(TrainConfig.from_dict(p))
    ref_replay = []
    for step in (1, 2, 3):
        replay.micro_batch = micro_after(step)
        ref_replay.append(replay.train_step().loss)
    assert [curve[s] for s in (1, 2, 3)] == pytest.approx(ref_replay, rel=1e-5)
    # ... and, up to the float summation order of the steps done before a later halving,
    # the one of a run configured with the final micro-batch from the start.
    ref_small = session_losses(p, 3, micro_batch_size=micro)
    assert [curve[s] for s in (1, 2, 3)] == pytest.approx(ref_small, rel=1e-3)
    # ... and, up to float rounding, of the full micro-batch without a cap.
    ref_full = session_losses(p, 1)
    assert curve[1] == pytest.approx(ref_full[0], rel=1e-5)

    # Resuming from a checkpoint continues with the size it had then.
    s = TrainSession(TrainConfig.from_dict(p))
    assert s.micro_batch == BATCH
    s.load_checkpoint(final.run_dir / "checkpoints" / "checkpoint-1")
    assert s.micro_batch == micro_after(1) and s.accum_passes == BATCH // micro_after(1)
    assert s.train_step().loss == pytest.approx(curve[2], rel=1e-5)
    assert cap["cap"] - cap["data_at_load"] == HEADROOM_MB * 2**20


def test_oom_with_the_option_off_fails_clearly_and_keeps_checkpoints(
    tiny_llama_dir: Path, tmp_path: Path, workspace: Any
) -> None:
    from app.core.train.loop import OOM_HINT_AUTO_OFF

    data = write_long_data(tmp_path / "long.jsonl")
    p = params(tiny_llama_dir, data, auto_reduce_batch=False, max_steps=6)
    sup = Supervisor(workspace)
    jobs = sup.jobs
    job = jobs.submit("train.lora", p)

    # Attempt 1, no cap: cancel after the first step (a checkpoint per step).
    assert sup.start(job.id)
    end = time.monotonic() + 300
    while not losses(events(jobs.get(job.id))) and time.monotonic() < end:
        sup.pump()
        time.sleep(0.02)
    sup.cancel(job.id)
    first = sup.wait(job.id, timeout=120)
    assert first.state == JobState.CANCELLED, (first.error, jobs.log_tail(job.id))
    done = max(losses(events(first)))
    assert done < 6
    before = checkpoint_hashes(first)
    n_first = len(events(first))
    assert f"checkpoint-{done}/state.json" in before

    # Attempt 2, capped: the first step after the resume runs out of memory.
    jobs.resume(job.id)
    code, _ = run_capped(workspace, job.id)
    failed = jobs.get(job.id)
    assert code == 1 and failed.state == JobState.FAILED
    assert failed.error == f"Out of memory at step {done + 1} (batch_size 8, max_seq_len 512)."
    assert failed.hint == OOM_HINT_AUTO_OFF and "auto_reduce_batch" in failed.hint
    second = events(failed)[n_first:]
    assert any(e["type"] == "error" and e["message"] == failed.error for e in second)
    assert not any(e["type"] == "log" and e.get("level") == "warning" for e in second)
    assert not any(e["type"] == "metric" for e in second)  # no step was completed
    # The checkpoints are untouched: same files, same bytes, nothing half-written.
    assert checkpoint_hashes(failed) == before
    assert not (failed.run_dir / "adapter").exists()

    # Attempt 3, no cap: resumes from the checkpoint and ends like an uninterrupted run.
    jobs.resume(job.id)
    ok = sup.wait(job.id, timeout=300)
    assert ok.state == JobState.SUCCEEDED and ok.attempt == 3, (ok.error, jobs.log_tail(job.id))
    curve = losses(events(ok))
    assert sorted(curve) == list(range(1, 7))
    ref = session_losses(p, 6)
    assert [curve[s] for s in range(1, 7)] == pytest.approx(ref, rel=1e-6)


def test_cli_flags_set_the_option_and_the_micro_batch(tiny_llama_dir: Path, tmp_path: Path) -> None:
    data = write_long_data(tmp_path / "long.jsonl")
    base = ["--base", str(tiny_llama_dir), "--data", str(data), "--batch-size", "8"]
    assert cli_config(*base).auto_reduce_batch is True  # the default
    off = cli_config(*base, "--no-auto-reduce-batch", "--micro-batch-size", "2")
    assert off.auto_reduce_batch is False and off.micro_batch == 2 and off.effective_batch == 8
    assert cli_config(*base, "--auto-reduce-batch").auto_reduce_batch is True
