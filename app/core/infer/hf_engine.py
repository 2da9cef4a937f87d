"""HF model folders (safetensors only) and LoRA adapters through transformers + peft.

torch, transformers and peft are imported only when a model loads. Weights are
read from safetensors only: pickle files (``*.bin``, ``*.pt``) can run code and
are never loaded.
"""

from __future__ import annotations

import json
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

#: Tokens of context decoded before a token to read its text (a SentencePiece token's
#: leading space shows only after another token).
_PIECE_CONTEXT = 6

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def _has_safetensors(folder: Path, stem: str) -> bool:
    return any(folder.glob(f"{stem}*.safetensors"))


class HFEngine(Engine):
    """A transformers causal LM (optionally with a LoRA adapter) on CPU or the default device."""

    formats = ("hf", "lora")
    supports_embeddings = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None
        self._tok: Any = None
        self._ctx_len = 0
        self.adapter_path: Path | None = None
        self.base_path: Path | None = None

    # -- loading -----------------------------------------------------------------
    def _resolve(self, path: Path) -> tuple[Path, Path | None]:
        """(base model folder, adapter folder or None)."""
        if not path.is_dir():
            raise ModelLoadError(f"There is no model folder at {path}.")
        cfg = path / "adapter_config.json"
        if not cfg.is_file():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{path} has no config.json: it is not a model folder.")
            return path, None
        if not _has_safetensors(path, "adapter_model"):
            raise ModelLoadError(
                f"The adapter in {path} has no adapter_model.safetensors.",
                "Pickle adapters (.bin) are not loaded; re-save it with safetensors.",
            )
        base = self.options.base_path
        if base is None:
            try:
                name = json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"Cannot read {cfg}: {exc}.") from exc
            if not name:
                raise ModelLoadError(f"The adapter in {path} does not name its base model.")
            base = Path(name)
            if not base.is_absolute():
                base = (path / base) if (path / base).is_dir() else base
        if not base.is_dir():
            raise ModelLoadError(
                f"The adapter's base model {base} is not a local folder.",
                "Import the base model first, or give its folder as the base path.",
            )
        return base, path

    def load(self, path: Path) -> None:
        base, adapter = self._resolve(path)
        if not _has_safetensors(base, "model"):
            pickles = [
                p.name for p in base.iterdir() if p.suffix in (".bin", ".pt", ".ckpt", ".pth")
            ]
            raise ModelLoadError(
                f"{base} has no safetensors weights"
                + (f" (only pickle files: {', '.join(sorted(pickles))})" if pickles else "")
                + ".",
                "DemoAI loads only safetensors: pickle files can run code. Convert the weights.",
            )
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(self.options.n_threads)
        tok_dir = (
            adapter if adapter and any((adapter / f).is_file() for f in _TOKENIZER_FILES) else base
        )
        try:
            self._tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(base), use_safetensors=True, local_files_only=True, dtype=torch.float32
            )
            if adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"transformers could not load {path}: {exc}") from exc
        model.eval()
        self._model = model
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self._ctx_len = min(limit, self.options.n_ctx) if self.options.n_ctx else limit
        self.path, self.base_path, self.adapter_path = path, base, adapter

    def close(self) -> None:
        self._model = None
        self._tok = None

    @property
    def model(self) -> Any:
        if self._model is None:
            raise ModelLoadError("No model is loaded.")
        return self._model

    @property
    def tokenizer(self) -> Any:
        if self._tok is None:
            raise ModelLoadError("No model is loaded.")
        return self._tok

    # -- metadata ----------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self._ctx_len

    def model_template(self) -> str | None:
        tmpl = getattr(self.tokenizer, "chat_template", None)
        if isinstance(tmpl, dict):
            tmpl = tmpl.get("default")
        return tmpl if isinstance(tmpl, str) and tmpl else None

    def special_tokens(self) -> tuple[str, str]:
        tok = self.tokenizer
        return str(tok.bos_token or ""), str(tok.eos_token or "")

    def architecture(self) -> str | None:
        return str(getattr(self.model.config, "model_type", "") or "") or None

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    # -- generation --------------------------------------------------------------
    def next_token_logits(self, prompt: str) -> list[float]:
        """Logits of the token after ``prompt`` (for tests and evaluation)."""
        import torch

        ids = torch.tensor([self._prompt_tokens(prompt)])
        with torch.no_grad():
            out = self.model(input_ids=ids)
        return [float(x) for x in out.logits[0, -1]]

    def _prompt_tokens(self, prompt: str) -> list[int]:
        return self.prompt_tokens(prompt)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)

    def token_bytes(self, token: int) -> bytes:
        return self._piece([token], 0)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=True))

    def _piece(self, ids: Sequence[int], i: int) -> bytes:
        """The bytes ``ids[i]`` adds to the decoded text of the tokens before it."""
        tok = self.tokenizer
        lo = max(0, i - _PIECE_CONTEXT)
        before = tok.decode(ids[lo:i], skip_special_tokens=True) if i > lo else ""
        text = tok.decode(ids[lo : i + 1], skip_special_tokens=True)
        if i == lo:  # no context: a SentencePiece token's leading space is lost
            token = tok.convert_ids_to_tokens(int(ids[i]))
            if isinstance(token, str) and token.startswith("\u2581") and not text.startswith(" "):
                text = " " + text
        piece = text[len(before) :] if text.startswith(before) else text
        return str(piece).encode("utf-8")

    def complete(
        self, prompt: str, params: SamplingParams, *, logprobs: int | None = None
    ) -> Iterator[Chunk]:
        return self.complete_tokens(self.prompt_tokens(prompt), params, logprobs=logprobs)

    def complete_tokens(
        self, tokens: Sequence[int], params: SamplingParams, *, logprobs: int | None = None
    ) -> Iterator[Chunk]:
        tokens = list(tokens)
        check_token_ids(tokens, self.vocab_size)
        if len(tokens) >= self.context_length:
            raise ContextOverflowError(len(tokens), self.context_length)
        return self._generate(tokens, params, logprobs)

    def score_tokens(self, tokens: Sequence[int], top: int = 0) -> list[TokenLogprob]:
        """One forward pass over ``tokens``; each position's log-softmax of the logits."""
        import torch

        tokens = list(tokens)
        check_token_ids(tokens, self.vocab_size)
        if len(tokens) > self.context_length:
            raise ContextOverflowError(len(tokens), self.context_length)
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([tokens])).logits[0, :-1].float().numpy()
        norms = log_normalizers(logits) if len(tokens) > 1 else []
        out = [TokenLogprob(tokens[0], self._piece(tokens, 0), None)]
        for k in range(1, len(tokens)):
            out.append(self._token_logprob(logits[k - 1], float(norms[k - 1]), tokens, k, top))
        return out

    def _token_logprob(
        self, logits: Any, norm: float, ids: Sequence[int], k: int, top: int
    ) -> TokenLogprob:
        alts = tuple(
            (i, self.token_bytes(i), float(logits[i]) - norm) for i in top_ids(logits, top)
        )
        return TokenLogprob(ids[k], self._piece(ids, k), float(logits[ids[k]]) - norm, alts)

    def _generate(
        self, tokens: list[int], params: SamplingParams, logprobs: int | None = None
    ) -> Iterator[Chunk]:
        import torch

        model, tok = self.model, self.tokenizer
        room = self.context_length - len(tokens)
        max_tokens = min(params.max_tokens or room, room)
        seed = params.seed if params.seed is not None else random.randrange(2**32)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        eos_ids = _eos_ids(model, tok)
        stops = StopBuffer(params.stop)
        out_ids: list[int] = []
        emitted = ""
        finish = "length"
        hit = False
        cache_kw: dict[str, Any] = {}
        pending: list[TokenLogprob] = []
        inputs = torch.tensor([tokens])
        context = torch.tensor(tokens)
        with torch.no_grad():
            while len(out_ids) < max_tokens:
                out = model(input_ids=inputs, use_cache=True, **cache_kw)
                # transformers 5 renamed past_key_values to cache (argument and output).
                if "cache" in out:
                    cache_kw = {"cache": out["cache"]}
                else:
                    cache_kw = {"past_key_values": out["past_key_values"]}
                logits = out.logits[0, -1].float()
                raw = logits.numpy().copy() if logprobs is not None else None
                token = _sample(logits, context, params, gen)
                if token in eos_ids:
                    finish = "stop"
                    break
                out_ids.append(token)
                if raw is not None and logprobs is not None:
                    norm = float(log_normalizers(raw[None, :])[0])
                    ids = [*tokens, *out_ids]
                    pending.append(self._token_logprob(raw, norm, ids, len(ids) - 1, logprobs))
                context = torch.cat([context, torch.tensor([token])])
                inputs = torch.tensor([[token]])
                text = tok.decode(out_ids, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    continue  # an incomplete multi-byte character: wait for the rest
                piece, emitted = text[len(emitted) :], text
                safe, hit = stops.feed(piece)
                if safe:
                    yield Chunk(safe, logprobs=tuple(pending))
                    pending.clear()
                if hit:
                    finish = "stop"
                    break
        tail = ""
        if not hit:  # after a stop string, the held-back text is the stop string: drop it
            rest = tok.decode(out_ids, skip_special_tokens=True)[len(emitted) :]
            safe, _ = stops.feed(rest)
            tail = safe + stops.flush()
        yield Chunk(
            tail,
            finish_reason=finish,
            usage=Usage(len(tokens), len(out_ids)),
            logprobs=tuple(pending),
        )

    def embeddings(self, texts: Sequence[str]) -> list[list[float]]:
        """Mean-pooled last hidden states, one vector per text."""
        import torch

        vectors: list[list[float]] = []
        with torch.no_grad():
            for text in texts:
                ids = self.tokenize(text)
                if len(ids) > self.context_length:
                    raise ContextOverflowError(len(ids), self.context_length)
                out = self.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
                vectors.append([float(x) for x in out.hidden_states[-1][0].mean(dim=0)])
        return vectors


def _eos_ids(model: Any, tok: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tok.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def _sample(logits: Any, context: Any, params: SamplingParams, gen: Any) -> int:
    """llama.cpp's order: repeat penalty, then greedy or top-k, top-p, min-p, temperature."""
    import torch

    if params.repeat_penalty != 1.0 and context.numel():
        seen = torch.unique(context)
        vals = logits[seen]
        logits[seen] = torch.where(
            vals > 0, vals / params.repeat_penalty, vals * params.repeat_penalty
        )
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    if params.top_k > 0 and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        drop = cum - sorted_p > params.top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    if params.min_p > 0.0:
        probs = torch.where(probs < params.min_p * probs.max(), torch.zeros_like(probs), probs)
    probs = probs ** (1.0 / params.temperature)
    probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))
