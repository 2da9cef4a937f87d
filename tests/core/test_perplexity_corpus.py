"""Corpus perplexity's fast path equals the reference computation.

The reference is the library's earlier path, kept here: every position's logits
copied out and log-softmaxed in float64 (:class:`GGUFScorer` / :class:`HFScorer`
with :func:`llama_cpp_style_perplexity` / :func:`sliding_window_perplexity`). The
fast path asks only for the scored positions, scores several windows per forward
and computes the log-softmax in float32 with a float64 sum.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.errors import ConfigError
from app.core.eval.corpus import corpus_aggregate
from app.core.eval.perplexity import (
    GGUFCorpusScorer,
    GGUFScorer,
    HFCorpusScorer,
    HFScorer,
    corpus_spans,
    llama_cpp_style_perplexity,
    nll_f32,
    nll_f32_threads,
    sliding_window_perplexity,
)
from tests.support.models import SAMPLE_TEXTS

TEXT = " ".join(SAMPLE_TEXTS * 6)
GEMMA_TEXT = (
    "The history of the printing press begins in the fifteenth century, when movable type "
    "made books cheaper and faster to produce. Within a few decades, presses spread across "
    "Europe, and the number of printed works grew from a handful to many thousands. "
    "Scholars, merchants and ordinary readers gained access to texts that had been rare. "
    "Rivers carry sediment from the mountains to the sea, building deltas where they slow. "
    "Farmers learned long ago that these plains are fertile, and cities grew beside them. "
) * 8


def _ref_log_softmax_f64(logits: Any, targets: Any) -> np.ndarray:
    rows = np.asarray(logits, dtype=np.float64)
    m = rows.max(axis=1, keepdims=True)
    lse = np.log(np.exp(rows - m).sum(axis=1)) + m[:, 0]
    return rows[np.arange(len(rows)), np.asarray(targets)] - lse


def _fast_total(scorer: Any, spans: list[Any], per_call: int) -> tuple[float, int]:
    nll = 0.0
    for i in range(0, len(spans), per_call):
        nll += sum(scorer.score(spans[i : i + per_call]))
    return nll, sum(sp.n_scored for sp in spans)


def test_nll_f32_equals_float64_log_softmax() -> None:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((37, 50_000)) * 6).astype(np.float32)
    targets = rng.integers(0, 50_000, size=37)
    ref = -float(_ref_log_softmax_f64(logits, targets).sum())
    before = logits.copy()
    assert nll_f32(logits, targets) == pytest.approx(ref, rel=1e-6)
    assert np.array_equal(logits, before)  # the caller's rows are not modified
    assert nll_f32(logits[:0], []) == 0.0
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:  # rows split over threads: same sum
        assert nll_f32_threads(logits, targets, pool) == pytest.approx(ref, rel=1e-6)


def test_spans_cover_the_text_as_the_reference_does() -> None:
    tokens = list(range(1, 1001))
    ll = corpus_spans(tokens, context=100, method="llama_cpp", bos=0)
    assert len(ll) == 10 and all(sp.tokens[0] == 0 and sp.first == 50 for sp in ll)
    assert sum(sp.n_scored for sp in ll) == 10 * 49
    sl = corpus_spans(tokens, context=100, method="sliding")
    # windows side by side: each window's first token is context only (the HF guide)
    assert sum(sp.n_scored for sp in sl) == 10 * 99
    ov = corpus_spans(tokens, context=100, method="sliding", stride=40)
    assert sum(sp.n_scored for sp in ov) == 999  # overlapping: every token but the first
    with pytest.raises(ConfigError, match=r"needs at least 200 tokens.*has 199"):
        corpus_spans(tokens[:199], context=100)
    with pytest.raises(ConfigError, match="Unknown perplexity method"):
        corpus_spans(tokens, context=100, method="bogus")


def test_corpus_aggregate_is_the_ratio_of_sums_with_a_bootstrap_ci() -> None:
    nlls, counts = [10.0, 30.0, 20.0, 25.0], [10, 12, 8, 10]
    value, lo, hi = corpus_aggregate(nlls, counts, n_boot=500, seed=3)
    assert value == pytest.approx(math.exp(85.0 / 40.0))
    assert lo < value < hi
    assert corpus_aggregate(nlls, counts, n_boot=500, seed=3) == (value, lo, hi)
    assert corpus_aggregate(nlls, counts, n_boot=0, seed=3) == (value, value, value)


def test_hf_fast_path_equals_the_reference(tiny_llama_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    ref_scorer = HFScorer(model, tok)
    fast = HFCorpusScorer(model, tok)
    tokens = fast.tokenize(TEXT)
    assert len(tokens) > 4 * 64
    ref = llama_cpp_style_perplexity(ref_scorer, tokens, n_ctx=64)
    spans = corpus_spans(tokens, context=64, method="llama_cpp", bos=fast.bos_id)
    for per_call in (1, 3, len(spans)):  # one window per forward, or several in a batch
        nll, n = _fast_total(fast, spans, per_call)
        assert n == ref.n_tokens
        assert nll == pytest.approx(ref.nll, rel=1e-5)
    for stride in (64, 24):
        ref_s = sliding_window_perplexity(ref_scorer, tokens, context=64, stride=stride)
        spans = corpus_spans(tokens, context=64, method="sliding", stride=stride)
        nll, n = _fast_total(fast, spans, 4)
        assert n == ref_s.n_tokens
        assert math.exp(nll / n) == pytest.approx(ref_s.perplexity, rel=1e-5)


def test_gguf_fast_path_equals_the_reference(gemma_gguf: Path) -> None:
    ctx = 128
    ref_scorer = GGUFScorer(gemma_gguf, n_ctx=ctx, threads=2)
    try:
        tokens = ref_scorer.tokenize(GEMMA_TEXT)
        ref = llama_cpp_style_perplexity(ref_scorer, tokens, n_ctx=ctx)
    finally:
        ref_scorer.close()
    fast = GGUFCorpusScorer(gemma_gguf, context=ctx, threads=2)
    try:
        assert fast.tokenize(GEMMA_TEXT) == tokens
        spans = corpus_spans(tokens, context=ctx, method="llama_cpp", bos=fast.bos_id)
        assert len(spans) == ref.windows >= 4
        assert fast.n_seq > 1
        nll, n = _fast_total(fast, spans, fast.n_seq)
        assert n == ref.n_tokens
        # one decode of several windows gives each window what it gives alone
        alone = [fast.score([sp])[0] for sp in spans[:2]]
        assert fast.score(spans[:2]) == pytest.approx(alone, rel=1e-9)
    finally:
        fast.close()
    assert math.exp(nll / n) == pytest.approx(ref.perplexity, rel=1e-6)


def test_killed_run_resumes_after_the_stored_windows(workspace: Any, tiny_llama_dir: Path) -> None:
    import os
    import signal
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.core.eval.corpus import PerplexityConfig, submit_perplexity
    from app.core.eval.runner import EvalStore
    from app.core.jobs.store import JobService, JobState
    from app.core.models.registry import ModelRegistry
    from app.workers.supervisor import Supervisor

    text_file = Path(workspace.root) / "corpus.txt"
    text = " ".join(SAMPLE_TEXTS * 60)
    text_file.write_text(text, encoding="utf-8")
    model = ModelRegistry(workspace).import_path(tiny_llama_dir, copy=False).id
    cfg = PerplexityConfig(models=[model], text_path=str(text_file), n_ctx=16, threads=1)
    job = submit_perplexity(workspace, cfg)
    sup, jobs, store = Supervisor(workspace), JobService(workspace), EvalStore(workspace)
    sup.start(job.id)
    end = time.monotonic() + 120
    while len(store.done_indices(job.id, model)) < 16:
        assert time.monotonic() < end, jobs.log_tail(job.id)
        sup.pump()
        time.sleep(0.01)
    pid = jobs.get(job.id).pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    dead = sup.wait(job.id, timeout=60)
    assert dead.state in (JobState.FAILED, JobState.INTERRUPTED)
    before = store.done_indices(job.id, model)
    jobs.resume(job.id)
    sup.start(job.id)
    final = sup.wait(job.id, timeout=300)
    assert final.state == JobState.SUCCEEDED, jobs.log_tail(job.id)
    assert "already stored" in jobs.log_tail(job.id, 200)
    samples = store.samples(job.id)
    n_windows = len(samples)
    assert len(before) < n_windows and [s.idx for s in samples] == list(range(n_windows))

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    ref = llama_cpp_style_perplexity(HFScorer(hf, tok), HFScorer(hf, tok).tokenize(text), n_ctx=16)
    agg = store.aggregates(job.id)[model]["corpus_perplexity"]
    assert agg["n"] == ref.windows == n_windows
    assert agg["value"] == pytest.approx(ref.perplexity, rel=1e-5)
