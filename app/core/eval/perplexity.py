"""Token log-likelihoods and perplexity for HF (transformers) and GGUF (llama.cpp) models.

A :class:`TokenScorer` turns a token sequence into the log-probability of each
token given the ones before it. On top of that:

* :func:`sliding_window_perplexity`: the Hugging Face "perplexity of fixed-length
  models" recipe: windows of ``context`` tokens moved by ``stride``; each token is
  scored once, in the first window that reaches it (the overlap is context only,
  labels -100 in the HF guide);
* :func:`llama_cpp_style_perplexity`: exactly what llama.cpp's ``llama-perplexity``
  tool computes: the text (with BOS) cut into chunks of ``n_ctx`` tokens, the first
  token of each chunk replaced by BOS, and only the second half of each chunk
  (positions ``n_ctx/2 .. n_ctx-2`` predicting the next token) scored;
* :func:`continuation_logprob`: summed log-likelihood of a continuation given a
  prompt (multiple-choice accuracy, perplexity of a reference).

torch / llama_cpp are imported inside the functions that need them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from app.core.errors import ConfigError

FloatArray = npt.NDArray[np.float64]


class TokenScorer(Protocol):
    """Something that scores token sequences with a causal language model."""

    @property
    def context_length(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]: ...

    def token_logprobs(self, tokens: Sequence[int]) -> FloatArray:
        """``out[i] = log p(tokens[i+1] | tokens[:i+1])``; length ``len(tokens) - 1``."""
        ...


@dataclass(frozen=True)
class PerplexityResult:
    """exp(nll / n_tokens) over the tokens that were scored."""

    perplexity: float
    nll: float
    n_tokens: int
    windows: int
    mode: str
    context: int
    stride: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _log_softmax_gather(logits: npt.NDArray[Any], targets: Sequence[int]) -> FloatArray:
    """log softmax(logits[i])[targets[i]] for each row, in float64, a block of rows at a time."""
    out = np.empty(len(targets), dtype=np.float64)
    block = 32
    tgt = np.asarray(targets, dtype=np.int64)
    for s in range(0, len(tgt), block):
        rows = np.asarray(logits[s : s + block], dtype=np.float64)
        m = rows.max(axis=1, keepdims=True)
        lse = np.log(np.exp(rows - m).sum(axis=1)) + m[:, 0]
        out[s : s + len(rows)] = rows[np.arange(len(rows)), tgt[s : s + block]] - lse
    return out


class HFScorer:
    """Scores with a transformers causal LM (or a peft model) and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, context_length: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        limit = int(getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 2048)
        self._ctx = min(limit, context_length) if context_length else limit

    @property
    def context_length(self) -> int:
        return self._ctx

    @property
    def bos_id(self) -> int | None:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return int(bos) if bos is not None else None

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def token_logprobs(self, tokens: Sequence[int]) -> FloatArray:
        import torch

        if len(tokens) < 2:
            return np.zeros(0, dtype=np.float64)
        device = next(self.model.parameters()).device
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            picked = logp.gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1)
        return picked.double().cpu().numpy()


class GGUFScorer:
    """Scores with a llama.cpp model opened with ``logits_all=True`` (its own context)."""

    def __init__(self, path: str | Path, *, n_ctx: int = 2048, threads: int = 2) -> None:
        from llama_cpp import Llama

        self.path = Path(path)
        try:
            self.llm: Any = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=True,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            from app.core.infer.engines import ModelLoadError

            raise ModelLoadError(f"llama.cpp could not load {self.path.name}: {exc}") from exc

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()

    @property
    def context_length(self) -> int:
        return int(self.llm.n_ctx())

    @property
    def bos_id(self) -> int | None:
        bos = int(self.llm.token_bos())
        return bos if bos >= 0 else None

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=False))

    def token_logprobs(self, tokens: Sequence[int]) -> FloatArray:
        if len(tokens) < 2:
            return np.zeros(0, dtype=np.float64)
        if len(tokens) > self.context_length:
            raise ConfigError(
                f"{len(tokens)} tokens do not fit the scoring context of {self.context_length}."
            )
        llm = self.llm
        llm.reset()
        llm.eval(list(tokens))
        return _log_softmax_gather(llm.scores[: len(tokens) - 1], list(tokens[1:]))


def sliding_window_perplexity(
    scorer: TokenScorer, tokens: Sequence[int], *, context: int, stride: int | None = None
) -> PerplexityResult:
    """Perplexity of ``tokens`` with windows of ``context`` tokens moved by ``stride``.

    As the HF guide: window ``[begin, begin+context)``; the targets are the tokens
    not scored by an earlier window (the rest is context, labels -100); the first
    token of the text is never a target.
    """
    stride = stride or context
    if context < 2 or not 0 < stride <= context:
        raise ConfigError("Perplexity needs context >= 2 and 0 < stride <= context.")
    if context > scorer.context_length:
        raise ConfigError(
            f"A context of {context} tokens is more than the model's {scorer.context_length}."
        )
    n = len(tokens)
    nll, count, windows, prev_end = 0.0, 0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        trg_len = end - prev_end  # tokens not scored yet
        window = tokens[begin:end]
        if len(window) >= 2:
            lp = scorer.token_logprobs(window)  # lp[i] scores window[i+1]
            first_target = max(len(window) - trg_len, 1)
            nll -= float(lp[first_target - 1 :].sum())
            count += len(window) - first_target
            windows += 1
        prev_end = end
        if end == n:
            break
    if count == 0:
        raise ConfigError("The text is too short to compute a perplexity (fewer than 2 tokens).")
    return PerplexityResult(math.exp(nll / count), nll, count, windows, "sliding", context, stride)


def llama_cpp_style_perplexity(
    scorer: TokenScorer, tokens: Sequence[int], *, n_ctx: int
) -> PerplexityResult:
    """llama.cpp ``perplexity`` (tools/perplexity/perplexity.cpp, ``perplexity()``).

    ``tokens`` should be the text tokenized with BOS, as the tool does. Chunks of
    ``n_ctx`` tokens (the remainder is dropped); when the model uses a BOS token the
    first token of each chunk is replaced by it; positions ``first = n_ctx // 2`` to
    ``n_ctx - 2`` of each chunk are scored against the next token.
    """
    if len(tokens) < 2 * n_ctx:
        raise ConfigError(
            f"llama.cpp-style perplexity needs at least {2 * n_ctx} tokens "
            f"(2 x context); the text has {len(tokens)}."
        )
    bos = scorer.bos_id
    first = n_ctx // 2
    n_chunk = len(tokens) // n_ctx
    nll, count = 0.0, 0
    for i in range(n_chunk):
        chunk = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        lp = scorer.token_logprobs(chunk)
        nll -= float(lp[first : n_ctx - 1].sum())
        count += n_ctx - 1 - first
    return PerplexityResult(math.exp(nll / count), nll, count, n_chunk, "llama_cpp", n_ctx, n_ctx)


def text_perplexity(
    scorer: TokenScorer,
    text: str,
    *,
    context: int,
    stride: int | None = None,
    mode: str = "sliding",
) -> PerplexityResult:
    """Perplexity of ``text`` (tokenized with BOS) in ``mode`` 'sliding' or 'llama_cpp'."""
    tokens = scorer.tokenize(text, add_special=True)
    if mode == "sliding":
        return sliding_window_perplexity(scorer, tokens, context=context, stride=stride)
    if mode == "llama_cpp":
        return llama_cpp_style_perplexity(scorer, tokens, n_ctx=context)
    raise ConfigError(f"Unknown perplexity mode '{mode}'.", "Use 'sliding' or 'llama_cpp'.")


def continuation_logprob(scorer: TokenScorer, prompt: str, continuation: str) -> tuple[float, int]:
    """(summed log-likelihood, token count) of ``continuation`` right after ``prompt``.

    The split follows the tokenization of the whole text where the prompt's tokens
    are a prefix of it (so a word is not cut in two), else the two are tokenized apart.
    """
    ctx = scorer.tokenize(prompt, add_special=True)
    whole = scorer.tokenize(prompt + continuation, add_special=True)
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        cont = whole[len(ctx) :]
    else:
        cont = scorer.tokenize(continuation, add_special=False)
    if not cont:
        return 0.0, 0
    tokens = ctx + cont
    limit = scorer.context_length
    if len(tokens) > limit:  # keep the end: the continuation and the nearest context
        tokens = tokens[-limit:]
    lp = scorer.token_logprobs(tokens)
    return float(lp[-len(cont) :].sum()), len(cont)
