"""GGUF models through llama.cpp (llama-cpp-python), imported only when a model loads."""

from __future__ import annotations

import codecs
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from app.core.infer.engines import (
    Chunk,
    ContextOverflowError,
    Engine,
    ModelLoadError,
    TokenLogprob,
    Usage,
    check_token_ids,
    log_normalizers,
    top_ids,
)
from app.core.infer.sampling import SamplingParams, StopBuffer

#: Context size used when the caller gives none (the model's own may be far larger
#: and its KV cache would take gigabytes).
DEFAULT_N_CTX = 4096
#: Bytes of logits one llama.cpp decode may return when scoring a prompt (``score_tokens``):
#: the positions per decode are this over the vocabulary's row size (128 for Gemma 3's 262k
#: tokens), at most n_batch. Fewer, larger decodes are faster (bench/logprobs.py).
SCORE_LOGITS_BYTES = 128 * 2**20


class LlamaEngine(Engine):
    """A GGUF model in an in-process ``llama_cpp.Llama``."""

    formats = ("gguf",)

    _llm: Any = None
    #: A second ``Llama`` in embedding mode, made on the first embeddings request.
    _embed_llm: Any = None
    #: GBNF grammar text constraining the next generations (None = free text).
    grammar: str | None = None

    def set_grammar(self, grammar: str | None) -> None:
        """Constrain generation to a GBNF grammar (e.g. JSON); None lifts the constraint."""
        if grammar is not None:
            from llama_cpp.llama_grammar import LlamaGrammar

            try:
                LlamaGrammar.from_string(grammar, verbose=False)
            except (ValueError, RuntimeError) as exc:
                raise ModelLoadError(f"Invalid grammar: {exc}") from exc
        self.grammar = grammar

    def load(self, path: Path) -> None:
        if not path.is_file():
            raise ModelLoadError(f"There is no GGUF file at {path}.")
        with path.open("rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ModelLoadError(f"{path} is not a GGUF file (bad magic).")
        from llama_cpp import Llama

        threads = self.options.n_threads
        try:
            self._llm = Llama(
                model_path=str(path),
                n_ctx=self.options.n_ctx or DEFAULT_N_CTX,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(
                f"llama.cpp could not load {path.name}: {exc}",
                "The file may be truncated or of an unsupported architecture.",
            ) from exc
        self.path = path

    def close(self) -> None:
        llm, self._llm = self._llm, None
        emb, self._embed_llm = self._embed_llm, None
        for m in (llm, emb):
            if m is not None:
                m.close()

    @property
    def llm(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (for benchmarks and tests)."""
        if self._llm is None:
            raise ModelLoadError("No model is loaded.")
        return self._llm

    @property
    def context_length(self) -> int:
        return int(self.llm.n_ctx())

    def _metadata(self) -> dict[str, str]:
        meta: dict[str, str] = getattr(self.llm, "metadata", None) or {}
        return meta

    def model_template(self) -> str | None:
        return self._metadata().get("tokenizer.chat_template") or None

    def architecture(self) -> str | None:
        return self._metadata().get("general.architecture")

    def special_tokens(self) -> tuple[str, str]:
        llm = self.llm

        def text(tok: int) -> str:
            if tok < 0:
                return ""
            return bytes(llm.detokenize([tok], special=True)).decode("utf-8", "replace")

        return text(llm.token_bos()), text(llm.token_eos())

    def embeddings(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text from llama.cpp in embedding mode.

        Embedding models (BERT-style GGUFs, nomic, bge...) declare their pooling
        in the file; for other models the hidden states are mean-pooled. The
        embedding context is a second ``Llama`` made on first use: prefer a small
        embedding model over a large chat model for this.
        """
        if self._embed_llm is None:
            import llama_cpp
            from llama_cpp import Llama

            declared = f"{self.architecture()}.pooling_type" in self._metadata()
            n = min(self.context_length, 2048)
            threads = self.options.n_threads
            try:
                self._embed_llm = Llama(
                    model_path=str(self.path),
                    embedding=True,
                    n_ctx=n,
                    n_batch=n,
                    n_ubatch=n,
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
                    if declared
                    else llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    n_threads=threads,
                    n_threads_batch=threads,
                    verbose=False,
                )
            except (ValueError, RuntimeError, OSError) as exc:
                raise ModelLoadError(
                    f"llama.cpp could not load {self.path} for embeddings: {exc}"
                ) from exc
        emb = self._embed_llm
        limit = int(emb.n_batch)
        for text in texts:
            n_tokens = len(emb.tokenize(text.encode("utf-8")))
            if n_tokens > limit:
                raise ContextOverflowError(n_tokens, limit)
        vectors = emb.embed(list(texts), normalize=False, truncate=False)
        return [[float(x) for x in v] for v in vectors]

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    @property
    def vocab_size(self) -> int:
        return int(self.llm.n_vocab())

    def token_bytes(self, token: int) -> bytes:
        return bytes(self.llm.detokenize([token]))

    def complete(
        self, prompt: str, params: SamplingParams, *, logprobs: int | None = None
    ) -> Iterator[Chunk]:
        return self.complete_tokens(self.prompt_tokens(prompt), params, logprobs=logprobs)

    def complete_tokens(
        self, tokens: Sequence[int], params: SamplingParams, *, logprobs: int | None = None
    ) -> Iterator[Chunk]:
        import llama_cpp

        llm = self.llm
        tokens = list(tokens)
        check_token_ids(tokens, self.vocab_size)
        n_ctx = self.context_length
        if len(tokens) >= n_ctx:
            raise ContextOverflowError(len(tokens), n_ctx)
        return self._generate(llm, llama_cpp, tokens, params, n_ctx, logprobs)

    def score_tokens(self, tokens: Sequence[int], top: int = 0) -> list[TokenLogprob]:
        """Evaluate ``tokens`` from an empty cache, asking llama.cpp for every position's
        logits, in decodes of at most SCORE_LOGITS_BYTES of logits (llama.cpp keeps an
        output buffer that size, instead of the n_ctx x vocabulary floats of a model
        loaded with ``logits_all``: 4 GB for Gemma 3 at 4096 tokens). The cache then
        holds the tokens, so a completion of the same tokens reuses it."""
        import numpy as np
        from llama_cpp._internals import LlamaBatch

        llm = self.llm
        tokens = list(tokens)
        n_vocab = self.vocab_size
        check_token_ids(tokens, n_vocab)
        n_ctx = self.context_length
        if len(tokens) > n_ctx:
            raise ContextOverflowError(len(tokens), n_ctx)
        step = max(16, min(int(llm.n_batch), SCORE_LOGITS_BYTES // (4 * n_vocab)))
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        out = [TokenLogprob(tokens[0], self.token_bytes(tokens[0]), None)]
        batch: Any = LlamaBatch(n_tokens=step, embd=0, n_seq_max=1, verbose=False)
        try:
            for start in range(0, len(tokens), step):
                part = tokens[start : start + step]
                batch.set_batch(part, n_past=start, logits_all=True)
                llm._ctx.decode(batch)
                llm.input_ids[start : start + len(part)] = part
                llm.n_tokens = start + len(part)
                rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(part), n_vocab))
                # Row j predicts the token after part[j]; the last row of the last part
                # predicts past the prompt and is not needed.
                nxt = tokens[start + 1 : start + 1 + len(part)]
                if not nxt:
                    break
                norms = log_normalizers(rows[: len(nxt)])
                out.extend(
                    self._token_logprob(rows[j], norms[j], t, top) for j, t in enumerate(nxt)
                )
        except BaseException:
            llm.reset()
            raise
        finally:
            batch.close()
        # The last position's logits came from a batch: a completion re-evaluates the
        # last token alone (as without scoring), so seeded texts do not change.
        llm._requires_eval = True
        return out

    def _token_logprob(self, logits: Any, norm: float, token: int, top: int) -> TokenLogprob:
        """``token``'s entry from one position's raw logits and their log-normalizer."""
        alts = tuple(
            (i, self.token_bytes(i), float(logits[i]) - norm) for i in top_ids(logits, top)
        )
        return TokenLogprob(token, self.token_bytes(token), float(logits[token]) - norm, alts)

    def _generate(
        self,
        llm: Any,
        lib: Any,
        tokens: Sequence[int],
        params: SamplingParams,
        n_ctx: int,
        logprobs: int | None = None,
    ) -> Iterator[Chunk]:
        import numpy as np

        room = n_ctx - len(tokens)
        max_tokens = min(params.max_tokens or room, room)
        llm.set_seed(params.seed if params.seed is not None else random.randrange(2**32))
        _prefill(llm, tokens)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopBuffer(params.stop)
        vocab = llm._model.vocab
        n_vocab = int(llm.n_vocab())
        n_out = 0
        finish = "length"
        hit = False
        pending: list[TokenLogprob] = []
        extra: dict[str, Any] = {}
        if self.grammar is not None:
            from llama_cpp.llama_grammar import LlamaGrammar

            extra["grammar"] = LlamaGrammar.from_string(self.grammar, verbose=False)
        for token in llm.generate(
            tokens,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            temp=params.temperature,
            repeat_penalty=params.repeat_penalty,
            **extra,
        ):
            if lib.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            n_out += 1
            if logprobs is not None:
                # The raw logits the sampler just read (it works on a copy).
                row = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(1, n_vocab))
                norm = float(log_normalizers(row)[0])
                pending.append(self._token_logprob(row[0], norm, token, logprobs))
            text = decoder.decode(bytes(llm.detokenize([token])))
            out, hit = stops.feed(text)
            if hit:
                if out:
                    yield Chunk(out, logprobs=tuple(pending))
                    pending.clear()
                finish = "stop"
                break
            if out:
                yield Chunk(out, logprobs=tuple(pending))
                pending.clear()
            if n_out >= max_tokens:
                break
        # After a stop string, what was held back is the stop string itself: drop it.
        tail = "" if hit else stops.flush() + decoder.decode(b"", final=True)
        yield Chunk(
            tail, finish_reason=finish, usage=Usage(len(tokens), n_out), logprobs=tuple(pending)
        )


def _prefill(llm: Any, tokens: Sequence[int]) -> None:
    """Evaluate all prompt tokens but the last, reusing the KV cache's common prefix.

    ``Llama.generate`` then always evaluates the last prompt token on its own. The
    logits of a token evaluated alone differ slightly from those of the same token
    at the end of a batch, so without this a seeded request gave one text on a
    fresh context and another when the prompt was cached.
    """
    cached = llm.input_ids[: llm.n_tokens]
    n = 0
    for a, b in zip(cached, tokens[:-1], strict=False):
        if a != b:
            break
        n += 1
    if n >= len(tokens) - 1:
        return
    if n == 0 or not llm._ctx.kv_cache_seq_rm(-1, n, -1):
        llm.reset()
        n = 0
    else:
        llm.n_tokens = n
    llm.eval(tokens[n:-1])
