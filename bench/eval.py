"""Samples/s of DemoAI's eval runner vs plain loops, same models, data and run.

Arms, each on the same prompts with greedy decoding and the same max_tokens:

* GGUF (Gemma 3 270M Q4_K_M test fixture): our runner (engine + metrics EM/F1 +
  one SQLite row per sample, exactly the per-sample path of the ``eval.run`` job)
  vs a plain ``llama_cpp.Llama(...)(prompt, max_tokens, temperature=0)`` loop;
* HF (the tiny test Llama): our runner vs a plain ``model.generate`` loop.

One warm-up sample per arm is discarded; arms alternate over ``--repeats``.
Prints medians and ratios (ours / plain); goal >= 0.9x.

    .venv/bin/python bench/eval.py [--samples 16] [--max-tokens 16] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "How many legs does a spider have?",
    "What do bees make?",
    "Which planet is known as the red planet?",
    "What is frozen water called?",
    "What gas do plants absorb?",
    "Who wrote Hamlet?",
]


def rows(n: int) -> list[dict[str, str]]:
    return [
        {"q": f"Question: {QUESTIONS[i % len(QUESTIONS)]}\nAnswer:", "a": "x"} for i in range(n)
    ]


def ours(
    ws: Any, model_path: Path, fmt: str, data: list[dict[str, str]], args: Any
) -> tuple[float, int]:
    from app.core.eval.runner import EvalConfig, EvalStore, _ModelRunner, score_sample

    cfg = EvalConfig(
        models=[str(model_path)],
        dataset="bench",
        input_column="q",
        reference_column="a",
        metrics=["em", "f1"],
        max_tokens=args.max_tokens,
        threads=args.threads,
        n_ctx=512,
    )
    store = EvalStore(ws)
    run_id = f"bench-{time.time_ns()}"
    store.create_run(run_id, cfg)
    runner = _ModelRunner(cfg, model_path, fmt)
    try:
        score_sample(cfg, runner, data[0], -1, run_id, "warmup")
        t0 = time.perf_counter()
        tokens = 0
        for i, row in enumerate(data):
            sample = score_sample(cfg, runner, row, i, run_id, str(model_path))
            store.put_sample(sample)
            tokens += sample.tokens or 0
        return len(data) / (time.perf_counter() - t0), tokens
    finally:
        runner.close()


def plain_llama(path: Path, data: list[dict[str, str]], args: Any) -> tuple[float, int]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path),
        n_ctx=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    try:
        llm(data[0]["q"], max_tokens=args.max_tokens, temperature=0.0)
        t0 = time.perf_counter()
        tokens = 0
        for row in data:
            out = llm(row["q"], max_tokens=args.max_tokens, temperature=0.0)
            tokens += int(out["usage"]["completion_tokens"])
        return len(data) / (time.perf_counter() - t0), tokens
    finally:
        llm.close()


def plain_hf(path: Path, data: list[dict[str, str]], args: Any) -> tuple[float, int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()

    def one(text: str) -> int:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=args.max_tokens, do_sample=False)
        tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        return int(out.shape[1] - ids.shape[1])

    one(data[0]["q"])
    t0 = time.perf_counter()
    tokens = sum(one(row["q"]) for row in data)
    return len(data) / (time.perf_counter() - t0), tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from app.core.workspace import Workspace
    from tests.support.models import gemma_gguf_cached, tiny_llama_cached

    data = rows(args.samples)
    gguf, tiny = gemma_gguf_cached(), tiny_llama_cached()
    arms = ("gguf_ours", "gguf_plain", "hf_ours", "hf_plain")
    res: dict[str, list[float]] = {k: [] for k in arms}
    toks: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        try:
            for _ in range(args.repeats):
                for arm, fn in (
                    ("gguf_plain", lambda: plain_llama(gguf, data, args)),
                    ("gguf_ours", lambda: ours(ws, gguf, "gguf", data, args)),
                    ("hf_plain", lambda: plain_hf(tiny, data, args)),
                    ("hf_ours", lambda: ours(ws, tiny, "hf", data, args)),
                ):
                    rate, n_tok = fn()
                    res[arm].append(rate)
                    toks[arm] = n_tok
        finally:
            ws.close()
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {
        "samples": args.samples,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "repeats": args.repeats,
        "samples_per_s": {k: round(v, 3) for k, v in med.items()},
        "tokens_generated_per_pass": toks,
        "ratio_gguf": round(med["gguf_ours"] / med["gguf_plain"], 3),
        "ratio_hf": round(med["hf_ours"] / med["hf_plain"], 3),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
