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


# --------------------------------------------------------------------------- corpus scoring
#
# Corpus perplexity (``demoai eval perplexity``) scores many windows of a long text.
# The fast path asks the model only for the logits of the scored positions, scores
# several windows per forward pass (one llama.cpp sequence or one batch row each),
# computes the log-softmax in float32 and accumulates the negative log-likelihood in
# float64, as llama.cpp's ``llama-perplexity`` does.


@dataclass(frozen=True)
class Span:
    """One window of a corpus: ``tokens``; positions ``first .. len-2`` are scored.

    Position ``k`` scores ``tokens[k + 1]`` given ``tokens[:k + 1]``.
    """

    tokens: tuple[int, ...]
    first: int
    start: int  # offset of tokens[0] in the text's token list

    @property
    def n_scored(self) -> int:
        return len(self.tokens) - 1 - self.first


def corpus_spans(
    tokens: Sequence[int],
    *,
    context: int,
    method: str = "llama_cpp",
    bos: int | None = None,
    stride: int | None = None,
) -> list[Span]:
    """The windows :func:`llama_cpp_style_perplexity` / :func:`sliding_window_perplexity` score.

    Both need at least two contexts of tokens here (a confidence interval over
    windows needs more than one window).
    """
    if context < 4:
        raise ConfigError("The context must be at least 4 tokens.")
    if len(tokens) < 2 * context:
        raise ConfigError(
            f"Corpus perplexity with a context of {context} tokens needs at least "
            f"{2 * context} tokens (two contexts); the text has {len(tokens)}.",
            "Use a longer text or a smaller context (--n-ctx).",
        )
    spans: list[Span] = []
    if method == "llama_cpp":
        first = context // 2
        for i in range(len(tokens) // context):
            chunk = list(tokens[i * context : (i + 1) * context])
            if bos is not None:
                chunk[0] = bos
            spans.append(Span(tuple(chunk), first, i * context))
        return spans
    if method == "sliding":
        stride = stride or context
        if not 0 < stride <= context:
            raise ConfigError("The stride must be between 1 and the context.")
        n, prev_end = len(tokens), 0
        for begin in range(0, n, stride):
            end = min(begin + context, n)
            window = tuple(tokens[begin:end])
            first_target = max(len(window) - (end - prev_end), 1)
            if len(window) >= 2 and first_target < len(window):
                spans.append(Span(window, first_target - 1, begin))
            prev_end = end
            if end == n:
                break
        return spans
    raise ConfigError(f"Unknown perplexity method '{method}'.", "Use 'llama_cpp' or 'sliding'.")


def nll_f32(logits: npt.NDArray[np.float32], targets: Sequence[int]) -> float:
    """Summed ``-log softmax(logits[i])[targets[i]]``: float32 rows, a float64 sum.

    A few rows at a time (they stay in cache); the array is not modified.
    """
    tgt = np.asarray(targets, dtype=np.int64)
    rows_n = len(tgt)
    if rows_n == 0:
        return 0.0
    width = logits.shape[1]
    block = max(1, min(rows_n, (1 << 20) // max(width, 1)))  # ~4 MB of float32 per block
    buf = np.empty((block, width), dtype=np.float32)
    total = 0.0
    for s in range(0, rows_n, block):
        rows = logits[s : s + block]
        b = len(rows)
        work = buf[:b]
        m = rows.max(axis=1)
        np.subtract(rows, m[:, None], out=work)
        np.exp(work, out=work)
        lse = np.log(work.sum(axis=1, dtype=np.float64)) + m.astype(np.float64)
        picked = rows[np.arange(b), tgt[s : s + b]].astype(np.float64)
        total += float((lse - picked).sum())
    return total


def nll_f32_threads(logits: npt.NDArray[np.float32], targets: Sequence[int], pool: Any) -> float:
    """:func:`nll_f32` with the rows split over ``pool``'s threads (numpy releases the GIL)."""
    workers = int(getattr(pool, "_max_workers", 1)) if pool is not None else 1
    n = len(targets)
    if workers <= 1 or n < 16:
        return nll_f32(logits, targets)
    step = -(-n // workers)
    parts = [
        pool.submit(nll_f32, logits[s : s + step], targets[s : s + step]) for s in range(0, n, step)
    ]
    return float(sum(f.result() for f in parts))


class GGUFCorpusScorer:
    """Scores :class:`Span` lists with llama.cpp: ``n_seq`` windows per decode.

    Its own context of ``n_seq`` sequences of ``context`` cells, logits requested
    only for the scored positions. ``n_seq = max(1, 512 // context)`` windows go in
    one decode, as one micro-batch: a window cut across micro-batches (what
    ``llama-perplexity``'s 2048-token batch does) changes the result in the fourth
    digit, so every window is evaluated whole, as :class:`GGUFScorer` does. Flash attention is off by default: llama.cpp's CPU flash
    attention accumulates in half precision and moves Gemma 3's perplexity by up to
    1% (measured at n_ctx 512); off, the values equal :class:`GGUFScorer`'s. ``None``
    lets llama.cpp decide (as ``llama-perplexity -fa auto``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        context: int,
        threads: int = 2,
        n_seq: int | None = None,
        flash_attn: bool | None = False,
    ) -> None:
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose

        set_verbose(False)

        from app.core.infer.engines import ModelLoadError

        self.path = Path(path)
        self.context = int(context)
        self.n_seq = int(n_seq or max(1, 512 // self.context))
        self._lib = llama_cpp
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._pool: Any = None
        try:
            mparams = llama_cpp.llama_model_default_params()
            self._model = _internals.LlamaModel(
                path_model=str(self.path), params=mparams, verbose=False
            )
            train_ctx = int(self._model.n_ctx_train())
            if train_ctx > 0 and self.context > train_ctx:
                raise ConfigError(
                    f"A context of {self.context} tokens is more than the model's {train_ctx}."
                )
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = self.context * self.n_seq
            cparams.n_batch = self.context * self.n_seq
            cparams.n_ubatch = cparams.n_batch  # whole windows per micro-batch
            cparams.n_seq_max = self.n_seq
            cparams.n_threads = threads
            cparams.n_threads_batch = threads
            cparams.no_perf = True
            if flash_attn is not None:
                cparams.flash_attn_type = (
                    llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
                    if flash_attn
                    else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
                )
            self._ctx = _internals.LlamaContext(model=self._model, params=cparams, verbose=False)
            self._batch = llama_cpp.llama_batch_init(self.context * self.n_seq, 0, 1)
        except (ValueError, RuntimeError, OSError) as exc:
            self.close()
            raise ModelLoadError(f"llama.cpp could not load {self.path.name}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self.n_vocab = int(self._model.n_vocab())
        if threads > 1:  # the log-softmax runs on as many threads as the model, as the tool's
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ppl")

    def close(self) -> None:
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown(wait=True)
        batch, self._batch = self._batch, None
        if batch is not None:
            self._lib.llama_batch_free(batch)
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.close()
        model, self._model = self._model, None
        if model is not None:
            model.close()

    @property
    def bos_id(self) -> int | None:
        if not bool(self._model.add_bos_token()):
            return None
        bos = int(self._model.token_bos())
        return bos if bos >= 0 else None

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return list(self._model.tokenize(text.encode("utf-8"), add_special, False))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return bytes(self._model.detokenize(list(tokens))).decode("utf-8", "replace")

    def score(self, spans: Sequence[Span]) -> list[float]:
        """Summed negative log-likelihood of each span's scored tokens (up to n_seq spans)."""
        if len(spans) > self.n_seq:
            raise ValueError(f"at most {self.n_seq} spans per call")
        b = self._batch
        n = 0
        firsts: list[int] = []
        for seq, sp in enumerate(spans):
            if len(sp.tokens) > self.context:
                raise ConfigError(f"A window of {len(sp.tokens)} tokens exceeds the context.")
            for k, tok in enumerate(sp.tokens):
                b.token[n] = tok
                b.pos[n] = k
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq
                b.logits[n] = k >= sp.first and k < len(sp.tokens) - 1
                if k == sp.first:
                    firsts.append(n)
                n += 1
        b.n_tokens = n
        self._ctx.kv_cache_clear()
        rc = self._lib.llama_decode(self._ctx.ctx, b)
        if rc != 0:
            raise ConfigError(
                f"llama.cpp could not evaluate the text (llama_decode returned {rc})."
            )
        out: list[float] = []
        for sp, idx in zip(spans, firsts, strict=True):
            ptr = self._lib.llama_get_logits_ith(self._ctx.ctx, idx)
            rows = np.ctypeslib.as_array(ptr, shape=(sp.n_scored, self.n_vocab))
            out.append(nll_f32_threads(rows, sp.tokens[sp.first + 1 :], self._pool))
        return out


class HFCorpusScorer:
    """Scores :class:`Span` lists with a transformers causal LM, several windows per forward.

    Windows of equal length go in one batch; the model is asked for the logits of
    the last ``len - first`` positions only (``logits_to_keep``) when it supports it.
    """

    def __init__(
        self, model: Any, tokenizer: Any, *, logits_budget: int = 256 << 20, max_batch: int = 16
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.logits_budget = logits_budget
        self.max_batch = max_batch  # progress and cancel between batches
        cfg = getattr(model, "config", None)
        self.n_vocab = int(getattr(cfg, "vocab_size", 0) or len(tokenizer))
        self.context_limit = int(getattr(cfg, "max_position_embeddings", 0) or 0)
        self._keep_ok = True

    @property
    def bos_id(self) -> int | None:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return int(bos) if bos is not None else None

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def detokenize(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=True))

    def batch_size(self, span: Span) -> int:
        """How many windows like ``span`` fit the logits budget in one forward."""
        per = max(1, (len(span.tokens) - span.first) * self.n_vocab * 4 * 2)
        return max(1, min(self.max_batch, self.logits_budget // per))

    def score(self, spans: Sequence[Span]) -> list[float]:
        import torch

        out: list[float] = [0.0] * len(spans)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, sp in enumerate(spans):
            groups.setdefault((len(sp.tokens), sp.first), []).append(i)
        device = next(self.model.parameters()).device
        for (length, first), idxs in groups.items():
            ids = torch.tensor([spans[i].tokens for i in idxs], dtype=torch.long, device=device)
            keep = length - first
            with torch.inference_mode():
                logits = None
                if self._keep_ok:
                    try:
                        logits = self.model(input_ids=ids, logits_to_keep=keep).logits
                    except TypeError:
                        self._keep_ok = False
                if logits is None:
                    logits = self.model(input_ids=ids).logits
                logits = logits[:, -keep:-1].float()
                targets = ids[:, first + 1 :]
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
                ).view(len(idxs), -1)
                sums = nll.double().sum(dim=1).cpu().tolist()
            for i, v in zip(idxs, sums, strict=True):
                out[i] = float(v)
        return out
