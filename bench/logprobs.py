"""What logprobs and prompt scoring cost, against the same work without them, in one process.

Same GGUF (the Gemma 3 270M Q4_K_M test fixture), threads and prompt. Arms:

* generation: ``LlamaEngine.complete`` greedy, ``max_tokens`` tokens, without and with
  ``logprobs=5`` (each token's log-softmax over the vocabulary and its top 5);
* prompt: a plain prefill of the prompt's tokens (``Llama.eval``, last logits only)
  against ``LlamaEngine.score_tokens`` (every position's logits, what ``echo`` with
  ``logprobs`` costs), with 0 and 5 alternatives, and against a second ``Llama``
  loaded with ``logits_all=True`` (llama.cpp's own way; its scores array holds
  n_ctx x vocabulary floats, 1 GiB here) evaluating the same tokens.

Arms alternate within each repeat so machine noise hits them alike; one warm-up
round is discarded. Prints medians and ratios against the plain arm.

    .venv/bin/python bench/logprobs.py [--repeats 5] [--max-tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = (
    "The history of the printing press begins in the fifteenth century, when movable "
    "type made books cheaper and faster to produce than ever before. "
) * 4


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from app.core.infer import EngineOptions, SamplingParams, open_engine
    from tests.support.models import gemma_gguf_cached

    engine = open_engine(
        gemma_gguf_cached(), "gguf", EngineOptions(threads=args.threads, n_ctx=1024)
    )
    llm = engine.llm  # type: ignore[attr-defined]
    tokens = engine.prompt_tokens(PROMPT)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, seed=1)

    def generate(logprobs: int | None) -> Callable[[], None]:
        def run() -> None:
            llm.reset()
            kw = {} if logprobs is None else {"logprobs": logprobs}
            for _ in engine.complete(PROMPT, params, **kw):
                pass

        return run

    def prefill() -> None:
        llm.reset()
        llm.eval(tokens)

    from llama_cpp import Llama

    full = Llama(
        model_path=str(gemma_gguf_cached()), n_ctx=1024, n_threads=args.threads,
        n_threads_batch=args.threads, logits_all=True, verbose=False,
    )  # fmt: skip

    def prefill_logits_all() -> None:
        full.reset()
        full.eval(tokens)

    def score(top: int) -> Callable[[], None]:
        return lambda: engine.score_tokens(tokens, top) and None

    arms: dict[str, Callable[[], None]] = {
        "generate": generate(None),
        "generate+logprobs5": generate(5),
        "prefill": prefill,
        "logits_all_eval": prefill_logits_all,
        "score_top0": score(0),
        "score_top5": score(5),
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    for rep in range(args.repeats + 1):
        for name, fn in arms.items():
            t0 = time.perf_counter()
            fn()
            if rep:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"prompt tokens: {len(tokens)}, generated: {args.max_tokens}, repeats: {args.repeats}")
    for name, base in (
        ("generate", "generate"),
        ("generate+logprobs5", "generate"),
        ("prefill", "prefill"),
        ("logits_all_eval", "prefill"),
        ("score_top0", "prefill"),
        ("score_top5", "prefill"),
    ):
        print(f"{name:20s} {med[name] * 1000:9.1f} ms   x{med[name] / med[base]:.2f} vs {base}")
    print(f"score_top0 / logits_all_eval: x{med['score_top0'] / med['logits_all_eval']:.2f}")
    full.close()
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
