"""Perplexity against references, and multiple-choice accuracy on a constructed case.

* HF: our sliding window equals the loop of the Hugging Face guide "Perplexity of
  fixed-length models" (labels -100 on the overlap, loss x scored tokens), written
  here with plain transformers.
* GGUF: our ``llama_cpp_style_perplexity`` (through llama-cpp-python's high-level
  ``Llama.eval`` with ``logits_all``) equals, within 0.5%, a reimplementation of
  llama.cpp's tools/perplexity/perplexity.cpp ``perplexity()`` written here on
  llama.cpp's low-level C API (llama_tokenize with BOS, a llama_batch per chunk
  with the first token replaced by BOS and logits requested from n_ctx/2 on,
  llama_decode, llama_get_logits_ith, log-softmax in float64).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.eval.perplexity import (
    GGUFScorer,
    HFScorer,
    continuation_logprob,
    llama_cpp_style_perplexity,
    text_perplexity,
)
from app.core.eval.runner import EvalConfig, score_sample
from tests.support.models import SAMPLE_TEXTS

TEXT = " ".join(SAMPLE_TEXTS * 3)
GEMMA_TEXT = (
    "The history of the printing press begins in the fifteenth century, when movable type "
    "made books cheaper and faster to produce. Within a few decades, presses spread across "
    "Europe, and the number of printed works grew from a handful to many thousands. "
    "Scholars, merchants and ordinary readers gained access to texts that had been rare. "
) * 6


def _hf_guide_perplexity(model: Any, ids: Any, max_length: int, stride: int) -> float:
    import torch

    seq_len = ids.size(1)
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        n = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * n
        n_tokens += n
        prev_end = end
        if end == seq_len:
            break
    return math.exp(nll_sum / n_tokens)


def test_hf_perplexity_equals_plain_transformers(tiny_llama_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    ids = tok(TEXT, return_tensors="pt").input_ids
    assert ids.size(1) > 200
    scorer = HFScorer(model, tok)
    for ctx, stride in ((64, 32), (64, 64), (100, 37)):
        ours = text_perplexity(scorer, TEXT, context=ctx, stride=stride)
        ref = _hf_guide_perplexity(model, ids, ctx, stride)
        assert ours.perplexity == pytest.approx(ref, rel=1e-5)
        if stride < ctx:  # with stride == context each window's first token is context only
            assert ours.n_tokens == ids.size(1) - 1


def _llama_cpp_reference(path: Path, text: str, n_ctx: int) -> float:
    """perplexity.cpp's perplexity() on the low-level API (n_seq = 1, n_batch = n_ctx)."""
    import llama_cpp as L

    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    model = L.llama_model_load_from_file(str(path).encode(), mparams)
    cparams = L.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = n_ctx
    cparams.n_ubatch = n_ctx
    cparams.n_threads = 2
    cparams.n_threads_batch = 2
    ctx = L.llama_init_from_model(model, cparams)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    raw = text.encode()
    buf = (L.llama_token * (len(raw) + 16))()
    n = L.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)
    tokens = list(buf[:n])
    add_bos = L.llama_vocab_get_add_bos(vocab)
    first = n_ctx // 2
    n_chunk = len(tokens) // n_ctx
    batch = L.llama_batch_init(n_ctx, 0, 1)
    nll, count = 0.0, 0
    try:
        for i in range(n_chunk):
            start = i * n_ctx
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            batch.n_tokens = n_ctx
            for k in range(n_ctx):
                tok = tokens[start + k]
                if k == 0 and add_bos:
                    tok = L.llama_vocab_bos(vocab)
                batch.token[k] = tok
                batch.pos[k] = k
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = 1 if k >= first else 0
            assert L.llama_decode(ctx, batch) == 0
            for j in range(first, n_ctx - 1):
                ptr = L.llama_get_logits_ith(ctx, j)
                logits = np.ctypeslib.as_array(
                    ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)
                ).astype(np.float64)
                mx = logits.max()
                lse = mx + math.log(np.exp(logits - mx).sum())
                nll -= logits[tokens[start + j + 1]] - lse
                count += 1
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)
    return math.exp(nll / count)


def test_gguf_perplexity_matches_llama_cpp(gemma_gguf: Path) -> None:
    n_ctx = 128
    scorer = GGUFScorer(gemma_gguf, n_ctx=n_ctx, threads=2)
    try:
        ours = text_perplexity(scorer, GEMMA_TEXT, context=n_ctx, mode="llama_cpp")
        sliding = text_perplexity(scorer, GEMMA_TEXT, context=n_ctx, stride=64)
    finally:
        scorer.close()
    ref = _llama_cpp_reference(gemma_gguf, GEMMA_TEXT, n_ctx)
    assert ours.windows >= 2 and ours.n_tokens == ours.windows * (n_ctx - 1 - n_ctx // 2)
    assert abs(ours.perplexity - ref) / ref < 0.005, (ours.perplexity, ref)
    # a real model on repeated English text: low, finite perplexity in both modes
    assert 1.0 < sliding.perplexity < 50


class _ToyScorer:
    """Characters as tokens; the model strongly prefers the next letter of 'paris'."""

    context_length = 256
    bos_id = 0

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return ([0] if add_special else []) + [ord(c) for c in text]

    def token_logprobs(self, tokens: Sequence[int]) -> Any:
        text = "".join(chr(t) for t in tokens[1:])
        out = []
        for i in range(1, len(tokens)):
            ch = chr(tokens[i])
            good = ch in "paris " or text[: i - 1].endswith("capital:")
            out.append(math.log(0.5) if good else math.log(0.01))
        return np.asarray(out)


class _ToyRunner:
    scorer = _ToyScorer()

    def generate(self, prompt: str) -> tuple[str, int, float]:
        raise AssertionError("multiple choice must not generate")


def test_multiple_choice_accuracy_on_a_constructed_case() -> None:
    s = _ToyScorer()
    lp_good, n_good = continuation_logprob(s, "capital:", " paris")
    lp_bad, n_bad = continuation_logprob(s, "capital:", " berlin")
    assert n_good == 6 and n_bad == 7 and lp_good > lp_bad
    cfg = EvalConfig(
        models=["toy"],
        dataset="d",
        input_column="q",
        reference_column="answer",
        choices_column="choices",
        metrics=["mc_accuracy"],
    )
    assert not cfg.generates
    right = score_sample(
        cfg,
        _ToyRunner(),
        {"q": "capital:", "choices": ["berlin", "paris"], "answer": "paris"},
        0,
        "r",
        "toy",
    )
    wrong = score_sample(
        cfg,
        _ToyRunner(),
        {"q": "capital:", "choices": '["berlin", "paris"]', "answer": 0},
        1,
        "r",
        "toy",
    )
    assert right.scores["mc_accuracy"] == 1.0 and right.prediction == "paris"
    assert wrong.scores["mc_accuracy"] == 0.0
    bad = score_sample(
        cfg, _ToyRunner(), {"q": "capital:", "choices": ["a", "b"], "answer": "zzz"}, 2, "r", "toy"
    )
    assert bad.scores["mc_accuracy"] is None and bad.error and "none of the choices" in bad.error


def test_llama_cpp_style_needs_two_contexts_of_text() -> None:
    from app.core.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 256 tokens"):
        llama_cpp_style_perplexity(_ToyScorer(), list(range(100)), n_ctx=128)


def test_evaluate_checkpoints_per_step(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from app.core.eval.checkpoints import evaluate_checkpoints, find_checkpoints

    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ck = tmp_path / "run" / "checkpoints" / "checkpoint-10"
    peft_model.save_pretrained(str(ck))  # LoRA B starts at zero: same outputs as the base
    (tmp_path / "run" / "checkpoints" / "checkpoint-5").mkdir()  # no adapter: skipped
    found = find_checkpoints(tmp_path / "run")
    assert found == [(10, ck)]
    steps: list[int] = []
    rows = evaluate_checkpoints(
        tiny_llama_dir,
        found,
        list(SAMPLE_TEXTS),
        context=64,
        stride=32,
        threads=2,
        on_step=lambda s, p: steps.append(s),
    )
    assert [r["step"] for r in rows] == [0, 10] == steps
    assert rows[1]["perplexity"] == pytest.approx(rows[0]["perplexity"], rel=1e-5)
