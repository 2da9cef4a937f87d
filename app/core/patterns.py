"""Regular expressions from untrusted places, with a time limit on every match.

Patterns come from datasets (a reference used as a pattern by the ``regex``
metric, an agent-eval checker), from recipe files and from the user; the text
they run on comes from datasets and model answers. Python's ``re`` has no time
limit, so a pattern with catastrophic backtracking (``(a+)+$`` on a long run of
``a``) can hold a job or the window for hours. The ``regex`` library (a
maintained superset of ``re``, already installed with transformers) takes a
``timeout`` on every call: a match that runs over it raises
:class:`PatternTooSlowError`, a clear error instead of a hang.
"""

from __future__ import annotations

from typing import Any

import regex

from app.core.errors import ConfigError

#: Seconds one match or substitution on one text may take.
MATCH_SECONDS = 0.5

IGNORECASE = regex.IGNORECASE


class PatternTooSlowError(ConfigError):
    """A pattern ran over its time limit on a text (catastrophic backtracking)."""


class Pattern:
    """A compiled pattern whose every call has a time limit."""

    def __init__(self, pattern: str, flags: int = 0) -> None:
        try:
            self._rx = regex.compile(pattern, flags)
        except (regex.error, TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
        self.pattern = pattern

    def _slow(self) -> PatternTooSlowError:
        return PatternTooSlowError(
            f"The regular expression {self.pattern!r} took more than {MATCH_SECONDS:g} s on one "
            "text (it backtracks catastrophically on it).",
            "Simplify the pattern: avoid nested repeats such as (a+)+ or (.*)*.",
        )

    def search(self, text: str) -> Any:
        """The first match in ``text`` or None."""
        try:
            return self._rx.search(text, timeout=MATCH_SECONDS)
        except TimeoutError:
            raise self._slow() from None

    def sub(self, repl: str, text: str) -> str:
        """``text`` with every match replaced by ``repl`` (``re.sub``'s template syntax)."""
        try:
            return str(self._rx.sub(repl, text, timeout=MATCH_SECONDS))
        except TimeoutError:
            raise self._slow() from None


def compile_pattern(pattern: str, flags: int = 0) -> Pattern:
    """A time-limited pattern; ValueError (with the reason) when it is not valid."""
    return Pattern(pattern, flags)


def search(pattern: str, text: str, flags: int = 0) -> Any:
    """``re.search`` with a time limit (compiled patterns are cached by ``regex``)."""
    return Pattern(pattern, flags).search(text)


__all__ = [
    "IGNORECASE",
    "MATCH_SECONDS",
    "Pattern",
    "PatternTooSlowError",
    "compile_pattern",
    "search",
]
