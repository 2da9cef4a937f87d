"""Preparation operations: a registry of named, parameterized table transforms.

Each operation has a name, documented defaults and a factory that turns the
parameters into a function ``Table -> Table``. *Row-wise* operations
(``streaming=True``) are applied chunk by chunk while reading the input
version, so they run in bounded memory; the others (dedupe, near-dedupe,
split, sample, shuffle, concatenate) see the whole table. The parameters
recorded in a version's ``operation`` are the full set, defaults filled in,
so a recipe replays exactly.

Splits are stored as a ``split`` column (``train``/``validation``/``test``)
in one version rather than as separate versions: one version is one
content hash a training run can cite, and :func:`split_table` selects a part.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from app.core.data import pii
from app.core.errors import ConfigError

Transform = Callable[[pa.Table], pa.Table]


@dataclass(frozen=True)
class OpContext:
    """What an operation may need besides its parameters (reading other versions)."""

    read_version: Callable[[str], pa.Table]


@dataclass(frozen=True)
class OpSpec:
    """One registered operation."""

    name: str
    title: str
    description: str
    defaults: dict[str, Any]
    make: Callable[[dict[str, Any], OpContext], Transform]
    streaming: bool = False
    required: tuple[str, ...] = ()

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        """Parameters with defaults filled in; unknown or missing ones raise ConfigError."""
        unknown = sorted(set(params) - set(self.defaults) - set(self.required))
        if unknown:
            raise ConfigError(
                f"Operation '{self.name}' has no parameter(s) {unknown}.",
                f"Its parameters: {sorted([*self.required, *self.defaults])}.",
            )
        missing = [k for k in self.required if params.get(k) is None]
        if missing:
            raise ConfigError(f"Operation '{self.name}' needs {missing}.")
        return {**self.defaults, **params}


OPS: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    """Add (or replace) an operation."""
    OPS[spec.name] = spec
    return spec


def get_op(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown operation '{name}'.", f"Known operations: {', '.join(sorted(OPS))}."
        ) from None


# -- helpers ---------------------------------------------------------------------------------
def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def text_columns(table: pa.Table | pa.Schema, columns: list[str] | None = None) -> list[str]:
    """``columns`` checked to exist, or every text column."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    if columns is None:
        return [f.name for f in schema if _is_text(f.type)]
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ConfigError(f"No column(s) {missing}.", f"Columns: {schema.names}.")
    return list(columns)


def _replace(table: pa.Table, name: str, arr: pa.Array | pa.ChunkedArray) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, table.schema.field(i).with_type(arr.type), arr)


def _map_text(table: pa.Table, col: str, fn: Callable[[str], str]) -> pa.Table:
    values = table.column(col).to_pylist()
    return _replace(
        table, col, pa.array([None if v is None else fn(v) for v in values], table[col].type)
    )


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"Invalid regular expression {pattern!r}: {exc}.") from None
    return pattern


def row_json(table: pa.Table, columns: list[str]) -> list[str]:
    """Each row of ``columns`` as canonical JSON text (for hashing rows of any type)."""
    cols = [table.column(c).to_pylist() for c in columns]
    return (
        [
            json.dumps(list(vals), sort_keys=True, ensure_ascii=False, default=str)
            for vals in zip(*cols, strict=True)
        ]
        if cols
        else ["[]"] * table.num_rows
    )


# -- row-wise operations ---------------------------------------------------------------------
def _make_normalize(p: dict[str, Any], _: OpContext) -> Transform:
    form = p["unicode"]
    if form not in (None, "NFC", "NFKC", "NFD", "NFKD"):
        raise ConfigError(f"Unknown unicode form {form!r}.", "Use NFKC, NFC, NFKD, NFD or null.")

    def run(t: pa.Table) -> pa.Table:
        for c in text_columns(t, p["columns"]):
            arr = t[c]
            if form:
                arr = pc.utf8_normalize(arr, form=form)
            if p["collapse_whitespace"]:
                arr = pc.replace_substring_regex(arr, r"[^\S\n]+", " ")
                arr = pc.replace_substring_regex(arr, r" ?\n[\s]*\n\s*", "\n\n")
            if p["strip"]:
                arr = pc.utf8_trim_whitespace(arr)
            t = _replace(t, c, arr)
        return t

    return run


def _make_drop_empty(p: dict[str, Any], _: OpContext) -> Transform:
    if p["how"] not in ("all", "any"):
        raise ConfigError("how must be 'all' or 'any'.")

    def run(t: pa.Table) -> pa.Table:
        cols = text_columns(t, p["columns"]) if p["columns"] else t.column_names
        if not cols:
            return t
        empties = []
        for c in cols:
            arr = t[c]
            empty = pc.is_null(arr)
            if _is_text(arr.type):
                empty = pc.or_(empty, pc.equal(pc.utf8_trim_whitespace(arr), ""))
            empties.append(pc.fill_null(empty, True))
        combined = empties[0]
        for e in empties[1:]:
            combined = pc.and_(combined, e) if p["how"] == "all" else pc.or_(combined, e)
        return t.filter(pc.invert(combined))

    return run


def _make_length(p: dict[str, Any], _: OpContext) -> Transform:
    unit = p["unit"]
    if unit not in ("chars", "tokens"):
        raise ConfigError("unit must be 'chars' or 'tokens'.")
    tokenizer: Any = None
    if unit == "tokens":
        if not p["tokenizer"]:
            raise ConfigError(
                "A token length filter needs a tokenizer.",
                "Give tokenizer: the path of a tokenizer.json.",
            )
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(p["tokenizer"]))
        except Exception as exc:
            raise ConfigError(f"Cannot load the tokenizer {p['tokenizer']}: {exc}.") from None

    def run(t: pa.Table) -> pa.Table:
        col = text_columns(t, [p["column"]])[0]
        if tokenizer is None:
            lengths = pc.fill_null(pc.utf8_length(t[col]), 0)
        else:
            texts = [v or "" for v in t[col].to_pylist()]
            enc = tokenizer.encode_batch(texts, add_special_tokens=False)
            lengths = pa.array([len(e.ids) for e in enc], pa.int64())
        keep = pa.array(np.ones(t.num_rows, dtype=bool))
        if p["min"] is not None:
            keep = pc.and_(keep, pc.greater_equal(lengths, p["min"]))
        if p["max"] is not None:
            keep = pc.and_(keep, pc.less_equal(lengths, p["max"]))
        return t.filter(keep)

    return run


def _make_regex_filter(p: dict[str, Any], _: OpContext) -> Transform:
    rx = re.compile(_regex(p["pattern"]), 0 if p["case_sensitive"] else re.IGNORECASE)

    def run(t: pa.Table) -> pa.Table:
        col = text_columns(t, [p["column"]])[0]
        hits = [v is not None and rx.search(v) is not None for v in t[col].to_pylist()]
        mask = pa.array(hits, pa.bool_())
        return t.filter(mask if p["keep"] else pc.invert(mask))

    return run


def _make_regex_replace(p: dict[str, Any], _: OpContext) -> Transform:
    rx = re.compile(_regex(p["pattern"]), 0 if p["case_sensitive"] else re.IGNORECASE)
    repl = p["replacement"]

    def run(t: pa.Table) -> pa.Table:
        for c in text_columns(t, p["columns"]):
            t = _map_text(t, c, lambda s: rx.sub(repl, s))
        return t

    return run


def _make_redact(p: dict[str, Any], _: OpContext) -> Transform:
    try:
        types = pii.check_types(p["types"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    def run(t: pa.Table) -> pa.Table:
        for c in text_columns(t, p["columns"]):
            t = _map_text(t, c, lambda s: pii.redact_text(s, types, p["labels"]))
        return t

    return run


def _render(template: str, row: dict[str, Any]) -> str:
    values = {k: ("" if v is None else v) for k, v in row.items()}
    try:
        text = template.format_map(values)
    except KeyError as exc:
        raise ConfigError(
            f"The template names a column {exc} that the dataset does not have.",
            f"Columns: {sorted(row)}.",
        ) from None
    # A template like "{instruction}\n\n{input}" with an empty input leaves no trailing gap.
    return text.strip()


MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def _make_template(p: dict[str, Any], _: OpContext) -> Transform:
    fmt = p["format"]
    if fmt not in ("chat", "prompt_completion"):
        raise ConfigError("format must be 'chat' or 'prompt_completion'.")

    def run(t: pa.Table) -> pa.Table:
        rows = t.to_pylist()
        if fmt == "chat":
            msgs = []
            for r in rows:
                m = []
                if p["system"]:
                    m.append({"role": "system", "content": _render(p["system"], r)})
                m.append({"role": "user", "content": _render(p["user_template"], r)})
                m.append({"role": "assistant", "content": _render(p["assistant_template"], r)})
                msgs.append(m)
            new = {"messages": pa.array(msgs, MESSAGE_TYPE)}
        else:
            new = {
                "prompt": pa.array([_render(p["prompt_template"], r) for r in rows], pa.string()),
                "completion": pa.array(
                    [_render(p["completion_template"], r) for r in rows], pa.string()
                ),
            }
        keep = [c for c in (p["keep_columns"] or []) if c in t.column_names and c not in new]
        out = {c: t[c] for c in keep}
        out.update(new)
        return pa.table(out)

    return run


# -- whole-table operations ------------------------------------------------------------------
def _make_dedupe(p: dict[str, Any], _: OpContext) -> Transform:
    def run(t: pa.Table) -> pa.Table:
        cols = p["columns"] or t.column_names
        text_columns(t, cols)
        keys = pa.array(row_json(t, cols), pa.string())
        idx = pa.table({"k": keys, "i": pa.array(np.arange(t.num_rows, dtype=np.int64))})
        first = idx.group_by("k", use_threads=False).aggregate([("i", "min")])["i_min"]
        return t.take(pa.array(np.sort(first.to_numpy())))

    return run


def _make_near_dedupe(p: dict[str, Any], _: OpContext) -> Transform:
    from app.core.data.minhash import near_duplicates

    thr = float(p["threshold"])
    if not 0.0 < thr <= 1.0:
        raise ConfigError("threshold must be in (0, 1].")

    def run(t: pa.Table) -> pa.Table:
        col = text_columns(t, [p["column"]])[0]
        texts = [v or "" for v in t[col].to_pylist()]
        if p["lowercase"]:
            texts = [s.lower() for s in texts]
        drop = near_duplicates(texts, thr, int(p["num_perm"]), int(p["shingle"]), int(p["seed"]))
        mask = np.ones(t.num_rows, dtype=bool)
        mask[drop] = False
        return t.filter(pa.array(mask))

    return run


def _largest_remainder(n: int, ratios: list[float]) -> list[int]:
    raw = [n * r for r in ratios]
    counts = [int(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _make_split(p: dict[str, Any], _: OpContext) -> Transform:
    ratios: dict[str, float] = dict(p["ratios"])
    total = sum(ratios.values())
    if not ratios or total <= 0 or any(v < 0 for v in ratios.values()):
        raise ConfigError("ratios must be non-negative and not all zero.")
    names = list(ratios)
    fractions = [ratios[k] / total for k in names]

    def run(t: pa.Table) -> pa.Table:
        rng = np.random.default_rng(int(p["seed"]))
        labels = np.empty(t.num_rows, dtype=object)
        if p["stratify"]:
            col = p["stratify"]
            text_columns(t, [col])
            values = [json.dumps(v, sort_keys=True, default=str) for v in t[col].to_pylist()]
            groups: dict[str, list[int]] = {}
            for i, v in enumerate(values):
                groups.setdefault(v, []).append(i)
            parts = [np.array(groups[k], dtype=np.int64) for k in sorted(groups)]
        else:
            parts = [np.arange(t.num_rows, dtype=np.int64)]
        for rows in parts:
            perm = rows[rng.permutation(rows.size)]
            start = 0
            for name, count in zip(names, _largest_remainder(rows.size, fractions), strict=True):
                labels[perm[start : start + count]] = name
                start += count
        arr = pa.array(labels.tolist(), pa.string())
        if p["column"] in t.column_names:
            return _replace(t, p["column"], arr)
        return t.append_column(p["column"], arr)

    return run


def _make_sample(p: dict[str, Any], _: OpContext) -> Transform:
    def run(t: pa.Table) -> pa.Table:
        n = p["n"]
        if n is None:
            if p["fraction"] is None:
                raise ConfigError("sample needs n or fraction.")
            n = round(t.num_rows * float(p["fraction"]))
        n = min(int(n), t.num_rows)
        rng = np.random.default_rng(int(p["seed"]))
        idx = np.sort(rng.choice(t.num_rows, size=n, replace=False))
        return t.take(pa.array(idx))

    return run


def _make_shuffle(p: dict[str, Any], _: OpContext) -> Transform:
    def run(t: pa.Table) -> pa.Table:
        rng = np.random.default_rng(int(p["seed"]))
        return t.take(pa.array(rng.permutation(t.num_rows)))

    return run


def _make_concat(p: dict[str, Any], ctx: OpContext) -> Transform:
    refs = p["others"]
    if isinstance(refs, str):
        refs = [refs]

    def run(t: pa.Table) -> pa.Table:
        tables = [t, *[ctx.read_version(r) for r in refs]]
        try:
            return pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ConfigError(f"Cannot concatenate: the columns do not match ({exc}).") from None

    return run


def _make_select(p: dict[str, Any], _: OpContext) -> Transform:
    def run(t: pa.Table) -> pa.Table:
        if p["columns"]:
            text_columns(t, p["columns"])
            t = t.select(p["columns"])
        if p["rename"]:
            text_columns(t, list(p["rename"]))
            t = t.rename_columns([p["rename"].get(c, c) for c in t.column_names])
        return t

    return run


# -- the registry -------------------------------------------------------------------------------
for _spec in (
    OpSpec(
        "normalize",
        "Normalize text",
        "Unicode normalization (NFKC by default), runs of spaces to one, blank lines to one, trim.",
        {"columns": None, "unicode": "NFKC", "collapse_whitespace": True, "strip": True},
        _make_normalize,
        streaming=True,
    ),
    OpSpec(
        "drop_empty",
        "Drop empty rows",
        "Drop rows whose columns are all (how='all') or any (how='any') null or blank.",
        {"columns": None, "how": "all"},
        _make_drop_empty,
        streaming=True,
    ),
    OpSpec(
        "length_filter",
        "Length filter",
        "Keep rows whose text length (characters, or tokens of a tokenizer.json) is in [min, max].",
        {"min": None, "max": None, "unit": "chars", "tokenizer": None},
        _make_length,
        streaming=True,
        required=("column",),
    ),
    OpSpec(
        "regex_filter",
        "Regex filter",
        "Keep (keep=true) or drop (keep=false) rows whose column matches a Python regex.",
        {"keep": True, "case_sensitive": True},
        _make_regex_filter,
        streaming=True,
        required=("column", "pattern"),
    ),
    OpSpec(
        "regex_replace",
        "Regex replace",
        "Replace matches of a Python regex in text columns (backreferences as \\1).",
        {"columns": None, "replacement": "", "case_sensitive": True},
        _make_regex_replace,
        streaming=True,
        required=("pattern",),
    ),
    OpSpec(
        "redact_pii",
        "Redact personal data",
        "Replace emails, phone numbers, cards (Luhn), IBANs (mod-97), IPv4/IPv6 with labels.",
        {"columns": None, "types": None, "labels": None},
        _make_redact,
        streaming=True,
    ),
    OpSpec(
        "map_template",
        "Map to a training format",
        "instruction/input/output -> chat 'messages', or prompt/completion, with templates.",
        {
            "format": "chat",
            "system": None,
            "user_template": "{instruction}\n\n{input}",
            "assistant_template": "{output}",
            "prompt_template": "{instruction}\n\n{input}",
            "completion_template": "{output}",
            "keep_columns": None,
        },
        _make_template,
        streaming=True,
    ),
    OpSpec(
        "select_columns",
        "Select and rename columns",
        "Keep the given columns (in that order) and rename some ({old: new}).",
        {"columns": None, "rename": None},
        _make_select,
        streaming=True,
    ),
    OpSpec(
        "dedupe",
        "Drop exact duplicates",
        "Keep the first of rows equal on the given columns (all columns by default).",
        {"columns": None},
        _make_dedupe,
    ),
    OpSpec(
        "near_dedupe",
        "Drop near-duplicates",
        "MinHash over character shingles + LSH; drop rows whose estimated Jaccard similarity "
        "to an earlier kept row is >= threshold.",
        {"threshold": 0.8, "num_perm": 128, "shingle": 5, "seed": 1, "lowercase": True},
        _make_near_dedupe,
        required=("column",),
    ),
    OpSpec(
        "split",
        "Train/validation/test split",
        "Adds a split column, seeded; stratified by a column when given.",
        {
            "ratios": {"train": 0.8, "validation": 0.1, "test": 0.1},
            "seed": 0,
            "stratify": None,
            "column": "split",
        },
        _make_split,
    ),
    OpSpec(
        "sample",
        "Sample",
        "A seeded random sample of n rows (or a fraction), in the original order.",
        {"n": None, "fraction": None, "seed": 0},
        _make_sample,
    ),
    OpSpec("shuffle", "Shuffle", "Seeded random order.", {"seed": 0}, _make_shuffle),
    OpSpec(
        "concatenate",
        "Concatenate",
        "Append the rows of other versions (DATASET@VERSION); missing columns become null.",
        {},
        _make_concat,
        required=("others",),
    ),
):
    register_op(_spec)


# -- previews ----------------------------------------------------------------------------------
def count_pii(
    table: pa.Table, columns: list[str] | None = None, types: list[str] | None = None
) -> dict[str, int]:
    """Items of each PII type that ``redact_pii`` would replace (a preview, changes nothing)."""
    try:
        kinds = pii.check_types(types)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    counts = dict.fromkeys(kinds, 0)
    for c in text_columns(table, columns):
        for v in table[c].to_pylist():
            if v:
                pii.redact_text(v, kinds, counts=counts)
    return counts


def preview(
    table: pa.Table, op: str, params: dict[str, Any] | None = None, n: int = 5
) -> list[dict[str, Any]]:
    """The first ``n`` rows after a row-wise operation (e.g. a template mapping)."""
    spec = get_op(op)
    if not spec.streaming:
        raise ConfigError(f"Preview works on row-wise operations; '{op}' needs the whole table.")
    fn = spec.make(spec.resolve(params or {}), OpContext(read_version=_no_versions))
    out: list[dict[str, Any]] = fn(table.slice(0, n)).to_pylist()
    return out


def _no_versions(ref: str) -> pa.Table:
    raise ConfigError("This preview cannot read other versions.")


def split_table(table: pa.Table, name: str, column: str = "split") -> pa.Table:
    """The rows of one part (``train``, ``validation``, ``test``) of a split version."""
    if column not in table.column_names:
        raise ConfigError(f"This version has no '{column}' column.", "Apply the split operation.")
    return table.filter(pc.equal(table[column], name))


def normalize_text(text: str, form: str = "NFKC") -> str:
    """What ``normalize`` does to one string (for previews and tests)."""
    s = unicodedata.normalize(form, text)  # type: ignore[arg-type]
    s = re.sub(r"[^\S\n]+", " ", s)
    s = re.sub(r" ?\n\s*\n\s*", "\n\n", s)
    return s.strip()
