"""Tokens/s of DemoAI's training step vs a plain peft loop, same run, same everything.

Both train the same tiny Llama (the test fixture) with the same LoRA config,
data, batch, sequence length and steps on the CPU; the baseline is the loop
people write by hand: ``model(**batch).loss.backward()`` with an attention
mask and HF's own loss. Prints both figures and the ratio (goal >= 1.0x).

    .venv/bin/python bench/finetune_cpu.py [--steps 30] [--batch 8] [--threads 2] [--packing]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# bench/ itself must not be on the path: bench/datasets.py would shadow the `datasets` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))


def make_data(path: Path, n: int = 64) -> Path:
    from tests.support.models import TINY_CORPUS

    rows = []
    for i in range(n):
        q = TINY_CORPUS[(i * 7) % len(TINY_CORPUS)]
        a = " ".join(TINY_CORPUS[(i * 13 + k) % len(TINY_CORPUS)] for k in range(1 + i % 4))
        rows.append(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def baseline_loop(session: Any, steps: int, lr: float) -> tuple[float, int]:
    """A plain peft loop over exactly the batches our session would use."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = session.config
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=session.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batches = []
    for step in range(steps):
        for idx in session.micro_batches(step):
            samples = [session.train_samples[i] for i in idx]
            width = max(len(s.input_ids) for s in samples)
            ids = [s.input_ids + [session.pad_id] * (width - len(s.input_ids)) for s in samples]
            mask = [[1] * len(s.input_ids) + [0] * (width - len(s.input_ids)) for s in samples]
            labels = [s.labels + [-100] * (width - len(s.labels)) for s in samples]
            batches.append(
                {
                    "input_ids": torch.tensor(ids),
                    "attention_mask": torch.tensor(mask),
                    "labels": torch.tensor(labels),
                }
            )
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    t0 = time.perf_counter()
    for b in batches:
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, tokens


def ours(session: Any, steps: int) -> tuple[float, int]:
    tokens = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        tokens += session.train_step().tokens
    return time.perf_counter() - t0, tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--packing", action="store_true", help="our side packs (padding-free)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; best of each")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from app.core.train.config import TrainConfig
    from app.core.train.loop import TrainSession
    from tests.support.models import tiny_llama_cached

    base = tiny_llama_cached()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "train.jsonl")
        common = {
            "base_model": str(base),
            "data_path": str(data),
            "max_steps": args.steps * (args.rounds + 1),
            "batch_size": args.batch,
            "max_seq_len": args.seq_len,
            "lora_rank": 16,
            "lora_dropout": 0.0,
            "learning_rate": 2e-4,
            "device": "cpu",
        }
        ours_s = TrainSession(TrainConfig.from_dict({**common, "packing": args.packing}))
        ref_s = TrainSession(TrainConfig.from_dict(common))  # same batches for the baseline
        ours(ours_s, 2)  # warm-up
        best_ours = best_base = 0.0
        for _ in range(args.rounds):
            t, n = ours(ours_s, args.steps)
            best_ours = max(best_ours, n / t)
            t, n = baseline_loop(ref_s, args.steps, 2e-4)
            best_base = max(best_base, n / t)
    print(
        f"tiny Llama, CPU x{args.threads} threads, batch {args.batch}, seq <= {args.seq_len}, "
        f"{args.steps} steps, packing={args.packing}"
    )
    print(f"ours          {best_ours:10.0f} tokens/s")
    print(f"plain peft    {best_base:10.0f} tokens/s")
    print(f"ratio         {best_ours / best_base:10.2f}x  (goal >= 1.0x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
