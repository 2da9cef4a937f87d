"""One train.lora job with world_size 1 vs the same job with world_size N, on this machine.

Both runs train the tiny Llama of the test fixtures on the same data with the
same effective batch, as real jobs (worker process, rank processes, gloo on
loopback). Prints, for each: the job's wall time, the time to the first step
(model load, rank start-up and rendezvous) and the median tokens/s of the
steps after the first; then the ratios N-process / 1-process. The thread
budget is the same: DEMOAI_TRAIN_THREADS is set to cores / world_size.

    .venv/bin/python bench/train_ddp.py [--world-size 2] [--steps 20] [--batch 8] [--repeats 1]

With repeats, the runs alternate (1, N, N, 1, ...) and the medians are compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# bench/ itself must not be on the path: bench/datasets.py would shadow the `datasets` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))


def run_job(ws: Any, params: dict[str, Any], threads: int) -> dict[str, float]:
    from app.core.jobs.events import EventReader
    from app.core.jobs.store import JobState
    from app.workers.supervisor import Supervisor

    os.environ["DEMOAI_TRAIN_THREADS"] = str(threads)
    sup = Supervisor(ws)
    t0 = time.time()
    job = sup.jobs.submit("train.lora", params)
    assert sup.start(job.id)
    final = sup.wait(job.id, timeout=1800)
    wall = time.time() - t0
    assert final.state == JobState.SUCCEEDED, (final.error, sup.jobs.log_tail(job.id))
    events = EventReader(final.run_dir / "events.jsonl").read_new()
    steps = [e for e in events if e["type"] == "metric" and e["name"] == "train_loss"]
    rates = [e["value"] for e in events if e["type"] == "metric" and e["name"] == "tokens_per_s"][
        1:
    ]
    return {
        "wall_s": wall,
        "first_step_s": float(steps[0]["t"]) - t0 if steps and "t" in steps[0] else float("nan"),
        "tokens_per_s": statistics.median(rates) if rates else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    from app.core.train.config import TrainConfig
    from app.core.workspace import Workspace
    from bench.finetune_cpu import make_data
    from tests.support.models import tiny_llama_cached

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "train.jsonl")
        ws = Workspace.open(Path(tmp) / "ws")
        base = {
            "base_model": str(tiny_llama_cached()),
            "data_path": str(data),
            "max_steps": args.steps,
            "batch_size": args.batch,
            "lora_dropout": 0.0,
            "max_seq_len": 128,
            "device": "cpu",
            "save_every": 0,
        }
        runs: dict[int, list[dict[str, float]]] = {1: [], args.world_size: []}
        for i in range(args.repeats):
            order = (1, args.world_size) if i % 2 == 0 else (args.world_size, 1)
            for w in order:
                params = TrainConfig.from_dict({**base, "world_size": w}).to_dict()
                r = run_job(ws, params, max(1, cores // w))
                runs[w].append(r)
                print(
                    f"world_size {w}: wall {r['wall_s']:.1f} s, first step after "
                    f"{r['first_step_s']:.1f} s, {r['tokens_per_s']:.0f} tokens/s (median)"
                )
        ws.close()
    one, many = (
        {k: statistics.median(r[k] for r in runs[w]) for k in runs[w][0]}
        for w in (1, args.world_size)
    )
    print(
        f"ratios {args.world_size}/1 on {cores} cores, {args.repeats} run(s) each: tokens/s {many['tokens_per_s'] / one['tokens_per_s']:.2f}x, "
        f"wall {many['wall_s'] / one['wall_s']:.2f}x, "
        f"first step {many['first_step_s'] / one['first_step_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
