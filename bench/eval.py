"""Samples/s of DemoAI's eval runner vs plain loops, same models, data and run.

Arms, each on the same prompts with greedy decoding and the same max_tokens:

* GGUF (Gemma 3 270M Q4_K_M test fixture): our runner (engine + metrics EM/F1 +
  one SQLite row per sample, exactly the per-sample path of the ``eval.run`` job)
  vs a plain ``llama_cpp.Llama(...)(prompt, max_tokens, temperature=0)`` loop;
* HF (the tiny test Llama): our runner vs a plain ``model.generate`` loop.

One warm-up sample per arm is discarded; arms alternate over ``--repeats``.
Prints medians and ratios (ours / plain); goal >= 0.9x.

    .venv/bin/python bench/eval.py [--samples 16] [--max-tokens 16] [--threads 2] [--repeats 3]

``--perplexity``: corpus perplexity instead, on one English text (llama.cpp's own
docs, the first ``--ppl-chars`` characters), alternating over ``--repeats``:

* GGUF (Gemma 3 270M Q4_K_M): ``demoai eval perplexity``'s scorer
  (:class:`GGUFCorpusScorer`: load, tokenize, score every chunk) vs llama.cpp's
  ``llama-perplexity`` built from the vendored llama.cpp of llama-cpp-python's
  sdist (once, cached in ``~/.cache/demoai/llama-tools``; portable build), same
  file, context (``--ppl-ctx``), threads; wall time of each whole run;
* HF (the tiny Llama): :class:`HFCorpusScorer` vs a plain transformers loop (one
  forward per chunk, full logits, log-softmax, the second half gathered).

Prints both perplexities, their relative difference and the ratio of speeds
(tool time / our time; goal >= 0.9x). ``--ppl-reference`` adds the earlier
all-logits float64 path (:class:`GGUFScorer`) as a third GGUF arm.

    .venv/bin/python bench/eval.py --perplexity [--ppl-ctx 512] [--ppl-chars 40000] \
        [--threads 2] [--repeats 3] [--ppl-reference]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
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


# -- corpus perplexity -------------------------------------------------------------------


def llama_source() -> Path:
    from tests.support.models import llama_cpp_source

    src = llama_cpp_source()
    if src is None:
        raise SystemExit("llama.cpp's source (llama-cpp-python's sdist) is not unpacked here")
    return src


def build_llama_perplexity() -> Path:
    """``llama-perplexity`` from the vendored llama.cpp, built once into the shared cache."""
    from app.core.export.llama_tools import llama_tool

    def say(line: str) -> None:
        print(line, file=sys.stderr)  # stdout is the JSON result

    return llama_tool("llama-perplexity", src=llama_source(), log=say)


def corpus_text(chars: int) -> str:
    docs = llama_source() / "docs"
    parts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(docs.glob("*.md"))]
    text = "\n\n".join(parts)[:chars]
    if len(text) < chars:
        raise SystemExit(f"only {len(text)} characters of text available")
    return text


def tool_ppl(
    exe: Path, model: Path, text_file: Path, ctx: int, threads: int, fa: str = "auto"
) -> tuple[float, float]:
    """(perplexity, seconds) of one ``llama-perplexity`` run."""
    cmd = [str(exe), "-m", str(model), "-f", str(text_file), "-c", str(ctx)]
    cmd += ["-t", str(threads), "-tb", str(threads), "--no-warmup", "-fa", fa]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    secs = time.perf_counter() - t0
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)
    if r.returncode != 0 or m is None:
        raise SystemExit(f"llama-perplexity failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return float(m.group(1)), secs


def ours_gguf_ppl(
    model: Path, text: str, ctx: int, threads: int, fa: str = "off"
) -> tuple[float, float]:
    from app.core.eval.perplexity import GGUFCorpusScorer, corpus_spans

    t0 = time.perf_counter()
    flash = {"off": False, "on": True, "auto": None}[fa]
    sc = GGUFCorpusScorer(model, context=ctx, threads=threads, flash_attn=flash)
    try:
        spans = corpus_spans(sc.tokenize(text), context=ctx, method="llama_cpp", bos=sc.bos_id)
        nll = 0.0
        for i in range(0, len(spans), sc.n_seq):
            nll += sum(sc.score(spans[i : i + sc.n_seq]))
    finally:
        sc.close()
    n = sum(sp.n_scored for sp in spans)
    return math.exp(nll / n), time.perf_counter() - t0


def reference_gguf_ppl(model: Path, text: str, ctx: int, threads: int) -> tuple[float, float]:
    from app.core.eval.perplexity import GGUFScorer, llama_cpp_style_perplexity

    t0 = time.perf_counter()
    sc = GGUFScorer(model, n_ctx=ctx, threads=threads)
    try:
        res = llama_cpp_style_perplexity(sc, sc.tokenize(text), n_ctx=ctx)
    finally:
        sc.close()
    return res.perplexity, time.perf_counter() - t0


def ours_hf_ppl(path: Path, text: str, ctx: int) -> tuple[float, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.core.eval.perplexity import HFCorpusScorer, corpus_spans

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    sc = HFCorpusScorer(model, tok)
    spans = corpus_spans(sc.tokenize(text), context=ctx, method="llama_cpp", bos=sc.bos_id)
    per = sc.batch_size(spans[0])
    nll = 0.0
    for i in range(0, len(spans), per):
        nll += sum(sc.score(spans[i : i + per]))
    n = sum(sp.n_scored for sp in spans)
    return math.exp(nll / n), time.perf_counter() - t0


def plain_hf_ppl(path: Path, text: str, ctx: int) -> tuple[float, float]:
    """The plain loop: one forward per chunk, every position's logits, log-softmax, gather."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = tok(text, return_tensors="pt").input_ids[0]
    first, nll, n = ctx // 2, 0.0, 0
    for c in range(len(ids) // ctx):
        chunk = ids[c * ctx : (c + 1) * ctx].clone()
        chunk[0] = tok.bos_token_id
        with torch.inference_mode():
            logp = torch.log_softmax(model(chunk[None]).logits[0].float(), dim=-1)
        tgt = chunk[first + 1 :]
        nll -= float(logp[first:-1].gather(1, tgt[:, None]).sum())
        n += len(tgt)
    return math.exp(nll / n), time.perf_counter() - t0


def perplexity_main(args: Any) -> int:
    import torch

    from tests.support.models import gemma_gguf_cached, tiny_llama_cached

    torch.set_num_threads(args.threads)
    exe = build_llama_perplexity()
    gguf, tiny = gemma_gguf_cached(), tiny_llama_cached()
    text = corpus_text(args.ppl_chars)
    arms: dict[str, Any] = {
        "gguf_tool": None,
        "gguf_ours": lambda: ours_gguf_ppl(gguf, text, args.ppl_ctx, args.threads, args.ours_fa),
        "hf_plain": lambda: plain_hf_ppl(tiny, text, args.hf_ctx),
        "hf_ours": lambda: ours_hf_ppl(tiny, text, args.hf_ctx),
    }
    if args.ppl_reference:
        arms["gguf_reference"] = lambda: reference_gguf_ppl(gguf, text, args.ppl_ctx, args.threads)
    secs: dict[str, list[float]] = {k: [] for k in arms}
    ppl: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "corpus.txt"
        f.write_text(text, encoding="utf-8")
        arms["gguf_tool"] = lambda: tool_ppl(exe, gguf, f, args.ppl_ctx, args.threads, args.tool_fa)
        for rep in range(args.repeats):
            order = list(arms) if rep % 2 == 0 else list(reversed(arms))
            for arm in order:
                value, t = arms[arm]()
                secs[arm].append(t)
                ppl[arm] = value
                print(f"  {arm:<15} ppl {value:.4f}  {t:.2f} s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in secs.items()}
    out: dict[str, Any] = {
        "text_chars": len(text),
        "ctx_gguf": args.ppl_ctx,
        "ctx_hf": args.hf_ctx,
        "threads": args.threads,
        "repeats": args.repeats,
        "flash_attn": {"tool": args.tool_fa, "ours": args.ours_fa},
        "perplexity": {k: round(v, 4) for k, v in ppl.items()},
        "seconds_median": {k: round(v, 2) for k, v in med.items()},
        "seconds_all": {k: [round(x, 2) for x in v] for k, v in secs.items()},
        "rel_diff_gguf_ours_vs_tool": round(ppl["gguf_ours"] / ppl["gguf_tool"] - 1, 5),
        "rel_diff_hf_ours_vs_plain": round(ppl["hf_ours"] / ppl["hf_plain"] - 1, 7),
        "speed_ratio_gguf": round(med["gguf_tool"] / med["gguf_ours"], 3),
        "speed_ratio_hf": round(med["hf_plain"] / med["hf_ours"], 3),
    }
    if args.ppl_reference:
        out["rel_diff_gguf_ours_vs_reference"] = round(
            ppl["gguf_ours"] / ppl["gguf_reference"] - 1, 7
        )
        out["speed_ratio_gguf_reference"] = round(med["gguf_tool"] / med["gguf_reference"], 3)
    print(json.dumps(out, indent=2))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--perplexity", action="store_true", help="corpus perplexity arms instead")
    ap.add_argument("--ppl-ctx", type=int, default=512)
    ap.add_argument("--hf-ctx", type=int, default=128)
    ap.add_argument("--ppl-chars", type=int, default=40000)
    ap.add_argument("--ppl-reference", action="store_true", help="also the all-logits path")
    ap.add_argument("--tool-fa", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--ours-fa", choices=["auto", "on", "off"], default="off")
    args = ap.parse_args()
    if args.perplexity:
        return perplexity_main(args)

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
