"""The content hash of a dataset version, computed from its rows as they stream past.

The hash depends only on the schema (names, types, nullability) and the values
in order, never on how the rows were batched, so every path that writes a
version (imports, operations, recipes, the editor) gives the same rows the same
hash. It reads Arrow buffers in place: no row is converted to Python and, for
the common column types, nothing is copied.

Each column feeds its own streams, each one BLAKE3 (a cryptographic hash about four
times faster than sha256 here, so hashing costs little next to parsing and
compressing):

- ``nulls``: the row numbers of its nulls (int64, little-endian), for every type;
  nothing for a column without nulls;
- fixed-width columns (integers, floats, dates, times, timestamps, durations,
  decimals): the value bytes, with the slot under a null set to zero bytes;
- booleans: one byte per row (0/1, 0 under a null);
- strings and binaries: the byte length of each value (int32 for string and
  binary, int64 for the large types; 0 under a null) and the value bytes end to end;
- lists (also large, fixed-size and maps): the length of each list (int64; 0
  under a null), then the values of all the lists end to end as a column of their
  own (recursively, by these same rules);
- structs: each field as a column of its own, null where the struct is null;
- anything else (unions, ...): the Arrow IPC encoding of the column cut into
  fixed chunks of :data:`FALLBACK_CHUNK_ROWS` rows (each chunk concatenated into
  fresh buffers first, so the bytes depend only on the values).

The version hash is BLAKE3 of a header (the scheme, the canonical schema as
JSON, the row count) followed by every stream's digest in column order, as 64
hex digits. Integers are hashed little-endian (every platform DemoAI runs on).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from blake3 import blake3

from app.core.errors import ConfigError

#: Rows per IPC chunk of a column that has no byte-stream form (lists, structs, ...).
FALLBACK_CHUNK_ROWS = 65_536
#: Changes whenever the definition above changes (it is part of every hash).
SCHEME = "demoai-content-v2-blake3"


def _plain_type(t: pa.DataType) -> pa.DataType:
    """``t`` with dictionaries decoded and the inner names of lists and maps made standard.

    Parquet names a list's values "element" and a map's entries after the column;
    Arrow says "item" and "entries": without this, a version read back from its own
    file and written again would get another schema, and so another hash.
    """
    if pa.types.is_dictionary(t):
        return _plain_type(t.value_type)
    if pa.types.is_map(t):
        return pa.map_(
            _plain_type(t.key_type),
            pa.field("value", _plain_type(t.item_type), t.item_field.nullable),
            t.keys_sorted,
        )
    if _is_list_like(t):  # a map was handled above
        item = pa.field("item", _plain_type(t.value_type), t.value_field.nullable)
        if pa.types.is_fixed_size_list(t):
            return pa.list_(item, t.list_size)
        return pa.large_list(item) if pa.types.is_large_list(t) else pa.list_(item)
    if pa.types.is_struct(t):
        return pa.struct(
            [
                pa.field(f.name, _plain_type(f.type), f.nullable)
                for f in (t.field(i) for i in range(t.num_fields))
            ]
        )
    return t


def canonical_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a version stores: metadata stripped, dictionaries decoded, standard
    names inside lists and maps."""
    return pa.schema([pa.field(f.name, _plain_type(f.type), f.nullable) for f in schema])


def schema_to_json(schema: pa.Schema) -> list[dict[str, Any]]:
    """Names, types and nullability, as stored in the database and hashed."""
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def _is_binary_like(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def _is_fixed_width(t: pa.DataType) -> bool:
    if pa.types.is_boolean(t) or pa.types.is_nested(t) or pa.types.is_dictionary(t):
        return False
    if pa.types.is_null(t):
        return False
    try:
        width = t.bit_width
    except ValueError:
        return False
    return bool(width and width % 8 == 0)


def _is_list_like(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_map(t)
    )


def _list_value_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_map(t):
        return pa.struct([t.key_field, t.item_field])
    return t.value_type


class _Column:
    """The streams of one column."""

    def __init__(self, t: pa.DataType) -> None:
        self.type = t
        self.rows = 0
        self.nulls = blake3()
        self.children: list[_Column] = []
        if _is_binary_like(t):
            self.kind = "binary"
            self.streams = [blake3(), blake3()]  # lengths, bytes
            self._offset_type = (
                np.int64 if pa.types.is_large_string(t) or pa.types.is_large_binary(t) else np.int32
            )
        elif pa.types.is_boolean(t):
            self.kind = "bool"
            self.streams = [blake3()]
        elif _is_fixed_width(t):
            self.kind = "fixed"
            self.streams = [blake3()]
            self._width = t.bit_width // 8
        elif _is_list_like(t):
            self.kind = "list"
            self.streams = [blake3()]  # lengths
            self.children = [_Column(_list_value_type(t))]
        elif pa.types.is_struct(t):
            self.kind = "struct"
            self.streams = []
            self.children = [_Column(t.field(i).type) for i in range(t.num_fields)]
        else:
            self.kind = "ipc"
            self.streams = [blake3()]
            self._pending: list[pa.Array] = []
            self._pending_rows = 0

    def update(self, arr: pa.Array) -> None:
        n = len(arr)
        if n == 0:
            return
        valid: np.ndarray | None = None
        if arr.null_count:
            valid = arr.is_valid().to_numpy(zero_copy_only=False)
            self.nulls.update(
                (np.flatnonzero(~valid).astype(np.int64) + self.rows).view(np.uint8).data
            )
        self.rows += n
        if self.kind == "binary":
            self._binary(arr, valid)
        elif self.kind == "fixed":
            self._fixed(arr, valid)
        elif self.kind == "list":
            if pa.types.is_map(arr.type):  # the same layout as a list of (key, item) structs
                arr = arr.view(pa.list_(self.children[0].type))
            lengths = pc.list_value_length(arr).fill_null(0).cast(pa.int64())
            self.streams[0].update(lengths.to_numpy().view(np.uint8).data)
            self.children[0].update(pc.list_flatten(arr))
        elif self.kind == "struct":
            for child, values in zip(self.children, arr.flatten(), strict=True):
                child.update(values)
        elif self.kind == "bool":
            values = arr.fill_null(False) if valid is not None else arr
            self.streams[0].update(values.to_numpy(zero_copy_only=False).view(np.uint8).data)
        else:
            self._pending.append(arr)
            self._pending_rows += n
            while self._pending_rows >= FALLBACK_CHUNK_ROWS:
                self._flush_ipc(FALLBACK_CHUNK_ROWS)

    def _binary(self, arr: pa.Array, valid: np.ndarray | None) -> None:
        if valid is not None:  # drop whatever bytes a null slot may point at
            empty = (
                "" if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) else b""
            )
            arr = arr.fill_null(pa.scalar(empty, type=arr.type))
        bufs = arr.buffers()
        offsets = np.frombuffer(bufs[1], dtype=self._offset_type)[
            arr.offset : arr.offset + len(arr) + 1
        ]
        self.streams[0].update(np.diff(offsets).view(np.uint8).data)
        if bufs[2] is not None and offsets[-1] > offsets[0]:
            self.streams[1].update(memoryview(bufs[2])[int(offsets[0]) : int(offsets[-1])])

    def _fixed(self, arr: pa.Array, valid: np.ndarray | None) -> None:
        w = self._width
        buf = arr.buffers()[1]
        if buf is None:  # no value buffer at all: every slot is a null
            self.streams[0].update(bytes(len(arr) * w))
            return
        data = memoryview(buf)[arr.offset * w : (arr.offset + len(arr)) * w]
        if valid is None:
            self.streams[0].update(data)
            return
        rows = np.frombuffer(data, dtype=np.uint8).reshape(len(arr), w).copy()
        rows[~valid] = 0
        self.streams[0].update(rows.data)

    def _flush_ipc(self, n: int) -> None:
        parts = pa.chunked_array(self._pending, type=self.type)
        chunk = pa.concat_arrays(parts.slice(0, n).chunks)  # n > 0: fresh, exact buffers
        rest = parts.slice(n)
        self._pending = list(rest.chunks)
        self._pending_rows = len(rest)
        batch = pa.RecordBatch.from_arrays([chunk], names=["c"])
        self.streams[0].update(batch.serialize())

    def digests(self) -> bytes:
        if self.kind == "ipc" and self._pending_rows:
            self._flush_ipc(self._pending_rows)
        return (
            self.nulls.digest()
            + b"".join(s.digest() for s in self.streams)
            + b"".join(c.digests() for c in self.children)
        )


class ContentHash:
    """Feed batches with :meth:`update` (any sizes, any chunking); :meth:`hexdigest` at the end."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = canonical_schema(schema)
        self.rows = 0
        self._columns = [_Column(f.type) for f in self.schema]

    def update(self, data: pa.RecordBatch | pa.Table) -> None:
        """Add rows; ``data`` must already have :attr:`schema` (see ``VersionWriter``)."""
        for col, values in zip(self._columns, data.columns, strict=True):
            chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
            for arr in chunks:
                col.update(arr)
        self.rows += data.num_rows

    def hexdigest(self) -> str:
        h = blake3()
        header = {"scheme": SCHEME, "schema": schema_to_json(self.schema), "rows": self.rows}
        h.update(json.dumps(header, sort_keys=True).encode("utf-8") + b"\n")
        for col in self._columns:
            h.update(col.digests())
        return h.hexdigest()


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with exactly ``schema`` (same column names; types cast where they differ)."""
    if batch.schema.equals(schema, check_metadata=False):
        return batch
    if batch.schema.names != schema.names:
        raise ConfigError(
            f"Columns changed while writing: expected {schema.names}, got {batch.schema.names}."
        )
    cols = [
        c if c.type == f.type else c.cast(f.type)
        for c, f in zip(batch.columns, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def content_hash(table: pa.Table | pa.RecordBatch) -> str:
    """The hash a version holding exactly ``table`` gets (nothing is written)."""
    h = ContentHash(table.schema)
    batches = table.to_batches() if isinstance(table, pa.Table) else [table]
    for b in batches:
        h.update(conform(b, h.schema))
    return h.hexdigest()
