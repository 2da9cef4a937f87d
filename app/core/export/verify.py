"""Check a GGUF export against its source model: top-1 agreement and a perplexity ratio.

The source (transformers, float32) and the GGUF (llama.cpp) are run over the
*same token ids* of a sample text. For every position we compare the most
likely next token (top-1 agreement) and we compute each model's perplexity on
the text; the ratio ``ppl(GGUF) / ppl(source)`` shows what quantization cost.
The tokenizers are compared separately (``tokenizer_match``).

Thresholds per type (``THRESHOLDS``, documented in docs/export.md) are
deliberately loose for low-bit types and strict for float types: a float
export that disagrees on any position is a broken conversion.
torch, transformers and llama_cpp are imported inside the functions.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Sample text used when the caller gives none: plain, varied English.
DEFAULT_SAMPLE_TEXT = (
    "The old farmer counts seven paper stars near the station every morning. "
    "Our teacher repairs the broken clock, and the young engineer explains the noisy engine. "
    "What is the capital of France? Paris is the capital of France. "
    "The train leaves at 10:45 from platform 7; a ticket costs 12.50 dollars. "
    "A curious child borrows two silver keys and hides them under the bridge in July. "
    "Plants turn light, water and air into sugar and oxygen, and gravity pulls objects "
    "toward each other."
)
#: Most token positions compared.
MAX_TOKENS = 256

#: Quant type -> (minimum top-1 agreement, maximum perplexity ratio).
THRESHOLDS: dict[str, tuple[float, float]] = {
    "F32": (1.00, 1.001),
    "F16": (1.00, 1.01),
    "BF16": (0.98, 1.02),
    "Q8_0": (0.95, 1.03),
    "Q6_K": (0.90, 1.05),
    "Q5_K_M": (0.85, 1.08),
    "Q5_K_S": (0.85, 1.08),
    "Q5_0": (0.85, 1.08),
    "Q5_1": (0.85, 1.08),
    "Q4_K_M": (0.75, 1.15),
    "Q4_K_S": (0.75, 1.15),
    "Q4_0": (0.75, 1.15),
    "Q4_1": (0.75, 1.15),
    "IQ4_NL": (0.75, 1.15),
    "IQ4_XS": (0.75, 1.15),
    "Q3_K_L": (0.65, 1.30),
    "Q3_K_M": (0.65, 1.30),
    "Q3_K_S": (0.65, 1.30),
    "Q2_K": (0.50, 1.60),
}


@dataclass
class Reference:
    """The source model's token ids and next-token logits over the sample text."""

    tokens: list[int]
    logits: Any  # numpy float32 array (positions, vocab)
    source_tokenizer: str
    text: str


@dataclass
class Verification:
    """The outcome of comparing one GGUF with its source."""

    quant: str
    positions: int
    top1_agreement: float
    ppl_source: float
    ppl_gguf: float
    ppl_ratio: float
    max_abs_logit_diff: float
    tokenizer_match: bool
    min_top1: float
    max_ratio: float
    passed: bool
    seconds: float
    #: Exact argmax agreement, without counting near-ties (shown for information).
    top1_strict: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{self.quant}: {verdict}: top-1 agreement {self.top1_agreement:.1%} "
            + (f"(exact {self.top1_strict:.1%}) " if self.top1_strict is not None else "")
            + f"(needs >= {self.min_top1:.0%}), perplexity ratio {self.ppl_ratio:.4f} "
            f"(needs < {self.max_ratio}) over {self.positions} positions"
        )


def thresholds(quant: str) -> tuple[float, float]:
    """(minimum top-1 agreement, maximum perplexity ratio) for a quant type."""
    return THRESHOLDS.get(quant.upper(), (0.75, 1.25))


#: Logit gap below which two candidate tokens count as tied in the source model,
#: by how much a type's rounding moves logits (f16: ~2e-3 measured on the tiny model).
TIE_TOLERANCE: dict[str, float] = {
    "F32": 1e-3,
    "F16": 1e-2,
    "BF16": 5e-2,
    "Q8_0": 5e-2,
    "Q6_K": 0.1,
}


def tie_tolerance(quant: str) -> float:
    """The near-tie logit gap for ``quant`` (coarser types tolerate more)."""
    q = quant.upper()
    if q in TIE_TOLERANCE:
        return TIE_TOLERANCE[q]
    if q.startswith(("Q5", "IQ4_XS")):
        return 0.15
    if q.startswith(("Q4", "IQ4")):
        return 0.25
    return 0.4


def source_reference(
    model_dir: Path, text: str | None = None, *, max_tokens: int = MAX_TOKENS
) -> Reference:
    """Tokenize ``text`` with the source tokenizer and run the HF model over it once."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = text or DEFAULT_SAMPLE_TEXT
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids: list[int] = list(tok(text)["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()  # type: ignore[no-untyped-call]
    ctx = int(getattr(model.config, "max_position_embeddings", 0) or max_tokens)
    ids = ids[: min(max_tokens, ctx)]
    if len(ids) < 2:
        raise ValueError("The sample text is too short to verify with (fewer than 2 tokens).")
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    logits = out.logits[0].float().numpy().astype(np.float32)
    del model
    return Reference(ids, logits, type(tok).__name__, text)


def gguf_logits(gguf: Path, tokens: list[int], *, threads: int = 0) -> Any:
    """llama.cpp's logits at every position of ``tokens``: a float32 array (positions, vocab)."""
    import os

    import numpy as np
    from llama_cpp import Llama

    n = len(tokens)
    llm = Llama(
        model_path=str(gguf),
        n_ctx=max(512, n + 16),
        n_batch=max(512, n),
        n_ubatch=max(512, n),
        logits_all=True,
        n_threads=threads or max(1, os.cpu_count() or 1),
        verbose=False,
    )
    try:
        llm.eval(tokens)
        scores = np.array(llm.scores[:n], dtype=np.float32)
    finally:
        llm.close()
    return scores


def gguf_tokenize(gguf: Path, text: str) -> list[int]:
    """llama.cpp's tokenization of ``text`` (BOS as the model's metadata says)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        return [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)]
    finally:
        llm.close()


def _log_softmax(x: Any) -> Any:
    import numpy as np

    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def perplexity(logits: Any, tokens: list[int]) -> float:
    """exp(mean negative log-likelihood of tokens[1:] given the logits at positions [:-1])."""
    import numpy as np

    lp = _log_softmax(logits[:-1].astype(np.float64))
    nll = -lp[np.arange(len(tokens) - 1), np.array(tokens[1:])]
    return float(math.exp(float(nll.mean())))


def compare(
    ref: Reference, logits: Any, quant: str, *, tokenizer_match: bool, seconds: float = 0.0
) -> Verification:
    """Score GGUF logits against the reference with the thresholds of ``quant``."""
    import numpy as np

    n = len(ref.tokens)
    vocab = min(ref.logits.shape[1], logits.shape[1])
    a = ref.logits[:n, :vocab]
    b = logits[:n, :vocab]
    strict = a.argmax(axis=-1) == b.argmax(axis=-1)
    # A near-tie in the source is not a disagreement: the GGUF's choice counts as the
    # same when the source scores it within the type's rounding error of its best.
    chosen = a[np.arange(n), b.argmax(axis=-1)]
    near_tie = (a.max(axis=-1) - chosen) <= tie_tolerance(quant)
    top1 = float((strict | near_tie).mean())
    ppl_a = perplexity(a, ref.tokens)
    ppl_b = perplexity(b, ref.tokens)
    ratio = ppl_b / ppl_a if ppl_a > 0 else math.inf
    min_top1, max_ratio = thresholds(quant)
    finite = bool(np.isfinite(b).all())
    passed = finite and top1 >= min_top1 and ratio < max_ratio
    return Verification(
        quant=quant.upper(),
        positions=n,
        top1_agreement=top1,
        top1_strict=float(strict.mean()),
        ppl_source=ppl_a,
        ppl_gguf=ppl_b,
        ppl_ratio=ratio,
        max_abs_logit_diff=float(np.abs(a - b).max()) if finite else math.inf,
        tokenizer_match=tokenizer_match,
        min_top1=min_top1,
        max_ratio=max_ratio,
        passed=passed,
        seconds=seconds,
    )


def verify_gguf(ref: Reference, gguf: Path, quant: str, *, threads: int = 0) -> Verification:
    """Run the GGUF over the reference tokens and compare (see :func:`compare`)."""
    t0 = time.perf_counter()
    logits = gguf_logits(gguf, ref.tokens, threads=threads)
    try:
        match = gguf_tokenize(gguf, ref.text)[: len(ref.tokens)] == ref.tokens
    except Exception:  # a tokenizer llama.cpp cannot run is reported, not fatal here
        match = False
    return compare(ref, logits, quant, tokenizer_match=match, seconds=time.perf_counter() - t0)
