"""Patterns from datasets run with a time limit: a clear error, never a hang."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pytest

from app.core.data.recipes import apply_op
from app.core.data.store import DatasetStore
from app.core.eval.metrics import regex_match
from app.core.patterns import PatternTooSlowError, compile_pattern, search

# Catastrophic backtracking in Python's re (and in regex): 2**60 ways to split the a's.
SLOW = r"(a|aa)+$"
SLOW_TEXT = "a" * 60 + "b"


def test_a_backtracking_pattern_stops_with_a_clear_error() -> None:
    t0 = time.monotonic()
    with pytest.raises(PatternTooSlowError, match="backtracks catastrophically") as info:
        search(SLOW, SLOW_TEXT)
    # re.search would run for years; the limit is 0.5 s (slack for a loaded machine)
    assert time.monotonic() - t0 < 60
    assert info.value.hint and "nested repeats" in info.value.hint
    # ordinary patterns behave like re's
    assert search(r"b(c)", "abcd").group(1) == "c"
    assert compile_pattern(r"a(a)").sub(r"b\1", "aaa") == "baa"
    with pytest.raises(ValueError, match="not a valid regular expression"):
        compile_pattern("(")


def test_the_regex_metric_on_a_hostile_reference_is_an_error_not_a_hang() -> None:
    assert regex_match("order 123", r"\d+") == 1.0
    assert regex_match("no digits", r"\d+") == 0.0
    with pytest.raises(PatternTooSlowError):
        regex_match(SLOW_TEXT, SLOW)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        regex_match("x", "(")


def test_a_regex_filter_that_backtracks_fails_and_writes_no_version(workspace: Any) -> None:
    store = DatasetStore(workspace)
    v = store.create_dataset("t", pa.table({"t": ["ok", SLOW_TEXT]}))
    with pytest.raises(PatternTooSlowError):
        apply_op(workspace, v.dataset_id, "regex_filter", {"column": "t", "pattern": SLOW})
    assert [x.hash for x in store.versions(v.dataset_id)] == [v.hash]
