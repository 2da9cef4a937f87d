"""Sampling parameters: one validated dataclass, mapped from OpenAI-style requests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from app.core.errors import ConfigError

__all__ = ["SamplingParams", "StopBuffer"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. Validated on creation; ``temperature`` 0 means greedy."""

    temperature: float = field(default=0.8, metadata={"help": "0 = greedy; higher = more random"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass, (0, 1]"})
    top_k: int = field(default=40, metadata={"help": "keep the k most likely tokens; 0 = all"})
    min_p: float = field(default=0.05, metadata={"help": "drop tokens below min_p x top prob"})
    repeat_penalty: float = field(
        default=1.0, metadata={"help": "1.0 = none; >1 penalises repeats"}
    )
    max_tokens: int | None = field(
        default=256, metadata={"help": "tokens to generate at most; None = up to the context"}
    )
    seed: int | None = field(default=None, metadata={"help": "same seed -> same text"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "strings that end generation"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 5.0:
            raise ConfigError("temperature must be between 0 and 5.")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("top_p must be in (0, 1].")
        if self.top_k < 0:
            raise ConfigError("top_k must be 0 (off) or positive.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ConfigError("min_p must be between 0 and 1.")
        if not 0.0 < self.repeat_penalty <= 10.0:
            raise ConfigError("repeat_penalty must be in (0, 10].")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError("max_tokens must be at least 1.")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise ConfigError("seed must be between 0 and 2**32 - 1.")
        if len(self.stop) > 16 or any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError("stop must be at most 16 non-empty strings.")

    def with_stop(self, extra: tuple[str, ...]) -> SamplingParams:
        """These parameters with more stop strings (deduplicated, order kept)."""
        merged = tuple(dict.fromkeys((*self.stop, *extra)))
        return replace(self, stop=merged)

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop),
        }

    @classmethod
    def from_openai(
        cls, body: Mapping[str, Any], *, default_max_tokens: int = 256
    ) -> SamplingParams:
        """Map an OpenAI request body (plus llama.cpp's ``top_k``/``repeat_penalty``/``min_p``)."""
        n = body.get("n", 1)
        if n not in (1, None):
            raise ConfigError("Only n=1 is supported.")
        stop = body.get("stop")
        if stop is None:
            stops: tuple[str, ...] = ()
        elif isinstance(stop, str):
            stops = (stop,)
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            stops = tuple(stop)
        else:
            raise ConfigError("stop must be a string or a list of strings.")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", default_max_tokens))
        kwargs: dict[str, Any] = {"stop": stops, "max_tokens": max_tokens}
        penalty = body.get("repeat_penalty", body.get("repetition_penalty"))
        for key, value in (
            ("temperature", body.get("temperature")),
            ("top_p", body.get("top_p")),
            ("top_k", body.get("top_k")),
            ("min_p", body.get("min_p")),
            ("repeat_penalty", penalty),
            ("seed", body.get("seed")),
        ):
            if value is not None:
                kwargs[key] = value
        for key, kind in (
            ("temperature", (int, float)),
            ("top_p", (int, float)),
            ("min_p", (int, float)),
            ("repeat_penalty", (int, float)),
            ("top_k", int),
            ("seed", int),
            ("max_tokens", int),
        ):
            value = kwargs.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
                raise ConfigError(f"{key} must be a number.")
        for key in ("temperature", "top_p", "min_p", "repeat_penalty"):
            if key in kwargs:
                kwargs[key] = float(kwargs[key])
        return cls(**kwargs)


class StopBuffer:
    """Holds back text that might be the start of a stop string.

    ``feed`` returns the text that is safe to emit and whether a stop string was
    hit (the stop string itself is never emitted); ``flush`` returns what is left.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return buf[:cut], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out
