"""The version diff: row alignment (edits, inserts, deletes, moves), keys, paging, labels."""

from __future__ import annotations

import json
import time
from typing import Any
from unittest.mock import patch

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.data import diff
from app.core.data.diff import (
    KINDS,
    VersionDiff,
    diff_tables,
    diff_versions,
    read_changes,
    read_version_changes,
    take_rows,
)
from app.core.data.ops import Rows
from app.core.data.store import ROW_GROUP_ROWS, DatasetStore
from app.core.errors import ConfigError

ROW = st.fixed_dictionaries({"id": st.integers(0, 6), "t": st.sampled_from(["a", "b", "c", "dd"])})
EDIT = st.one_of(
    st.tuples(st.just("edit"), st.integers(0, 10**6), st.sampled_from(["id", "t"]), ROW),
    st.tuples(st.just("insert"), st.integers(0, 10**6), ROW),
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
    st.tuples(st.just("move"), st.integers(0, 10**6), st.integers(0, 10**6)),
)


def _apply(rows: list[dict[str, Any]], edits: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    out = [dict(r) for r in rows]
    for e in edits:
        if e[0] == "insert":
            out.insert(e[1] % (len(out) + 1), dict(e[2]))
        elif not out:
            continue
        elif e[0] == "edit":
            out[e[1] % len(out)][e[2]] = e[3][e[2]]
        elif e[0] == "delete":
            del out[e[1] % len(out)]
        else:
            out.insert(e[2] % len(out), out.pop(e[1] % len(out)))
    return out


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    schema = pa.schema([("id", pa.int64()), ("t", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def _entries(d: VersionDiff) -> list[tuple[str, int | None, int | None]]:
    return [d.entry(i) for i in range(d.changes)]


def _check_consistent(old: list[dict[str, Any]], new: list[dict[str, Any]], d: VersionDiff) -> None:
    """The diff accounts for every row once, and what it calls equal is equal."""
    ents = _entries(d)
    olds = [o for _, o, _ in ents if o is not None]
    news = [n for _, _, n in ents if n is not None]
    assert len(olds) == len(set(olds)) and len(news) == len(set(news))
    kept_old = [r for i, r in enumerate(old, 1) if i not in set(olds)]
    kept_new = [r for i, r in enumerate(new, 1) if i not in set(news)]
    assert kept_old == kept_new  # unlisted rows are the same rows, in the same order
    for kind, o, n in ents:
        if kind == "moved":
            assert o is not None and n is not None and old[o - 1] == new[n - 1]
        elif kind == "changed":
            assert o is not None and n is not None and old[o - 1] != new[n - 1]
        elif kind == "added":
            assert o is None and n is not None
        else:
            assert kind == "removed" and o is not None and n is None
    counts = {k: sum(1 for e in ents if e[0] == k) for k in KINDS}
    assert (d.rows_changed, d.rows_added, d.rows_removed, d.rows_moved) == (
        counts["changed"],
        counts["added"],
        counts["removed"],
        counts["moved"],
    )
    assert len(old) - len(olds) == len(new) - len(news)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(ROW, max_size=30), st.lists(EDIT, max_size=6))
def test_any_edits_are_accounted_for_exactly(rows: list[dict[str, Any]], edits: Any) -> None:
    new = _apply(rows, edits)
    d = diff_tables(_table(rows), _table(new))
    _check_consistent(rows, new, d)
    if rows == new:
        assert d.changes == 0
    # the paths taken for big versions: anchors between tiny exact stretches, runs paired in order
    with patch.object(diff, "EXACT_ROWS", 3), patch.object(diff, "PAIR_ROWS", 2):
        big = diff_tables(_table(rows), _table(new))
    _check_consistent(rows, new, big)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 60), st.data())
def test_one_cell_edit_is_one_changed_row(n: int, data: st.DataObject) -> None:
    rows = [{"id": i, "t": f"r{i % 3}"} for i in range(n)]  # text repeats, ids do not
    at = data.draw(st.integers(0, n - 1))
    new = [dict(r) for r in rows]
    new[at]["t"] = "edited"
    d = diff_tables(_table(rows), _table(new))
    assert (d.rows_changed, d.rows_added, d.rows_removed, d.rows_moved) == (1, 0, 0, 0)
    (change,) = read_changes(Rows.of(_table(rows)), Rows.of(_table(new)), d, 0, 10)
    # numbered from 1, as the table shows rows
    assert (change.kind, change.old_row, change.new_row) == ("changed", at + 1, at + 1)
    assert change.changed == ["t"]
    assert change.before == rows[at] and change.after == new[at]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 60), st.data())
def test_an_insert_or_a_delete_shifts_nothing(n: int, data: st.DataObject) -> None:
    rows = [{"id": i % 5, "t": "same"} for i in range(n)]  # many identical rows
    at = data.draw(st.integers(0, n))
    inserted = [*rows[:at], {"id": 9, "t": "new"}, *rows[at:]]
    d = diff_tables(_table(rows), _table(inserted))
    assert _entries(d) == [("added", None, at + 1)]
    if n:
        gone = data.draw(st.integers(0, n - 1))
        d = diff_tables(_table(rows), _table(rows[:gone] + rows[gone + 1 :]))
        assert d.rows_removed == 1 and d.changes == 1
        _check_consistent(rows, rows[:gone] + rows[gone + 1 :], d)


def test_an_edit_next_to_an_insert_pairs_the_row_with_most_cells_in_common() -> None:
    rows = [{"id": i, "t": f"r{i}"} for i in range(6)]
    new = [*rows[:2], {"id": 100, "t": "brand new"}, {"id": 2, "t": "r2 edited"}, *rows[3:]]
    d = diff_tables(_table(rows), _table(new))
    assert _entries(d) == [("added", None, 3), ("changed", 3, 4)]


def test_a_sort_moves_rows_and_changes_none() -> None:
    rng = np.random.default_rng(0)
    rows = [{"id": int(i), "t": f"r{i}"} for i in rng.permutation(5000)]
    new = sorted(rows, key=lambda r: r["id"])
    d = diff_tables(_table(rows), _table(new))
    assert (d.rows_changed, d.rows_added, d.rows_removed) == (0, 0, 0)
    assert 0 < d.rows_moved < 5000
    _check_consistent(rows, new, d)


def test_keyed_diff_matches_by_key() -> None:
    rows = [{"id": i, "t": f"t{i}"} for i in range(5)]
    new = [r for r in rows if r["id"] != 1]
    new[0] = {"id": 0, "t": "changed"}
    new = [*new[::-1], {"id": 9, "t": "t9"}]  # order does not matter with a key
    d = diff_tables(_table(rows), _table(new), key="id")
    assert sorted(_entries(d), key=str) == sorted(
        [("changed", 1, 4), ("added", None, 5), ("removed", 2, None)], key=str
    )
    with pytest.raises(ConfigError, match="repeated values in the new"):
        diff_tables(_table(rows), _table([*new, {"id": 9, "t": "x"}]), key="id")
    with pytest.raises(ConfigError, match="same type in both"):
        diff_tables(_table(rows), _table(new), key="nope")


def test_schema_changes_and_cells_of_added_columns() -> None:
    old = pa.table({"a": [1, 2], "b": ["x", "y"]})
    new = pa.table({"a": [1, 3], "c": [True, False]})
    d = diff_tables(old, new)
    assert d.columns_added == ["c"] and d.columns_removed == ["b"] and d.columns == ["a", "c", "b"]
    assert _entries(d) == [("changed", 2, 2)]
    (ch,) = read_changes(Rows.of(old), Rows.of(new), d, 0, 5)
    assert ch.before == {"a": 2, "b": "y"} and ch.after == {"a": 3, "c": False}
    assert ch.changed == ["a"]


def test_versions_page_across_row_groups_with_labels(workspace: Any) -> None:
    """Versions of several row groups: pages read only their rows, and join up to the whole."""
    n = 3 * ROW_GROUP_ROWS + 17
    rows = [{"id": i, "t": f"r{i % 100}"} for i in range(n)]
    new = [dict(r) for r in rows]
    for i in range(5, n, 997):
        new[i]["t"] = "edited"
    del new[ROW_GROUP_ROWS + 3]
    new.insert(2 * ROW_GROUP_ROWS, {"id": -1, "t": "inserted"})
    store = DatasetStore(workspace)
    v1 = store.create_dataset("d", _table(rows))
    ds = v1.dataset_id
    v2 = store.create_version(
        ds, _table(new), message="e", operation={"name": "edit", "params": {}}
    )
    d = diff_versions(workspace, ds, v1.hash[:8], v2.hash[:8])
    assert (d.old_label, d.new_label) == ("v1", "v2")
    assert d.rows_added == 1 and d.rows_removed == 1
    assert d.rows_changed == len(range(5, n, 997)) and d.rows_moved == 0
    _check_consistent(rows, new, d)
    whole = read_version_changes(workspace, d, 0, d.changes)
    paged = [c for s in range(0, d.changes, 7) for c in read_version_changes(workspace, d, s, 7)]
    assert [c.to_dict() for c in paged] == [c.to_dict() for c in whole]
    for c in whole:
        if c.kind == "changed":
            assert c.after == new[c.new_row - 1] and c.before == rows[c.old_row - 1]
            assert c.changed == ["t"]
    assert read_version_changes(workspace, d, d.changes, 10) == []
    out = json.loads(json.dumps(d.to_dict()))
    assert out["changes"] == d.changes and out["first_changes"][0]["kind"] == "changed"
    assert out["first_changes"][0]["old_row"] == 6  # row 5 (0-based) as the table shows it


def test_take_rows_in_any_order_across_row_groups(workspace: Any) -> None:
    n = 2 * ROW_GROUP_ROWS + 5
    v = DatasetStore(workspace).create_dataset("d", pa.table({"i": list(range(n))}))
    rows = Rows.of(DatasetStore(workspace).parquet_file(v.dataset_id))
    idx = np.array([n - 1, 0, ROW_GROUP_ROWS, 3, ROW_GROUP_ROWS - 1])
    assert take_rows(rows, idx)["i"].to_pylist() == idx.tolist()
    assert take_rows(Rows.of(pa.table({"i": list(range(n))})), idx)["i"].to_pylist() == idx.tolist()


def test_a_big_diff_is_bounded() -> None:
    """200k rows, one cell edited and one row inserted: the alignment trims and anchors
    instead of comparing all pairs (size chosen to run in a few seconds here)."""
    n = 200_000
    text = [f"row {i % 1000}" for i in range(n)]
    old = pa.table({"id": np.arange(n), "t": text})
    ids = np.arange(n)
    ids[12_345] = -5
    new = pa.table(
        {
            "id": np.r_[ids[:150_000], [-9], ids[150_000:]],
            "t": [*text[:150_000], "x", *text[150_000:]],
        }
    )
    t0 = time.perf_counter()
    d = diff_tables(old, new)
    took = time.perf_counter() - t0
    assert _entries(d) == [("changed", 12_346, 12_346), ("added", None, 150_001)]
    assert took < 60  # a bound, not a benchmark


def test_against_an_empty_version_with_no_column_in_common() -> None:
    old = _table([{"id": i, "t": "x"} for i in range(3)])
    empty = pa.table({"other": pa.array([], pa.string())})
    d = diff_tables(old, empty)
    assert _entries(d) == [("removed", 1, None), ("removed", 2, None), ("removed", 3, None)]
    assert d.columns_added == ["other"] and d.columns_removed == ["id", "t"]
    back = diff_tables(empty, old)
    assert (back.rows_added, back.rows_removed, back.changes) == (3, 0, 3)


def test_progress_rises_once_and_a_cancel_stops_the_diff() -> None:
    from app.core.data.ops import BLOCK_ROWS, OpContext

    n = 3 * BLOCK_ROWS
    t = pa.table({"i": np.arange(n)})
    seen: list[float] = []
    d = diff_tables(t, t, ctx=OpContext(progress=lambda f, _m: seen.append(f) if f else None))
    assert d.changes == 0
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and seen[0] <= 0.5

    class Stop(Exception):
        pass

    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) > 2:
            raise Stop

    with pytest.raises(Stop):
        diff_tables(t, t, ctx=OpContext(check_cancelled=check))
