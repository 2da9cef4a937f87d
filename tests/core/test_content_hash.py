"""The dataset content hash: the same values give the same hash however they are
batched or laid out in memory; any change of a value, a null, a type or a name
gives another."""

from __future__ import annotations

import datetime as dt
import decimal
import random
from typing import Any

import pyarrow as pa
import pytest

from app.core.data.content_hash import FALLBACK_CHUNK_ROWS, content_hash
from app.core.data.store import ROW_GROUP_ROWS, DatasetStore


def _table(n: int, seed: int = 0) -> pa.Table:
    rng = random.Random(seed)

    def maybe(v: Any) -> Any:
        return None if rng.random() < 0.1 else v

    return pa.table(
        {
            "i": pa.array([maybe(i) for i in range(n)], pa.int64()),
            "f": pa.array([maybe(i / 3) for i in range(n)], pa.float32()),
            "b": pa.array([maybe(i % 3 == 0) for i in range(n)], pa.bool_()),
            "s": pa.array([maybe("x" * (i % 7)) for i in range(n)], pa.string()),
            "ls": pa.array([maybe(f"é{i}") for i in range(n)], pa.large_string()),
            "bin": pa.array([maybe(bytes([i % 256])) for i in range(n)], pa.binary()),
            "ts": pa.array(
                [maybe(dt.datetime(2026, 1, 1) + dt.timedelta(seconds=i)) for i in range(n)],
                pa.timestamp("ms"),
            ),
            "dec": pa.array(
                [maybe(decimal.Decimal(i) / 100) for i in range(n)], pa.decimal128(12, 2)
            ),
            "tags": pa.array(
                [maybe([f"t{i % 4}"] * (i % 3)) for i in range(n)], pa.list_(pa.string())
            ),
            "kv": pa.array(
                [maybe([("k", i), ("j", None)][: i % 3]) for i in range(n)],
                pa.map_(pa.string(), pa.int64()),
            ),
            "pair": pa.array([maybe([i % 1000, None]) for i in range(n)], pa.list_(pa.int16(), 2)),
            "msg": pa.array(
                [maybe({"role": "user", "n": i}) for i in range(n)],
                pa.struct([("role", pa.string()), ("n", pa.int32())]),
            ),
        }
    )


def test_batching_and_slicing_do_not_change_the_hash() -> None:
    n = 3000
    table = _table(n)
    whole = content_hash(table.combine_chunks())
    assert content_hash(table.to_batches(max_chunksize=1000)[0]) != whole  # a part is not the whole
    for size in (1, 999, 2048, n):
        assert content_hash(pa.Table.from_batches(table.to_batches(max_chunksize=size))) == whole
    # slices of a bigger table carry offsets into shared buffers: same values, same hash
    padded = pa.concat_tables([_table(50, seed=9), table, _table(50, seed=8)]).combine_chunks()
    assert content_hash(padded.slice(50, n)) == whole


def test_every_kind_of_change_changes_the_hash() -> None:
    base = pa.table({"a": pa.array([1, 2, None], pa.int64()), "s": ["x", "", None]})
    h = content_hash(base)
    variants = [
        pa.table({"a": pa.array([1, 2, 0], pa.int64()), "s": ["x", "", None]}),  # null -> 0
        pa.table({"a": pa.array([1, 2, None], pa.int64()), "s": ["x", None, None]}),  # "" -> null
        pa.table({"a": pa.array([1, 2, None], pa.int64()), "s": ["x", "", ""]}),  # null -> ""
        pa.table({"a": pa.array([1, 2, None], pa.int32()), "s": ["x", "", None]}),  # type
        pa.table({"b": pa.array([1, 2, None], pa.int64()), "s": ["x", "", None]}),  # name
        pa.table({"a": pa.array([2, 1, None], pa.int64()), "s": ["x", "", None]}),  # order
        pa.table({"a": pa.array([1, 2, None], pa.int64()), "s": ["", "x", None]}),  # order
        pa.table({"a": pa.array([1, 2], pa.int64()), "s": ["x", ""]}),  # a row fewer
        # the same bytes end to end, cut into other values
        pa.table({"a": pa.array([1, 2, None], pa.int64()), "s": ["", "x", None]}),
        pa.table({"s": ["x", "", None], "a": pa.array([1, 2, None], pa.int64())}),  # column order
    ]
    hashes = {content_hash(v) for v in variants}
    assert h not in hashes and len(hashes) == len(variants) - 1  # two variants are the same table


def test_what_sits_under_a_null_does_not_count() -> None:
    clean = pa.array([1, None, 3], pa.int64())
    # the same validity, but garbage in the value slot under the null
    validity = clean.buffers()[0]
    garbage = pa.Array.from_buffers(
        pa.int64(), 3, [validity, pa.py_buffer(pa.array([1, 12345, 3], pa.int64()).buffers()[1])]
    )
    assert garbage.to_pylist() == [1, None, 3]
    assert content_hash(pa.table({"a": garbage})) == content_hash(pa.table({"a": clean}))
    # a null string slot that points at bytes
    s_clean = pa.array(["ab", None, "c"])
    offsets = pa.array([0, 2, 5, 6], pa.int32()).buffers()[1]
    s_garbage = pa.Array.from_buffers(
        pa.string(), 3, [s_clean.buffers()[0], offsets, pa.py_buffer(b"abxyzc")]
    )
    assert s_garbage.to_pylist() == ["ab", None, "c"]
    assert content_hash(pa.table({"s": s_garbage})) == content_hash(pa.table({"s": s_clean}))


def test_a_dictionary_column_hashes_as_its_values(workspace: Any) -> None:
    plain = pa.table({"label": ["a", "b", "a", None]})
    encoded = pa.table({"label": pa.array(["a", "b", "a", None]).dictionary_encode()})
    assert content_hash(encoded) == content_hash(plain)
    store = DatasetStore(workspace)
    v = store.create_dataset("labels", encoded)
    assert v.hash == content_hash(plain)
    assert store.read_table(v.dataset_id).column("label").to_pylist() == ["a", "b", "a", None]


def test_a_column_without_a_byte_form_hashes_its_ipc_chunks() -> None:
    n = FALLBACK_CHUNK_ROWS + 10
    types = pa.array([i % 2 for i in range(n)], pa.int8())
    children = [pa.array(range(n), pa.int64()), pa.array([str(i) for i in range(n)])]
    union = pa.UnionArray.from_sparse(types, children)
    whole = content_hash(pa.table({"u": union}))
    cut = pa.table({"u": pa.chunked_array([union.slice(0, 1234), union.slice(1234)])})
    assert content_hash(cut) == whole
    other = pa.UnionArray.from_sparse(pa.array([1 - i % 2 for i in range(n)], pa.int8()), children)
    assert content_hash(pa.table({"u": other})) != whole


@pytest.mark.parametrize("size", [101, 3000, 10_000])
def test_a_written_version_has_the_hash_of_its_rows(workspace: Any, size: int) -> None:
    table = _table(3 * ROW_GROUP_ROWS + 5, seed=3)
    store = DatasetStore(workspace)
    v = store.create_dataset("t", table.to_batches(max_chunksize=size))
    assert v.hash == content_hash(table)
    assert store.parquet_file(v.dataset_id).num_row_groups == 4  # whole row groups, then the rest
    back = store.read_table(v.dataset_id)
    assert back.to_pylist() == table.to_pylist()
    assert content_hash(back) == v.hash  # what is read back hashes the same
