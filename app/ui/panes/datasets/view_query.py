"""Sort, filter and search over a Parquet version, computed with Arrow (no Qt).

The result is an array of source row numbers (the *view index*). Filter
expressions use a small, safe language parsed with :mod:`ast` into Arrow
compute calls — nothing is ``eval``-ed:

    len(text) > 200 and label == "spam"
    contains(output, "refund") or not startswith(instruction, "Summarize")
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.core.errors import ConfigError


@dataclass
class ViewQuery:
    """What the user asked the table to show."""

    sort_column: str | None = None
    descending: bool = False
    search: str = ""
    column_filters: dict[str, str] = field(default_factory=dict)  # column -> substring
    expression: str = ""

    def is_identity(self) -> bool:
        return not (
            self.sort_column or self.search or self.column_filters or self.expression.strip()
        )


def _as_text(arr: Any) -> Any:
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return arr
    try:
        return pc.cast(arr, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in arr.to_pylist()], pa.string())


class _Expr:
    """Compiles the filter language to a function of a table -> boolean array."""

    FUNCS = ("len", "lower", "upper", "contains", "startswith", "endswith", "matches", "isnull")

    def __init__(self, source: str, columns: list[str]) -> None:
        self.columns = columns
        self.used: set[str] = set()
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            raise ConfigError(f"The filter expression is not valid: {exc.msg}.", _HELP) from exc
        self.fn = self._compile(tree.body)

    def _compile(self, node: ast.AST) -> Callable[[pa.Table], Any]:
        if isinstance(node, ast.BoolOp):
            parts = [self._compile(v) for v in node.values]
            op = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene

            def boolop(t: pa.Table) -> Any:
                out = parts[0](t)
                for p in parts[1:]:
                    out = op(out, p(t))
                return out

            return boolop
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self._compile(node.operand)
            return lambda t: pc.invert(inner(t))
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, right = self._compile(node.left), self._compile(node.comparators[0])
            ops = {
                ast.Eq: pc.equal,
                ast.NotEq: pc.not_equal,
                ast.Lt: pc.less,
                ast.LtE: pc.less_equal,
                ast.Gt: pc.greater,
                ast.GtE: pc.greater_equal,
            }
            fn = ops.get(type(node.ops[0]))
            if fn is None:
                raise ConfigError("Only ==, !=, <, <=, >, >= comparisons are allowed.", _HELP)
            return lambda t: fn(left(t), right(t))
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool)):
            value = node.value
            return lambda t: pa.scalar(value)
        if isinstance(node, ast.Name):
            if node.id not in self.columns:
                raise ConfigError(
                    f"There is no column '{node.id}'.", f"Columns: {', '.join(self.columns)}."
                )
            self.used.add(node.id)
            name = node.id
            return lambda t: t.column(name)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            fname = node.func.id
            if fname not in self.FUNCS or node.keywords:
                raise ConfigError(f"Unknown function '{fname}'.", _HELP)
            args = [self._compile(a) for a in node.args]

            def call(t: pa.Table) -> Any:
                vals = [a(t) for a in args]
                if fname == "len":
                    return pc.utf8_length(_as_text(vals[0]))
                if fname == "lower":
                    return pc.utf8_lower(_as_text(vals[0]))
                if fname == "upper":
                    return pc.utf8_upper(_as_text(vals[0]))
                if fname == "isnull":
                    return pc.is_null(vals[0])
                pattern = vals[1].as_py() if isinstance(vals[1], pa.Scalar) else None
                if not isinstance(pattern, str):
                    raise ConfigError(f"{fname}() takes a column and a text in quotes.", _HELP)
                text = _as_text(vals[0])
                if fname == "contains":
                    return pc.match_substring(text, pattern, ignore_case=True)
                if fname == "startswith":
                    return pc.starts_with(text, pattern)
                if fname == "endswith":
                    return pc.ends_with(text, pattern)
                return pc.match_substring_regex(text, pattern)

            return call
        raise ConfigError("This filter expression uses something that is not allowed.", _HELP)


_HELP = (
    "Use column names, text in quotes, numbers, ==, !=, <, >, and, or, not, and the functions "
    "len, lower, upper, contains, startswith, endswith, matches (regex), isnull."
)


def compute_view(pf: pq.ParquetFile, q: ViewQuery) -> np.ndarray | None:
    """Source row numbers to show, in order (None = all rows in file order)."""
    if q.is_identity():
        return None
    names = pf.schema_arrow.names
    expr = _Expr(q.expression, names) if q.expression.strip() else None
    needed = set(q.column_filters)
    if expr is not None:
        needed |= expr.used
    if q.sort_column:
        if q.sort_column not in names:
            raise ConfigError(f"There is no column '{q.sort_column}'.")
        needed.add(q.sort_column)
    text_cols = [
        f.name
        for f in pf.schema_arrow
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    if q.search:
        needed |= set(text_cols)
    table = pf.read(columns=sorted(needed), use_threads=True) if needed else None
    n = pf.metadata.num_rows
    mask: Any = None

    def both(m: Any) -> None:
        nonlocal mask
        mask = m if mask is None else pc.and_kleene(mask, m)

    if table is not None:
        for col, text in q.column_filters.items():
            if text:
                both(pc.match_substring(_as_text(table.column(col)), text, ignore_case=True))
        if q.search and text_cols:
            any_hit: Any = None
            for col in text_cols:
                hit = pc.match_substring(table.column(col), q.search, ignore_case=True)
                any_hit = hit if any_hit is None else pc.or_kleene(any_hit, hit)
            both(any_hit)
        elif q.search:
            both(pa.array(np.zeros(n, dtype=bool)))
        if expr is not None:
            result = expr.fn(table)
            if not pa.types.is_boolean(result.type):
                raise ConfigError(
                    "The filter expression must be a condition (true or false).", _HELP
                )
            both(result)
    if mask is not None:
        idx = np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))
    else:
        idx = np.arange(n, dtype=np.int64)
    if q.sort_column and table is not None:
        keys = table.column(q.sort_column).take(pa.array(idx)).combine_chunks()
        order = pc.array_sort_indices(
            keys, order="descending" if q.descending else "ascending"
        ).to_numpy()
        idx = idx[order]
    return idx.astype(np.int64)
