"""Preparation operations: a registry of named, parameterized table transforms.

Each operation has a name, documented defaults and a factory that turns the
parameters into what runs. *Row-wise* operations (``streaming=True``) are a
function ``Table -> Table`` applied block by block while reading the input
version. The *whole-table* ones (dedupe, near-dedupe, split, sample, shuffle,
concatenate) are a plan over :class:`Rows`: they first read only what they
decide on (the key columns, or just the row count), then stream the output
block by block (a shuffle goes through bucket files on the workspace's disk),
so a version far larger than memory can be deduplicated, split, sampled or
shuffled. Near-dedupe keeps one MinHash signature per row in memory (512 bytes
at the default 128 permutations). The parameters recorded in a version's
``operation`` are the full set, defaults filled in, so a recipe replays exactly.

Splits are stored as a ``split`` column (``train``/``validation``/``test``)
in one version rather than as separate versions: one version is one
content hash a training run can cite, and :func:`split_table` selects a part.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import shutil
import string
import tempfile
import types
import typing
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.core.data import pii
from app.core.errors import ConfigError
from app.core.patterns import IGNORECASE, compile_pattern
from app.core.store.files import make_owned_temp_dir

Transform = Callable[[pa.Table], pa.Table]
#: Rows per block that a whole-table operation reads or writes at a time.
BLOCK_ROWS = 65_536


class Rows:
    """The input of a whole-table operation: a few columns read whole, or every column
    block by block, in order. Backed by a version's Parquet file or by a table."""

    def __init__(self, schema: pa.Schema, num_rows: int) -> None:
        self.schema = schema
        self.num_rows = num_rows

    @staticmethod
    def of(data: pa.Table | pq.ParquetFile) -> Rows:
        return _ParquetRows(data) if isinstance(data, pq.ParquetFile) else _TableRows(data)

    def column_blocks(self, columns: list[str]) -> Iterator[pa.Table]:
        """Blocks of just ``columns`` (whatever their sizes), in order."""
        raise NotImplementedError

    def blocks(self) -> Iterator[pa.Table]:
        """Blocks of every column, in order."""
        raise NotImplementedError

    def read(self) -> pa.Table:
        return pa.concat_tables(self.blocks()) if self.num_rows else self.schema.empty_table()


class _TableRows(Rows):
    def __init__(self, table: pa.Table) -> None:
        super().__init__(table.schema, table.num_rows)
        self.table = table

    def column_blocks(self, columns: list[str]) -> Iterator[pa.Table]:
        t = self.table.select(columns)
        for start in range(0, t.num_rows, BLOCK_ROWS):
            yield t.slice(start, BLOCK_ROWS)

    def blocks(self) -> Iterator[pa.Table]:
        for start in range(0, self.num_rows, BLOCK_ROWS):
            yield self.table.slice(start, BLOCK_ROWS)

    def read(self) -> pa.Table:
        return self.table


class _ParquetRows(Rows):
    def __init__(self, pf: pq.ParquetFile) -> None:
        super().__init__(pf.schema_arrow, pf.metadata.num_rows)
        self.pf = pf

    def column_blocks(self, columns: list[str]) -> Iterator[pa.Table]:
        for batch in self.pf.iter_batches(batch_size=BLOCK_ROWS, columns=columns):
            yield pa.Table.from_batches([batch])

    def blocks(self) -> Iterator[pa.Table]:
        for i in range(self.pf.num_row_groups):
            yield self.pf.read_row_group(i)


#: A whole-table operation: the output blocks, in order, from the input rows.
Plan = Callable[[Rows], Iterator[pa.Table]]


def _no_versions(ref: str) -> Rows:
    raise ConfigError("This preview cannot read other versions.")


def _no_progress(fraction: float | None, message: str = "") -> None:
    return None


@dataclass(frozen=True)
class OpContext:
    """What an operation may need besides its parameters."""

    #: The rows of another version (``DATASET@VERSION``), for concatenate.
    open_version: Callable[[str], Rows] = _no_versions
    #: A folder on the workspace's disk for temporary files (None: the system's temp folder).
    scratch: Path | None = None
    progress: Callable[[float | None, str], None] = _no_progress
    check_cancelled: Callable[[], None] | None = None

    def step(self, fraction: float | None, message: str) -> None:
        """Report progress and give a cancel request its chance."""
        if self.check_cancelled is not None:
            self.check_cancelled()
        self.progress(fraction, message)


@dataclass(frozen=True)
class OpSpec:
    """One registered operation: row-wise (``make``) or whole-table (``plan``)."""

    name: str
    title: str
    description: str
    defaults: dict[str, Any]
    make: Callable[[dict[str, Any], OpContext], Transform] | None = None
    required: tuple[str, ...] = ()
    plan: Callable[[dict[str, Any], OpContext], Plan] | None = None
    #: The dataclass of the parameters (fields, help, what the form shows); None: untyped.
    params_type: type | None = None

    @property
    def streaming(self) -> bool:
        """Row-wise: applied block by block, and it can be previewed on a few rows."""
        return self.make is not None

    def run_on_table(
        self, params: dict[str, Any], table: pa.Table, ctx: OpContext | None = None
    ) -> pa.Table:
        """The operation applied to an in-memory table (tests, previews, small data)."""
        ctx = ctx or OpContext()
        full = self.resolve(params)
        if self.make is not None:
            return self.make(full, ctx)(table)
        assert self.plan is not None
        parts = list(self.plan(full, ctx)(Rows.of(table)))
        return pa.concat_tables(parts) if parts else table.schema.empty_table()

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
        compile_pattern(pattern)
    except ValueError as exc:
        raise ConfigError(f"Invalid regular expression: {exc}.") from None
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


def row_digests(
    rows: Rows, columns: list[str], ctx: OpContext | None = None, what: str = ""
) -> np.ndarray:
    """A 16-byte digest per row of ``columns`` as canonical JSON (``void16`` array):
    equal rows have equal digests; 16 bytes a row in memory, wherever the data is."""
    n = rows.num_rows
    if not columns:
        one = hashlib.blake2b(b"[]", digest_size=16).digest()
        return np.frombuffer(one * n, dtype="V16")
    out = np.empty(n, dtype="V16")
    pos = 0
    for block in rows.column_blocks(columns):
        keys = row_json(block, columns)
        raw = b"".join(hashlib.blake2b(k.encode("utf-8"), digest_size=16).digest() for k in keys)
        out[pos : pos + len(keys)] = np.frombuffer(raw, dtype="V16")
        pos += len(keys)
        if ctx is not None:
            ctx.step(0.5 * pos / max(n, 1), f"{what}: {pos:,} rows read")
    return out


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
    rx = compile_pattern(_regex(p["pattern"]), 0 if p["case_sensitive"] else IGNORECASE)

    def run(t: pa.Table) -> pa.Table:
        col = text_columns(t, [p["column"]])[0]
        hits = [v is not None and rx.search(v) is not None for v in t[col].to_pylist()]
        mask = pa.array(hits, pa.bool_())
        return t.filter(mask if p["keep"] else pc.invert(mask))

    return run


def _make_regex_replace(p: dict[str, Any], _: OpContext) -> Transform:
    rx = compile_pattern(_regex(p["pattern"]), 0 if p["case_sensitive"] else IGNORECASE)
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
def _kept(rows: Rows, keep: np.ndarray, ctx: OpContext, what: str) -> Iterator[pa.Table]:
    """The blocks of ``rows`` filtered by the boolean mask ``keep`` (one entry per row)."""
    start = 0
    total = max(rows.num_rows, 1)
    for block in rows.blocks():
        n = block.num_rows
        m = keep[start : start + n]
        start += n
        ctx.step(start / total, f"{what}: writing row {start:,}")
        if m.all():
            yield block
        elif m.any():
            yield block.filter(pa.array(m))


def _make_dedupe(p: dict[str, Any], ctx: OpContext) -> Plan:
    def plan(rows: Rows) -> Iterator[pa.Table]:
        cols = p["columns"] or rows.schema.names
        text_columns(rows.schema, cols)
        n = rows.num_rows
        digests = row_digests(rows, cols, ctx, "dedupe")
        keep = np.zeros(n, dtype=bool)
        if n:
            _, first = np.unique(digests, return_index=True)  # first occurrences
            keep[first] = True
        del digests
        yield from _kept(rows, keep, ctx, "dedupe")

    return plan


def _make_near_dedupe(p: dict[str, Any], ctx: OpContext) -> Plan:
    from app.core.data.minhash import near_duplicates_of, signatures

    thr = float(p["threshold"])
    if not 0.0 < thr <= 1.0:
        raise ConfigError("threshold must be in (0, 1].")
    num_perm = int(p["num_perm"])

    def plan(rows: Rows) -> Iterator[pa.Table]:
        col = text_columns(rows.schema, [p["column"]])[0]
        n = rows.num_rows
        sig = np.empty((n, num_perm), dtype=np.uint32)
        pos = 0
        for block in rows.column_blocks([col]):
            texts = [v or "" for v in block[col].to_pylist()]
            if p["lowercase"]:
                texts = [s.lower() for s in texts]
            sig[pos : pos + len(texts)] = signatures(
                texts, num_perm, int(p["shingle"]), int(p["seed"])
            )
            pos += len(texts)
            ctx.step(0.6 * pos / max(n, 1), f"near_dedupe: {pos:,} signatures")
        drop = near_duplicates_of(sig, thr)
        del sig
        keep = np.ones(n, dtype=bool)
        keep[drop] = False
        yield from _kept(rows, keep, ctx, "near_dedupe")

    return plan


def _largest_remainder(n: int, ratios: list[float]) -> list[int]:
    raw = [n * r for r in ratios]
    counts = [int(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _make_split(p: dict[str, Any], ctx: OpContext) -> Plan:
    ratios: dict[str, float] = dict(p["ratios"])
    total = sum(ratios.values())
    if not ratios or total <= 0 or any(v < 0 for v in ratios.values()):
        raise ConfigError("ratios must be non-negative and not all zero.")
    names = list(ratios)
    fractions = [ratios[k] / total for k in names]

    def plan(rows: Rows) -> Iterator[pa.Table]:
        rng = np.random.default_rng(int(p["seed"]))
        n = rows.num_rows
        if p["stratify"]:
            col = p["stratify"]
            text_columns(rows.schema, [col])
            groups: dict[str, list[int]] = {}
            i = 0
            for block in rows.column_blocks([col]):
                for v in block[col].to_pylist():
                    groups.setdefault(json.dumps(v, sort_keys=True, default=str), []).append(i)
                    i += 1
            parts = [np.array(groups.pop(k), dtype=np.int64) for k in sorted(groups)]
        else:
            parts = [np.arange(n, dtype=np.int64)]
        codes = np.zeros(n, dtype=np.int32)  # index into names, per row
        for part in parts:
            perm = part[rng.permutation(part.size)]
            start = 0
            for code, count in enumerate(_largest_remainder(part.size, fractions)):
                codes[perm[start : start + count]] = code
                start += count
        labels = pa.array(names, pa.string())
        start = 0
        for block in rows.blocks():
            arr = labels.take(pa.array(codes[start : start + block.num_rows]))
            start += block.num_rows
            ctx.step(start / max(n, 1), f"split: writing row {start:,}")
            if p["column"] in block.column_names:
                yield _replace(block, p["column"], arr)
            else:
                yield block.append_column(p["column"], arr)

    return plan


def _make_sample(p: dict[str, Any], ctx: OpContext) -> Plan:
    def plan(rows: Rows) -> Iterator[pa.Table]:
        n = p["n"]
        if n is None:
            if p["fraction"] is None:
                raise ConfigError("sample needs n or fraction.")
            n = round(rows.num_rows * float(p["fraction"]))
        n = min(int(n), rows.num_rows)
        rng = np.random.default_rng(int(p["seed"]))
        keep = np.zeros(rows.num_rows, dtype=bool)
        keep[rng.choice(rows.num_rows, size=n, replace=False)] = True
        yield from _kept(rows, keep, ctx, "sample")

    return plan


#: Rows per bucket of the disk-backed shuffle: one bucket is in memory at a time.
SHUFFLE_BUCKET_ROWS = 262_144


def _make_shuffle(p: dict[str, Any], ctx: OpContext) -> Plan:
    def plan(rows: Rows) -> Iterator[pa.Table]:
        n = rows.num_rows
        rng = np.random.default_rng(int(p["seed"]))
        perm = rng.permutation(n)  # output row j is input row perm[j]
        if n <= SHUFFLE_BUCKET_ROWS:
            table = rows.read()
            ctx.step(0.5, "shuffle: reordering")
            for start in range(0, n, BLOCK_ROWS):
                yield table.take(pa.array(perm[start : start + BLOCK_ROWS]))
            return
        yield from _bucket_shuffle(rows, perm, ctx)

    return plan


def _bucket_shuffle(rows: Rows, perm: np.ndarray, ctx: OpContext) -> Iterator[pa.Table]:
    """Reorder rows by ``perm`` through bucket files: pass 1 sends each row to the bucket
    of its output position, pass 2 sorts one bucket at a time in memory."""
    n = rows.num_rows
    dest = np.empty(n, dtype=np.int64)
    dest[perm] = np.arange(n, dtype=np.int64)  # output position of each input row
    del perm
    n_buckets = -(-n // SHUFFLE_BUCKET_ROWS)
    # An owned name: a killed shuffle's bucket files are removed at the next start.
    tmp_dir = make_owned_temp_dir(Path(ctx.scratch or tempfile.gettempdir()), "shuffle")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, tmp_dir, True)
        tmp = str(tmp_dir)
        paths = [Path(tmp) / f"{b:05d}.arrow" for b in range(n_buckets)]
        writers: list[pa.ipc.RecordBatchStreamWriter | None] = [None] * n_buckets
        pending: list[list[pa.Table]] = [[] for _ in range(n_buckets)]
        pending_rows = [0] * n_buckets
        opts = pa.ipc.IpcWriteOptions(compression="lz4")

        def flush(b: int) -> None:
            if not pending[b]:
                return
            part = pa.concat_tables(pending[b])
            if writers[b] is None:
                writers[b] = pa.ipc.new_stream(paths[b], part.schema, options=opts)
            writer = writers[b]
            assert writer is not None
            writer.write_table(part)
            pending[b], pending_rows[b] = [], 0

        try:
            start = 0
            for block in rows.blocks():
                d = dest[start : start + block.num_rows]
                start += block.num_rows
                bucket = d // SHUFFLE_BUCKET_ROWS
                order = np.argsort(bucket, kind="stable")
                cuts = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
                for nb in np.flatnonzero(np.diff(cuts)):
                    b = int(nb)
                    idx = order[cuts[b] : cuts[b + 1]]
                    part = block.take(pa.array(idx)).append_column("__pos", pa.array(d[idx]))
                    pending[b].append(part)
                    pending_rows[b] += part.num_rows
                    if pending_rows[b] >= 8192:
                        flush(b)
                ctx.step(0.5 * start / n, f"shuffle: {start:,} rows to buckets")
            for i in range(n_buckets):
                flush(i)
        finally:
            for w in writers:
                if w is not None:
                    w.close()
        del dest
        for b, path in enumerate(paths):
            with pa.ipc.open_stream(path) as reader:
                bucket_table = reader.read_all()
            path.unlink()
            order = pc.sort_indices(bucket_table["__pos"])
            out = bucket_table.drop_columns(["__pos"]).take(order)
            ctx.step(0.5 + 0.5 * (b + 1) / n_buckets, f"shuffle: bucket {b + 1}/{n_buckets}")
            for start in range(0, out.num_rows, BLOCK_ROWS):
                yield out.slice(start, BLOCK_ROWS)


def _make_concat(p: dict[str, Any], ctx: OpContext) -> Plan:
    refs = p["others"]
    if isinstance(refs, str):
        refs = [refs]

    def plan(rows: Rows) -> Iterator[pa.Table]:
        sources = [rows, *[ctx.open_version(r) for r in refs]]
        try:
            schema = pa.unify_schemas([s.schema for s in sources], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ConfigError(f"Cannot concatenate: the columns do not match ({exc}).") from None
        total = max(sum(s.num_rows for s in sources), 1)
        done = 0
        for src in sources:
            for block in src.blocks():
                cols = []
                for f in schema:
                    if f.name in block.column_names:
                        c = block[f.name]
                        try:
                            cols.append(c if c.type == f.type else c.cast(f.type))
                        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                            raise ConfigError(
                                f"Cannot concatenate column '{f.name}': {exc}."
                            ) from None
                    else:
                        cols.append(pa.nulls(block.num_rows, f.type))
                done += block.num_rows
                ctx.step(done / total, f"concatenate: {done:,} rows")
                yield pa.Table.from_arrays(cols, schema=schema)

    return plan


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


# -- typed parameters ---------------------------------------------------------------------------
# Each operation's parameters are a dataclass: its fields, defaults and help text are the one
# source of the defaults recorded in versions, of the CLI's listing and of the Prepare form
# (app/ui/forms.py builds the widgets from ``dataclasses.fields``). A field's metadata says
# what it holds beyond its type: ``kind`` "column" / "columns" (names from the dataset's
# schema; ``text`` when they must be text), "regex", "template" (``{column}`` placeholders),
# "versions", "file"; ``minimum`` / ``maximum`` bound a number; ``choices`` lists the values
# of a list of strings. The serialised form stays the plain ``{"name", "params"}`` dict.


def meta(
    *,
    help: str,
    label: str = "",
    kind: str = "",
    text: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
    headers: tuple[str, str] = ("Name", "Value"),
) -> dict[str, Any]:
    """A parameter field's metadata: its help text and what the form and the checks need
    (``headers``: the two columns of a dict's table)."""
    return {
        "headers": headers,
        "help": help,
        "label": label,
        "kind": kind,
        "text": text,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
    }


_COLUMNS_HELP = "Text columns to change (none ticked: every text column)."


@dataclass
class NormalizeParams:
    columns: list[str] | None = field(
        default=None, metadata=meta(help=_COLUMNS_HELP, kind="columns", text=True)
    )
    unicode: Literal["NFKC", "NFC", "NFKD", "NFD"] | None = field(
        default="NFKC",
        metadata=meta(
            help="Unicode normal form (NFKC folds look-alike characters).", label="Unicode form"
        ),
    )
    collapse_whitespace: bool = field(
        default=True, metadata=meta(help="Runs of spaces to one, blank lines to one.")
    )
    strip: bool = field(default=True, metadata=meta(help="Trim spaces at both ends.", label="Trim"))


@dataclass
class DropEmptyParams:
    columns: list[str] | None = field(
        default=None,
        metadata=meta(
            help="Columns that must be blank (none ticked: every column).", kind="columns"
        ),
    )
    how: Literal["all", "any"] = field(
        default="all",
        metadata=meta(
            help="Drop a row when all, or any, of these columns are blank.", label="Drop when"
        ),
    )


@dataclass
class LengthFilterParams:
    column: str = field(
        metadata=meta(help="The text column whose length is measured.", kind="column", text=True)
    )
    min: int | None = field(
        default=None, metadata=meta(help="Shortest length kept (none: no lower bound).", minimum=0)
    )
    max: int | None = field(
        default=None, metadata=meta(help="Longest length kept (none: no upper bound).", minimum=0)
    )
    unit: Literal["chars", "tokens"] = field(
        default="chars", metadata=meta(help="Count characters or tokens.")
    )
    tokenizer: str | None = field(
        default=None,
        metadata=meta(help="A tokenizer.json file (needed when counting tokens).", kind="file"),
    )


@dataclass
class RegexFilterParams:
    column: str = field(metadata=meta(help="The text column searched.", kind="column", text=True))
    pattern: str = field(metadata=meta(help="A Python regular expression.", kind="regex"))
    keep: bool = field(
        default=True,
        metadata=meta(help="Keep the matching rows (off: drop them).", label="Keep matches"),
    )
    case_sensitive: bool = field(default=True, metadata=meta(help="Upper and lower case differ."))


@dataclass
class RegexReplaceParams:
    pattern: str = field(metadata=meta(help="A Python regular expression.", kind="regex"))
    columns: list[str] | None = field(
        default=None, metadata=meta(help=_COLUMNS_HELP, kind="columns", text=True)
    )
    replacement: str = field(
        default="", metadata=meta(help="What replaces each match (\\1 for a group).")
    )
    case_sensitive: bool = field(default=True, metadata=meta(help="Upper and lower case differ."))


@dataclass
class RedactPiiParams:
    columns: list[str] | None = field(
        default=None, metadata=meta(help=_COLUMNS_HELP, kind="columns", text=True)
    )
    types: list[str] | None = field(
        default=None,
        metadata=meta(help="What to redact (none ticked: everything).", choices=pii.PII_TYPES),
    )
    labels: dict[str, str] | None = field(
        default=None,
        metadata=meta(
            help="Replacement text per type (empty: [EMAIL], [PHONE], ...).",
            choices=pii.PII_TYPES,
            headers=("Type", "Replacement"),
        ),
    )


@dataclass
class MapTemplateParams:
    format: Literal["chat", "prompt_completion"] = field(
        default="chat", metadata=meta(help="Chat messages, or prompt and completion columns.")
    )
    system: str | None = field(
        default=None, metadata=meta(help="An optional system message.", kind="template")
    )
    user_template: str = field(
        default="{instruction}\n\n{input}",
        metadata=meta(help="The user turn; {column} inserts a column.", kind="template"),
    )
    assistant_template: str = field(
        default="{output}",
        metadata=meta(help="The assistant turn; {column} inserts a column.", kind="template"),
    )
    prompt_template: str = field(
        default="{instruction}\n\n{input}",
        metadata=meta(help="The prompt; {column} inserts a column.", kind="template"),
    )
    completion_template: str = field(
        default="{output}",
        metadata=meta(help="The completion; {column} inserts a column.", kind="template"),
    )
    keep_columns: list[str] | None = field(
        default=None, metadata=meta(help="Columns kept beside the new ones.", kind="columns")
    )


@dataclass
class SelectColumnsParams:
    columns: list[str] | None = field(
        default=None,
        metadata=meta(help="Columns kept, in order (none ticked: all).", kind="columns"),
    )
    rename: dict[str, str] | None = field(
        default=None,
        metadata=meta(
            help="New names for some columns.", kind="rename", headers=("Column", "New name")
        ),
    )


@dataclass
class DedupeParams:
    columns: list[str] | None = field(
        default=None,
        metadata=meta(
            help="Rows equal on these columns are duplicates (none ticked: all).", kind="columns"
        ),
    )


@dataclass
class NearDedupeParams:
    column: str = field(metadata=meta(help="The text column compared.", kind="column", text=True))
    threshold: float = field(
        default=0.8,
        metadata=meta(
            help="Estimated similarity at or above which a row is dropped.", minimum=0.01, maximum=1
        ),
    )
    num_perm: int = field(
        default=128,
        metadata=meta(help="MinHash permutations (more: finer).", minimum=16, maximum=1024),
    )
    shingle: int = field(
        default=5, metadata=meta(help="Characters per shingle.", minimum=1, maximum=64)
    )
    seed: int = field(default=1, metadata=meta(help="Seed of the hash functions.", minimum=0))
    lowercase: bool = field(default=True, metadata=meta(help="Compare in lower case."))


@dataclass
class SplitParams:
    ratios: dict[str, float] = field(
        default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1},
        metadata=meta(help="Share of rows per part (any scale).", headers=("Part", "Share")),
    )
    seed: int = field(default=0, metadata=meta(help="Seed of the random assignment.", minimum=0))
    stratify: str | None = field(
        default=None,
        metadata=meta(help="Keep each value's share equal across parts.", kind="column"),
    )
    column: str = field(
        default="split", metadata=meta(help="Name of the new column.", label="New column")
    )


@dataclass
class SampleParams:
    n: int | None = field(
        default=None,
        metadata=meta(help="Rows to keep (or give a fraction).", label="Rows", minimum=0),
    )
    fraction: float | None = field(
        default=None, metadata=meta(help="Share of rows to keep.", minimum=0, maximum=1)
    )
    seed: int = field(default=0, metadata=meta(help="Seed of the random choice.", minimum=0))


@dataclass
class ShuffleParams:
    seed: int = field(default=0, metadata=meta(help="Seed of the random order.", minimum=0))


@dataclass
class ConcatenateParams:
    others: list[str] = field(
        metadata=meta(help="Dataset versions whose rows are appended.", kind="versions")
    )


def _spec(
    name: str,
    title: str,
    description: str,
    params: type,
    make: Callable[[dict[str, Any], OpContext], Transform] | None = None,
    plan: Callable[[dict[str, Any], OpContext], Plan] | None = None,
) -> OpSpec:
    """An OpSpec whose defaults and required parameters come from its dataclass."""
    defaults: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(params):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
        else:
            required.append(f.name)
    return OpSpec(
        name,
        title,
        description,
        defaults,
        make,
        tuple(required),
        plan,
        params_type=params,
    )


# -- the registry -------------------------------------------------------------------------------
for _spec_ in (
    _spec(
        "normalize",
        "Normalize text",
        "Unicode normalization (NFKC by default), runs of spaces to one, blank lines to one, trim.",
        NormalizeParams,
        _make_normalize,
    ),
    _spec(
        "drop_empty",
        "Drop empty rows",
        "Drop rows whose columns are all (or any) null or blank.",
        DropEmptyParams,
        _make_drop_empty,
    ),
    _spec(
        "length_filter",
        "Length filter",
        "Keep rows whose text length (characters, or tokens of a tokenizer.json) is in [min, max].",
        LengthFilterParams,
        _make_length,
    ),
    _spec(
        "regex_filter",
        "Regex filter",
        "Keep (or drop) rows whose column matches a Python regular expression.",
        RegexFilterParams,
        _make_regex_filter,
    ),
    _spec(
        "regex_replace",
        "Regex replace",
        "Replace matches of a Python regular expression in text columns (groups as \\1).",
        RegexReplaceParams,
        _make_regex_replace,
    ),
    _spec(
        "redact_pii",
        "Redact personal data",
        "Replace emails, phone numbers, cards (Luhn), IBANs (mod-97), IPv4/IPv6 with labels.",
        RedactPiiParams,
        _make_redact,
    ),
    _spec(
        "map_template",
        "Map to a training format",
        "Columns to chat 'messages' (user and assistant turns), or to prompt/completion.",
        MapTemplateParams,
        _make_template,
    ),
    _spec(
        "select_columns",
        "Select and rename columns",
        "Keep the given columns (in that order) and rename some.",
        SelectColumnsParams,
        _make_select,
    ),
    _spec(
        "dedupe",
        "Drop exact duplicates",
        "Keep the first of rows equal on the given columns (all columns by default).",
        DedupeParams,
        plan=_make_dedupe,
    ),
    _spec(
        "near_dedupe",
        "Drop near-duplicates",
        "MinHash over character shingles + LSH; drop rows whose estimated Jaccard similarity "
        "to an earlier kept row is >= threshold.",
        NearDedupeParams,
        plan=_make_near_dedupe,
    ),
    _spec(
        "split",
        "Train/validation/test split",
        "Adds a split column, seeded; stratified by a column when given.",
        SplitParams,
        plan=_make_split,
    ),
    _spec(
        "sample",
        "Sample",
        "A seeded random sample of n rows (or a fraction), in the original order.",
        SampleParams,
        plan=_make_sample,
    ),
    _spec("shuffle", "Shuffle", "Seeded random order.", ShuffleParams, plan=_make_shuffle),
    _spec(
        "concatenate",
        "Concatenate",
        "Append the rows of other versions; missing columns become empty.",
        ConcatenateParams,
        plan=_make_concat,
    ),
):
    register_op(_spec_)


# -- checks per field -----------------------------------------------------------------------------
def template_columns(template: str) -> list[str]:
    """The ``{column}`` names a template inserts (ConfigError when it is malformed)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"The template is malformed: {exc}.", "Write {column} or {{ for {."
        ) from None
    return [name for _, name, _, _ in parts if name is not None]


def _type_problem(tp: Any, v: Any) -> str:
    """What is wrong with the type of ``v`` for a field annotated ``tp`` ("" when it fits):
    parameters from a recipe file are untrusted JSON."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if v is None and len(args) < len(typing.get_args(tp)):
            return ""
        tp = args[0] if len(args) == 1 else tp
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        return "" if v in allowed else f"Choose one of: {', '.join(map(str, allowed))}."
    if tp is bool:
        return "" if isinstance(v, bool) else "Expected yes or no."
    if tp is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
        return "" if ok else "Expected a whole number."
    if tp is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return "" if ok else "Expected a number."
    if tp is str:
        return "" if isinstance(v, str) else "Expected text."
    if origin is list:
        ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
        return "" if ok else "Expected a list of names."
    if origin is dict:
        value_type = typing.get_args(tp)[1]
        ok = isinstance(v, dict) and all(
            isinstance(k, str) and not _type_problem(value_type, x) for k, x in v.items()
        )
        return "" if ok else "Expected names with a value each."
    return ""


def field_problems(op: str, params: dict[str, Any], schema: pa.Schema) -> dict[str, str]:
    """What is wrong with each parameter of ``op`` on data of ``schema``: field -> message.

    Empty when the parameters can run. Messages name the field's problem in the words a
    form shows next to it (the columns the dataset has, the allowed range).
    """
    spec = get_op(op)
    out: dict[str, str] = {}
    if spec.params_type is None:
        try:
            spec.resolve(params)
        except ConfigError as exc:
            out[""] = str(exc)
        return out
    full = {**spec.defaults, **params}
    names = schema.names
    have = ", ".join(names) or "no columns"
    hints = typing.get_type_hints(spec.params_type)
    for f in dataclasses.fields(spec.params_type):
        v = full.get(f.name)
        meta = f.metadata
        kind = meta.get("kind", "")
        if v is None or v == "" or v == []:
            if f.name in spec.required:
                out[f.name] = "Choose a column." if kind == "column" else "Required."
            continue
        if wrong := _type_problem(hints[f.name], v):
            out[f.name] = wrong
            continue
        if kind == "column":
            if v not in names:
                out[f.name] = f"The dataset has no column '{v}' (it has {have})."
            elif meta.get("text") and not _is_text(schema.field(v).type):
                out[f.name] = f"'{v}' is not a text column."
        elif kind == "columns":
            missing = [c for c in v if c not in names]
            if missing:
                out[f.name] = f"The dataset has no column(s) {', '.join(missing)} (it has {have})."
        elif kind == "regex":
            try:
                compile_pattern(v)
            except ValueError as exc:
                out[f.name] = f"Not a valid regular expression: {exc}."
        elif kind == "template":
            try:
                unknown = [c for c in template_columns(v) if c not in names]
            except ConfigError as exc:
                out[f.name] = exc.message
            else:
                if unknown:
                    out[f.name] = (
                        f"The dataset has no column(s) {', '.join(unknown)} (it has {have})."
                    )
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            lo, hi = meta.get("minimum"), meta.get("maximum")
            if lo is not None and v < lo:
                out[f.name] = f"At least {lo:g}."
            elif hi is not None and v > hi:
                out[f.name] = f"At most {hi:g}."
        choices = meta.get("choices") or ()
        if choices and isinstance(v, list) and (bad := [c for c in v if c not in choices]):
            out[f.name] = f"Unknown: {', '.join(bad)} (choose from {', '.join(choices)})."
    if op == "map_template":  # only the templates of the chosen format are used
        unused = (
            ("prompt_template", "completion_template")
            if full.get("format") == "chat"
            else ("system", "user_template", "assistant_template")
        )
        for k in unused:
            out.pop(k, None)
    if op == "length_filter" and full.get("unit") == "tokens" and not full.get("tokenizer"):
        out.setdefault("tokenizer", "Counting tokens needs a tokenizer.json file.")
    if op == "split" and "ratios" not in out:
        ratios = full.get("ratios") or {}
        if not ratios or sum(ratios.values()) <= 0 or any(r < 0 for r in ratios.values()):
            out["ratios"] = "Give each part a share of zero or more, not all zero."
    if op == "sample" and full.get("n") is None and full.get("fraction") is None:
        out["n"] = "Give a number of rows or a fraction."
    return out


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
    out: list[dict[str, Any]] = spec.run_on_table(params or {}, table.slice(0, n)).to_pylist()
    return out


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
