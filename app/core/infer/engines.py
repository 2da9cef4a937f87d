"""The engine interface and the registry of engines by model format.

An engine loads one model from a path and streams text. Engines for heavy
libraries live in their own modules and import those libraries only when a
model is loaded, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from app.core.errors import ConfigError, DemoAIError
from app.core.infer.sampling import SamplingParams
from app.core.infer.templates import ChatTemplate, guess_preset, preset

__all__ = [
    "FORMATS",
    "MAX_TOP_LOGPROBS",
    "Chunk",
    "ContextOverflowError",
    "Engine",
    "EngineOptions",
    "InferenceError",
    "InvalidTokensError",
    "ModelLoadError",
    "TokenLogprob",
    "UnsupportedError",
    "Usage",
    "check_token_ids",
    "create_engine",
    "detect_format",
    "engine_class",
    "log_normalizers",
    "logprob_rows",
    "open_engine",
    "register_engine",
    "top_ids",
]


class InferenceError(DemoAIError):
    """Inference failed. ``http_status``/``error_type``/``code`` map it to an API error."""

    http_status = 500
    error_type = "server_error"
    code = "inference_error"


class ModelLoadError(InferenceError):
    """A model could not be loaded (missing, truncated, unsupported or unsafe files)."""

    code = "model_load_failed"


class ContextOverflowError(InferenceError):
    """The prompt does not fit the model's context window."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, context_length: int) -> None:
        super().__init__(
            f"This model's maximum context length is {context_length} tokens, "
            f"but the prompt has {prompt_tokens} tokens.",
            "Shorten the prompt or the conversation.",
        )
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class InvalidTokensError(InferenceError):
    """Token ids given as a prompt that the model's vocabulary does not hold."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_prompt"


def check_token_ids(tokens: Sequence[int], n_vocab: int) -> None:
    """Refuse an empty list or ids outside ``[0, n_vocab)`` (llama.cpp would crash on them)."""
    if not tokens:
        raise InvalidTokensError("The prompt has no tokens.")
    bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise InvalidTokensError(
            f"Token id {bad} is not in this model's vocabulary (0..{n_vocab - 1})."
        )


def logprob_rows(logits: Any) -> Any:
    """Log-softmax of each row of ``logits`` (a 2-D numpy array), in float64."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    return x - log_normalizers(x)[:, None]


def log_normalizers(logits: Any) -> Any:
    """``log(sum(exp(row)))`` of each row of ``logits`` (2-D numpy), summed in float64:
    a token's logprob is its logit minus its row's normalizer."""
    import numpy as np

    m = logits.max(axis=-1, keepdims=True)
    total = np.exp(logits - m).sum(axis=-1, dtype=np.float64)
    return m[:, 0].astype(np.float64) + np.log(total)


def top_ids(row: Any, n: int) -> list[int]:
    """The ``n`` largest entries' indices of a 1-D numpy array, largest first."""
    import numpy as np

    if n <= 0:
        return []
    n = min(n, row.shape[0])
    part = np.argpartition(-row, n - 1)[:n]
    return [int(i) for i in part[np.argsort(-row[part], kind="stable")]]


class UnsupportedError(InferenceError):
    """The engine cannot do what was asked (e.g. embeddings)."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "unsupported"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


#: The most alternatives a caller may ask for at each position (OpenAI's limit).
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """A token with its log-probability and the likeliest tokens at its position.

    Values are the log-softmax of the model's raw logits (before temperature,
    penalties or grammar). ``logprob`` is None for a prompt's first token: nothing
    precedes it. ``top`` holds (token id, bytes, logprob), likeliest first.
    """

    token: int
    piece: bytes
    logprob: float | None
    top: tuple[tuple[int, bytes, float], ...] = ()


@dataclass(frozen=True)
class Chunk:
    """A piece of streamed text. The last chunk of a stream carries ``finish_reason`` and ``usage``.

    With logprobs asked for, ``logprobs`` holds the generated tokens not reported by an
    earlier chunk (a chunk may carry tokens whose text a stop string held back or cut).
    """

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class EngineOptions:
    """How to run a model: CPU threads, context size, a preset template, a LoRA base."""

    threads: int = 0
    n_ctx: int | None = None
    template: str | None = None
    base_path: Path | None = None

    @property
    def n_threads(self) -> int:
        """Threads to use: ``threads``, or the number of cores when 0."""
        return self.threads if self.threads > 0 else max(1, os.cpu_count() or 1)


class Engine(ABC):
    """One loaded model. Not thread-safe: the caller serialises requests."""

    formats: ClassVar[tuple[str, ...]] = ()
    supports_embeddings: ClassVar[bool] = False

    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        self.path: Path | None = None
        self._template: ChatTemplate | None = None

    # -- lifecycle ---------------------------------------------------------------
    @abstractmethod
    def load(self, path: Path) -> None:
        """Load the model at ``path``; raises :class:`ModelLoadError`."""

    @abstractmethod
    def close(self) -> None:
        """Free the model. Safe to call twice."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tokens ------------------------------------------------------------------
    @property
    @abstractmethod
    def context_length(self) -> int:
        """Tokens the loaded context holds (prompt + completion)."""

    @abstractmethod
    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """Token ids of ``text`` (with BOS when ``add_special`` and the model uses one)."""

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The tokens a completion of ``prompt`` starts from: BOS is added unless the
        text already starts with it (a rendered chat template often does)."""
        bos, _ = self.special_tokens()
        return self.tokenize(prompt, add_special=not (bos and prompt.startswith(bos)))

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to ``vocab_size - 1``."""
        raise UnsupportedError(f"The {type(self).__name__} does not report its vocabulary.")

    def token_bytes(self, token: int) -> bytes:
        """The bytes ``token`` adds to a text (b"" for control tokens)."""
        raise UnsupportedError(f"The {type(self).__name__} cannot report token texts.")

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens`` (control tokens left out)."""
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", "replace")

    # -- generation --------------------------------------------------------------
    @abstractmethod
    def complete(
        self, prompt: str, params: SamplingParams, *, logprobs: int | None = None
    ) -> Iterator[Chunk]:
        """Stream a completion of ``prompt``; the last chunk has ``finish_reason`` and ``usage``.

        ``logprobs`` (0..MAX_TOP_LOGPROBS) asks for each generated token's
        :class:`TokenLogprob` with that many alternatives (see :attr:`Chunk.logprobs`).
        Raises :class:`ContextOverflowError` before generating when the prompt does
        not fit.
        """

    def complete_tokens(
        self, tokens: Sequence[int], params: SamplingParams, *, logprobs: int | None = None
    ) -> Iterator[Chunk]:
        """Like :meth:`complete`, from token ids given as they are (no BOS added)."""
        raise UnsupportedError(f"The {type(self).__name__} cannot complete token ids.")

    def score_tokens(self, tokens: Sequence[int], top: int = 0) -> list[TokenLogprob]:
        """Each token's log-probability given the tokens before it (the first: None),
        with ``top`` alternatives at each position after the first. For prompt scoring
        (``echo``); raises :class:`ContextOverflowError` when the tokens do not fit."""
        raise UnsupportedError(f"The {type(self).__name__} cannot score prompts.")

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        params: SamplingParams,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Iterator[Chunk]:
        """Stream the assistant's reply to ``messages``, using the chat template.

        ``tools`` (OpenAI function schemas) are rendered by the template; only
        templates with a :attr:`tool_format` know what to do with them.
        """
        template = self.chat_template
        if tools or any(isinstance(m, Mapping) and m.get("tool_calls") for m in messages):
            from app.core.infer.tool_calls import messages_for_template

            messages = messages_for_template(messages)
        extra = {"tools": list(tools)} if tools else {}
        prompt = template.render(messages, add_generation_prompt=True, **extra)
        return self.complete(prompt, params.with_stop(template.stop))

    @property
    def tool_format(self) -> str | None:
        """The native tool-call syntax of the chat template (see ``tool_calls``), or None."""
        from app.core.infer.tool_calls import detect_tool_format

        return detect_tool_format(self.chat_template.source)

    def embeddings(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, when the engine supports it."""
        raise UnsupportedError(
            f"The {type(self).__name__} cannot compute embeddings for this model."
        )

    # -- templates ---------------------------------------------------------------
    @property
    def chat_template(self) -> ChatTemplate:
        """The preset given in options, else the model's own template, else a guessed preset."""
        if self._template is None:
            bos, eos = self.special_tokens()
            if self.options.template:
                self._template = preset(self.options.template, bos_token=bos, eos_token=eos)
            else:
                source = self.model_template()
                if source:
                    self._template = ChatTemplate(
                        source, bos, eos, name="model", stop=(eos,) if eos else ()
                    )
                else:
                    self._template = preset(
                        guess_preset(self.architecture()),
                        bos_token=bos or None,
                        eos_token=eos or None,
                    )
        return self._template

    def model_template(self) -> str | None:
        """The chat template shipped with the model, if any."""
        return None

    def special_tokens(self) -> tuple[str, str]:
        """The model's BOS and EOS token texts ("" when unknown)."""
        return "", ""

    def architecture(self) -> str | None:
        return None


#: Model format -> "module:Class" of its engine, imported on first use.
_REGISTRY: dict[str, str] = {
    "gguf": "app.core.infer.llama_engine:LlamaEngine",
    "hf": "app.core.infer.hf_engine:HFEngine",
    "lora": "app.core.infer.hf_engine:HFEngine",
}
FORMATS: tuple[str, ...] = ("hf", "gguf", "lora")


def register_engine(fmt: str, target: str) -> None:
    """Register an engine class (``"module:Class"``) for a model format."""
    _REGISTRY[fmt] = target


def engine_class(fmt: str) -> type[Engine]:
    try:
        target = _REGISTRY[fmt]
    except KeyError:
        raise ConfigError(
            f"No inference engine for model format {fmt!r}.",
            f"Known formats: {', '.join(sorted(_REGISTRY))}.",
        ) from None
    module, _, name = target.partition(":")
    cls: type[Engine] = getattr(importlib.import_module(module), name)
    return cls


def create_engine(fmt: str, options: EngineOptions | None = None) -> Engine:
    """An unloaded engine for ``fmt``."""
    return engine_class(fmt)(options)


def open_engine(
    path: str | os.PathLike[str], fmt: str | None = None, options: EngineOptions | None = None
) -> Engine:
    """Create the engine for ``path`` (format detected when not given) and load the model."""
    p = Path(path)
    engine = create_engine(fmt or detect_format(p), options)
    try:
        engine.load(p)
    except BaseException:
        engine.close()
        raise
    return engine


def detect_format(path: Path) -> str:
    """``gguf`` for a .gguf file, ``lora`` for an adapter folder, ``hf`` for a model folder."""
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return "gguf"
        raise ModelLoadError(f"{path} is not a GGUF file.", "Give a .gguf file or a model folder.")
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return "lora"
        if (path / "config.json").is_file():
            return "hf"
        raise ModelLoadError(
            f"{path} holds neither a model (config.json) nor a LoRA adapter (adapter_config.json)."
        )
    raise ModelLoadError(f"There is no model at {path}.")
