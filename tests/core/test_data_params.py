"""Typed operation parameters, per-field checks and column mappings (the Prepare and
Fine-tune forms stand on these; no Qt here)."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.data.ops import OPS, field_problems, get_op
from app.core.data.recipes import (
    ColumnMapping,
    Recipe,
    apply_recipe,
    mapping_of,
    propose_mapping,
    training_format_of,
)
from app.core.data.store import DatasetStore

#: The defaults each operation recorded before its parameters were dataclasses: the
#: serialised form of a step (what the CLI, recipes and version history hold) is unchanged.
RECORDED_DEFAULTS = {
    "normalize": {"columns": None, "unicode": "NFKC", "collapse_whitespace": True, "strip": True},
    "drop_empty": {"columns": None, "how": "all"},
    "length_filter": {"min": None, "max": None, "unit": "chars", "tokenizer": None},
    "regex_filter": {"keep": True, "case_sensitive": True},
    "regex_replace": {"columns": None, "replacement": "", "case_sensitive": True},
    "redact_pii": {"columns": None, "types": None, "labels": None},
    "map_template": {
        "format": "chat",
        "system": None,
        "user_template": "{instruction}\n\n{input}",
        "assistant_template": "{output}",
        "prompt_template": "{instruction}\n\n{input}",
        "completion_template": "{output}",
        "keep_columns": None,
    },
    "select_columns": {"columns": None, "rename": None},
    "dedupe": {"columns": None},
    "near_dedupe": {"threshold": 0.8, "num_perm": 128, "shingle": 5, "seed": 1, "lowercase": True},
    "split": {
        "ratios": {"train": 0.8, "validation": 0.1, "test": 0.1},
        "seed": 0,
        "stratify": None,
        "column": "split",
    },
    "sample": {"n": None, "fraction": None, "seed": 0},
    "shuffle": {"seed": 0},
    "concatenate": {},
}
RECORDED_REQUIRED = {
    "length_filter": ("column",),
    "regex_filter": ("column", "pattern"),
    "regex_replace": ("pattern",),
    "near_dedupe": ("column",),
    "concatenate": ("others",),
}


def test_every_operation_has_typed_parameters_with_the_recorded_defaults() -> None:
    assert set(OPS) == set(RECORDED_DEFAULTS)
    for name, spec in OPS.items():
        assert spec.params_type is not None and dataclasses.is_dataclass(spec.params_type)
        assert spec.defaults == RECORDED_DEFAULTS[name], name
        assert list(spec.defaults) == list(RECORDED_DEFAULTS[name]), name  # same key order
        assert spec.required == RECORDED_REQUIRED.get(name, ()), name
        for f in dataclasses.fields(spec.params_type):
            assert f.metadata.get("help"), (name, f.name)


SCHEMA = pa.schema([("question", pa.string()), ("answer", pa.string()), ("n", pa.int64())])


@pytest.mark.parametrize(
    ("op", "params", "field", "words"),
    [
        ("regex_filter", {"column": "prompt", "pattern": "x"}, "column", "no column 'prompt'"),
        ("regex_filter", {"column": "n", "pattern": "x"}, "column", "not a text column"),
        ("regex_filter", {"column": "question", "pattern": "(["}, "pattern", "regular expression"),
        ("regex_filter", {"pattern": "x"}, "column", "Choose a column"),
        ("map_template", {"user_template": "{prompt}"}, "user_template", "no column(s) prompt"),
        ("map_template", {"user_template": "{question"}, "user_template", "malformed"),
        ("normalize", {"columns": ["question", "body"]}, "columns", "no column(s) body"),
        ("near_dedupe", {"column": "question", "threshold": 0.0}, "threshold", "At least 0.01"),
        ("sample", {}, "n", "number of rows or a fraction"),
        ("sample", {"fraction": 1.5}, "fraction", "At most 1"),
        ("split", {"ratios": {"train": 0.0}}, "ratios", "not all zero"),
        ("length_filter", {"column": "question", "unit": "tokens"}, "tokenizer", "tokenizer.json"),
        ("redact_pii", {"types": ["email", "ssn"]}, "types", "Unknown: ssn"),
        ("concatenate", {}, "others", "Required"),
    ],
)
def test_field_problems_name_the_field_and_what_is_wrong(op, params, field, words) -> None:
    problems = field_problems(op, params, SCHEMA)
    assert words in problems[field], problems


def test_field_problems_are_empty_for_parameters_that_run() -> None:
    table = pa.table({"question": ["a?"], "answer": ["b"], "n": [1]})
    good = {
        "regex_filter": {"column": "question", "pattern": r"\?$"},
        "map_template": ColumnMapping(user="question", assistant="answer").step().params,
        "split": {"ratios": {"train": 1.0}},
        "sample": {"n": 1},
        "length_filter": {"column": "answer", "min": 1},
        "normalize": {},
    }
    for op, params in good.items():
        assert field_problems(op, params, table.schema) == {}, op
        get_op(op).run_on_table(params, table)  # and they do run


@pytest.mark.parametrize(
    ("columns", "user", "extra", "assistant"),
    [
        (["question", "answer"], "question", None, "answer"),
        (["Question", "Answer", "id"], "Question", None, "Answer"),
        (["instruction", "input", "output"], "instruction", "input", "output"),
        (["prompt", "completion"], "prompt", None, "completion"),
        (["query", "response", "system"], "query", None, "response"),
        (["input", "output"], "input", None, "output"),
        (["a", "b"], "", None, ""),
    ],
)
def test_propose_mapping_from_common_names(columns, user, extra, assistant) -> None:
    m = propose_mapping(columns)
    assert (m.user, m.extra, m.assistant) == (user, extra, assistant)
    if user:
        assert m.problems(columns) == {}
    else:
        assert m.problems(columns) == {"user": "Choose a column.", "assistant": "Choose a column."}


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.text(min_size=1, max_size=12), max_size=8, unique=True))
def test_a_proposal_only_names_columns_the_table_has(columns: list[str]) -> None:
    m = propose_mapping(columns)
    named = [c for c in (m.user, m.assistant, m.extra, m.system) if c]
    assert all(c in columns for c in named)
    assert len(set(named)) == len(named)  # never one column for two roles
    if m.user and m.assistant and not m.problems(columns):
        assert mapping_of(m.step()) == m  # what a manifest records reads back


def test_mapping_problems_and_round_trip() -> None:
    cols = ["q", "a", "sys"]
    m = ColumnMapping(user="q", assistant="q")
    assert "different column" in m.problems(cols)["assistant"]
    m = ColumnMapping(user="q", assistant="a", system="sys", format="prompt_completion")
    assert m.problems(cols) == {}
    assert mapping_of(m.step()) == m
    assert mapping_of({"name": "map_template", "params": {"user_template": "Q: {q}"}}) is None
    assert mapping_of({"name": "dedupe", "params": {}}) is None
    assert training_format_of(["messages", "x"]) == "chat"
    assert training_format_of(["prompt", "completion"]) == "prompt_completion"
    assert training_format_of(["question", "answer"]) is None


def test_recipe_steps_read_as_names_not_ids(workspace) -> None:
    """Versions made by a recipe and its progress say "Step 1 of 2: Map to a training format"
    (they said "recipe step 1: map_template")."""
    store = DatasetStore(workspace)
    v = store.create_dataset(
        "qa", pa.table({"question": ["a", "b", "a"], "answer": ["x", "y", "x"]})
    )
    recipe = Recipe.from_dict(
        [
            {"name": "dedupe", "params": {}},
            ColumnMapping(user="question", assistant="answer").step().to_dict(),
        ]
    )
    seen: list[str] = []
    out = apply_recipe(
        workspace, f"{v.dataset_id}@{v.hash}", recipe, progress=lambda f, m="": seen.append(m)
    )
    assert [x.message for x in out] == [
        "Step 1 of 2: Drop exact duplicates",
        "Step 2 of 2: Map to a training format",
    ]
    assert "Step 1 of 2: Drop exact duplicates · 3 rows read" in seen, seen
    assert "Step 2 of 2: Map to a training format · block 1 of 1" in seen, seen
    assert not any("map_template" in m or "dedupe" in m for m in seen), seen


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None, database=None)
@given(st.sampled_from(sorted(OPS)), st.data())
def test_field_problems_never_crash_on_any_json(op: str, data: st.DataObject) -> None:
    """Parameters from a recipe file are untrusted: any JSON value in any field gives messages
    (or none), never an exception."""
    names = [*OPS[op].defaults, *OPS[op].required]
    params = data.draw(st.dictionaries(st.sampled_from(names), _JSON, max_size=len(names)))
    problems = field_problems(op, params, SCHEMA)
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in problems.items())
