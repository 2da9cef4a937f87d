"""Datasets and their immutable, content-addressed versions.

A dataset is a name and a pointer (``current_version``) into its versions. A
version is one folder ``datasets/<dataset-id>/<version-hash>/`` holding
``data.parquet`` and ``manifest.json``; it is written under a temporary name
and renamed into place, then registered in the database in one transaction.

The version hash is the content hash of :mod:`app.core.data.content_hash`: sha256
over the schema (names, types, nullability; metadata stripped) and the values,
read from the Arrow buffers as the rows stream past. The same rows in the same
order with the same schema give the same hash, however they were batched while
being written (importers, operations and recipes all go through
:class:`VersionWriter`); what sits under a null never counts. Parquet row groups
hold :data:`ROW_GROUP_ROWS` rows each, so a viewer can read any block of rows by
row group without loading the rest.

Because versions are content-addressed, a dataset never holds two versions with
the same hash: an operation that changes nothing returns the version it started
from, and :meth:`DatasetStore.revert` moves ``current_version`` back to the old
version (recording the move in ``dataset_log``) instead of copying it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import app.core.data.schema  # noqa: F401  (registers the tables)
from app.core.data.content_hash import SCHEME as HASH_SCHEME
from app.core.data.content_hash import ContentHash, conform, content_hash, schema_to_json
from app.core.errors import ConfigError, NotFoundError
from app.core.store.files import atomic_write_json, is_temp_name, owned_temp_name

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

#: Rows per Parquet write (a multiple of ROW_GROUP_ROWS) and per batch when streaming.
CHUNK_ROWS = 65_536
#: Rows per Parquet row group: small enough that the editor decodes little on a jump
#: (it reads whole row groups), large enough for good compression.
ROW_GROUP_ROWS = 8_192
#: Version of the on-disk layout of a version folder (in manifest.json). 2: the
#: content hash is :data:`~app.core.data.content_hash.SCHEME` (format 1 hashed IPC chunks).
MANIFEST_FORMAT = 2
DATA_FILE = "data.parquet"
#: Parquet codec of version files: snappy is ~3.5x smaller than none on text, and
#: costs about a third of the import time.
PARQUET_COMPRESSION = "snappy"
#: A column is dictionary-encoded only when its first chunk has at most this share of
#: distinct values: on free text, dictionary encoding halves the write speed and the
#: file is no smaller (measured: 1M instruction rows, snappy, 1.15 s / 77 MB with
#: dictionaries everywhere vs 0.56 s / 74 MB without).
DICTIONARY_MAX_DISTINCT = 0.1
MANIFEST_FILE = "manifest.json"


# -- records -------------------------------------------------------------------------
@dataclass
class DatasetRecord:
    """One dataset: its name and the version it currently points to."""

    id: str
    name: str
    created_at: float
    current_version: str | None
    source: str | None
    rows: int | None = None
    columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class VersionRecord:
    """One immutable version of a dataset."""

    hash: str
    dataset_id: str
    parent_hash: str | None
    message: str
    operation: dict[str, Any]
    created_at: float
    rows: int
    schema: list[dict[str, Any]]
    path: Path  # the version folder

    @property
    def data_path(self) -> Path:
        return self.path / DATA_FILE

    @property
    def short(self) -> str:
        return self.hash[:12]

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["path"] = str(self.path)
        return d


# -- hashing and writing ----------------------------------------------------------------
class VersionWriter:
    """Streams batches into a temporary version folder, hashing them as they pass.

    Use :meth:`write` for each table or batch, then :meth:`finish`; :meth:`abort`
    (or an exception inside ``with``) removes everything written.
    """

    def __init__(self, tmp_dir: Path, *, compression: str | None = None) -> None:
        self.tmp_dir = tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=False)
        self.schema: pa.Schema | None = None
        self.rows = 0
        self._compression = compression or PARQUET_COMPRESSION
        self._writer: pq.ParquetWriter | None = None
        self._hash: ContentHash | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._hasher: ThreadPoolExecutor | None = None
        self._hash_jobs: list[Future[None]] = []
        self.finished = False

    def __enter__(self) -> VersionWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()

    def _open(self, schema: pa.Schema) -> None:
        self._hash = ContentHash(schema)
        self.schema = self._hash.schema

    def _open_writer(self, first: pa.Table) -> pq.ParquetWriter:
        assert self.schema is not None
        dictionary = [
            f.name
            for f, col in zip(self.schema, first.columns, strict=True)
            if _low_cardinality(col.chunk(0) if col.num_chunks else pa.array([], f.type))
        ]
        return pq.ParquetWriter(
            self.tmp_dir / DATA_FILE,
            self.schema,
            compression=self._compression,
            write_statistics=False,
            use_dictionary=dictionary,
        )

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Append rows (any batching); they are written in row groups of ``ROW_GROUP_ROWS``."""
        if self.schema is None:
            self._open(data.schema)
        assert self.schema is not None and self._hash is not None
        batches = data.to_batches() if isinstance(data, pa.Table) else [data]
        for b in batches:
            if b.num_rows == 0:
                continue
            b = conform(b, self.schema)
            self._hash_async(b)
            self._pending.append(b)
            self._pending_rows += b.num_rows
        while self._pending_rows >= CHUNK_ROWS:
            self._emit(CHUNK_ROWS)

    def _hash_async(self, batch: pa.RecordBatch) -> None:
        """Hash ``batch`` in a helper thread (hashlib releases the GIL), in order."""
        assert self._hash is not None
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="version-hash")
        self._hash_jobs.append(self._hasher.submit(self._hash.update, batch))
        # A single worker runs jobs in order; keep only a few batches queued.
        while len(self._hash_jobs) > 4:
            self._hash_jobs.pop(0).result()

    def _emit(self, n: int) -> None:
        """Write the first ``n`` pending rows (a multiple of ROW_GROUP_ROWS unless last)."""
        assert self.schema is not None
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        chunk = table.slice(0, n)
        rest = table.slice(n)
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows
        if self._writer is None:
            self._writer = self._open_writer(chunk)
        self._writer.write_table(chunk, row_group_size=ROW_GROUP_ROWS)
        self.rows += chunk.num_rows

    def finish(self, empty_schema: pa.Schema | None = None) -> tuple[str, int, pa.Schema]:
        """Flush, close and return (hash, rows, schema)."""
        if self.schema is None:
            if empty_schema is None:
                raise ConfigError("There are no rows to write.", "Check the input file.")
            self._open(empty_schema)
        if self._pending_rows:
            self._emit(self._pending_rows)
        assert self.schema is not None and self._hash is not None
        if self._writer is None:  # no rows: a valid empty file with the schema
            self._writer = self._open_writer(self.schema.empty_table())
        self._writer.close()
        self._stop_hasher()
        self.finished = True
        return self._hash.hexdigest(), self.rows, self.schema

    def _stop_hasher(self) -> None:
        jobs, self._hash_jobs = self._hash_jobs, []
        try:
            for job in jobs:
                job.result()
        finally:
            if self._hasher is not None:
                self._hasher.shutdown(wait=True)
                self._hasher = None

    def abort(self) -> None:
        """Close and delete the temporary folder."""
        if self._writer is not None and not self.finished:
            with contextlib.suppress(Exception):
                self._writer.close()
        with contextlib.suppress(Exception):
            self._stop_hasher()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _low_cardinality(col: pa.Array) -> bool:
    """Whether dictionary encoding pays for a column, judged from its first chunk."""
    if len(col) == 0 or pa.types.is_nested(col.type):
        return False
    col = col.slice(0, 4096)  # a sample is enough to tell labels from free text
    try:
        distinct = pc.count_distinct(col, mode="all").as_py()
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return False
    return bool(distinct <= DICTIONARY_MAX_DISTINCT * len(col))


def hash_table(table: pa.Table) -> str:
    """The content hash a version of ``table`` would get (writes nothing)."""
    return content_hash(table)


# -- the service -------------------------------------------------------------------------
def _now() -> float:
    return time.time()


class DatasetStore:
    """Datasets and versions of one workspace."""

    def __init__(self, workspace: Workspace) -> None:
        self.ws = workspace
        self.db = workspace.db
        self.root: Path = workspace.datasets_dir

    # -- reading --------------------------------------------------------------------------
    def _record(self, row: dict[str, Any]) -> DatasetRecord:
        rec = DatasetRecord(
            id=row["id"],
            name=row["name"],
            created_at=row["created_at"],
            current_version=row["current_version"],
            source=row["source"],
        )
        if rec.current_version:
            v = self.db.query_one(
                "SELECT rows, schema FROM dataset_versions WHERE dataset_id = ? AND hash = ?",
                (rec.id, rec.current_version),
            )
            if v:
                rec.rows = int(v["rows"])
                rec.columns = [c["name"] for c in json.loads(v["schema"])]
        return rec

    def _version(self, row: dict[str, Any]) -> VersionRecord:
        return VersionRecord(
            hash=row["hash"],
            dataset_id=row["dataset_id"],
            parent_hash=row["parent_hash"],
            message=row["message"],
            operation=json.loads(row["operation"]),
            created_at=row["created_at"],
            rows=int(row["rows"]),
            schema=json.loads(row["schema"]),
            path=self.ws.root / row["path"],
        )

    def list_datasets(self) -> list[DatasetRecord]:
        """Every dataset, newest first."""
        rows = self.db.query("SELECT * FROM datasets ORDER BY created_at DESC, id")
        return [self._record(r) for r in rows]

    def get(self, ref: str) -> DatasetRecord:
        """A dataset by id, unique id prefix, or unique name."""
        row = self.db.query_one("SELECT * FROM datasets WHERE id = ?", (ref,))
        if row is None:
            rows = self.db.query("SELECT * FROM datasets WHERE name = ?", (ref,))
            if not rows and len(ref) >= 4:
                rows = self.db.query(
                    "SELECT * FROM datasets WHERE id LIKE ? ESCAPE '\\'",
                    (ref.replace("%", "\\%").replace("_", "\\_") + "%",),
                )
            if len(rows) > 1:
                raise ConfigError(
                    f"'{ref}' matches {len(rows)} datasets.", "Use the dataset id instead."
                )
            row = rows[0] if rows else None
        if row is None:
            raise NotFoundError(f"No dataset '{ref}'.", "List datasets with `demoai data list`.")
        return self._record(row)

    def versions(self, dataset: str) -> list[VersionRecord]:
        """Versions of a dataset, oldest first."""
        ds = self.get(dataset)
        rows = self.db.query(
            "SELECT * FROM dataset_versions WHERE dataset_id = ? ORDER BY created_at, rowid",
            (ds.id,),
        )
        return [self._version(r) for r in rows]

    def version(self, dataset: str, version: str | None = None) -> VersionRecord:
        """A version by hash or unique hash prefix; None: the current version."""
        ds = self.get(dataset)
        ref = version or ds.current_version
        if not ref:
            raise NotFoundError(f"Dataset '{ds.name}' has no version yet.")
        rows = self.db.query(
            "SELECT * FROM dataset_versions WHERE dataset_id = ? AND hash LIKE ?",
            (ds.id, ref.lower() + "%"),
        )
        if len(rows) > 1:
            raise ConfigError(f"Version '{ref}' is ambiguous.", "Give more of the hash.")
        if not rows:
            raise NotFoundError(
                f"Dataset '{ds.name}' has no version '{ref}'.",
                f"See `demoai data versions {ds.id}`.",
            )
        return self._version(rows[0])

    def resolve(self, ref: str) -> VersionRecord:
        """``DATASET`` or ``DATASET@VERSION`` to a version."""
        name, _, ver = ref.partition("@")
        return self.version(name, ver or None)

    def log(self, dataset: str) -> list[dict[str, Any]]:
        """Every move of ``current_version`` (import, operation, revert), oldest first."""
        ds = self.get(dataset)
        return self.db.query(
            "SELECT version_hash, action, message, created_at FROM dataset_log "
            "WHERE dataset_id = ? ORDER BY id",
            (ds.id,),
        )

    # -- opening data (no copy) -------------------------------------------------------------
    def parquet_file(self, ref: str) -> pq.ParquetFile:
        """The version's Parquet file: ``metadata.num_rows``, ``read_row_group(i)`` for block reads.

        Not memory-mapped: the editor jumps around a file that may be larger than RAM, and
        every mapped page it touched would stay in its resident memory (10M rows, 200
        random jumps: 330 MB resident mapped vs 238 MB read, at the same speed).
        """
        return pq.ParquetFile(self.resolve(ref).data_path, memory_map=False)

    def open_dataset(self, ref: str) -> Any:
        """A ``pyarrow.dataset.Dataset`` over the version (lazy scans, filters, projections)."""
        import pyarrow.dataset as pads

        return pads.dataset(self.resolve(ref).data_path, format="parquet")

    def read_table(self, ref: str, columns: list[str] | None = None) -> pa.Table:
        """The whole version as an Arrow table (memory-mapped read)."""
        return pq.read_table(self.resolve(ref).data_path, columns=columns, memory_map=True)

    def iter_batches(self, ref: str, batch_size: int = CHUNK_ROWS) -> Iterator[pa.RecordBatch]:
        """The version's rows in batches, streaming."""
        pf = self.parquet_file(ref)
        yield from pf.iter_batches(batch_size=batch_size)

    # -- writing ---------------------------------------------------------------------------
    def new_dataset_id(self) -> str:
        return uuid.uuid4().hex[:12]

    @contextlib.contextmanager
    def writer(self, dataset_id: str) -> Iterator[VersionWriter]:
        """A :class:`VersionWriter` in a temporary folder of the dataset (removed on error)."""
        tmp = self.root / dataset_id / owned_temp_name("version")
        w = VersionWriter(tmp)
        try:
            yield w
        except BaseException:
            w.abort()
            raise

    def commit(
        self,
        writer: VersionWriter,
        *,
        dataset_id: str,
        message: str,
        operation: dict[str, Any],
        parent: str | None,
        new_dataset_name: str | None = None,
        source: str | None = None,
        extra_manifest: dict[str, Any] | None = None,
        empty_schema: pa.Schema | None = None,
        action: str = "commit",
    ) -> VersionRecord:
        """Finish ``writer``, move its folder into place and register the version.

        ``new_dataset_name`` creates the dataset row in the same transaction. When
        the dataset already has a version with the same hash, that version is
        reused (and made current) and the new files are discarded.
        """
        try:
            digest, rows, schema = writer.finish(empty_schema)
        except BaseException:
            writer.abort()
            if new_dataset_name is not None:
                shutil.rmtree(self.root / dataset_id, ignore_errors=True)
            raise
        final = self.root / dataset_id / digest
        now = _now()
        rel = final.relative_to(self.ws.root).as_posix()
        op_json = json.dumps(operation, sort_keys=True, ensure_ascii=False)
        schema_json = schema_to_json(schema)
        try:
            existing = self.db.query_one(
                "SELECT * FROM dataset_versions WHERE dataset_id = ? AND hash = ?",
                (dataset_id, digest),
            )
            if existing is None:
                manifest = {
                    "format": MANIFEST_FORMAT,
                    "dataset_id": dataset_id,
                    "hash": digest,
                    "parent": parent,
                    "message": message,
                    "operation": operation,
                    "rows": rows,
                    "schema": schema_json,
                    "created_at": now,
                    "hash_scheme": HASH_SCHEME,
                    "row_group_rows": ROW_GROUP_ROWS,
                    **(extra_manifest or {}),
                }
                atomic_write_json(writer.tmp_dir / MANIFEST_FILE, manifest)
                if final.exists():  # left over from a crash before the DB row: same content
                    shutil.rmtree(final)
                writer.tmp_dir.rename(final)
            else:
                writer.abort()
            with self.db.transaction() as c:
                if new_dataset_name is not None:
                    c.execute(
                        "INSERT INTO datasets(id, name, created_at, current_version, source) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (dataset_id, new_dataset_name, now, digest, source),
                    )
                if existing is None:
                    c.execute(
                        "INSERT INTO dataset_versions(hash, dataset_id, parent_hash, message, "
                        "operation, created_at, rows, schema, path) VALUES (?,?,?,?,?,?,?,?,?)",
                        (
                            digest,
                            dataset_id,
                            parent,
                            message,
                            op_json,
                            now,
                            rows,
                            json.dumps(schema_json),
                            rel,
                        ),
                    )
                c.execute(
                    "UPDATE datasets SET current_version = ? WHERE id = ?", (digest, dataset_id)
                )
                c.execute(
                    "INSERT INTO dataset_log(dataset_id, version_hash, action, message, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (dataset_id, digest, action, message, now),
                )
        except BaseException:
            writer.abort()
            if new_dataset_name is not None:
                shutil.rmtree(self.root / dataset_id, ignore_errors=True)
            raise
        return self.version(dataset_id, digest)

    def create_version(
        self,
        dataset: str,
        data: pa.Table | Iterable[pa.RecordBatch],
        *,
        message: str,
        operation: dict[str, Any],
        parent: str | None = None,
        schema: pa.Schema | None = None,
    ) -> VersionRecord:
        """Write ``data`` (a table or batches) as a new version of ``dataset`` and make it current.

        ``parent`` defaults to the current version.
        """
        ds = self.get(dataset)
        parent = parent if parent is not None else ds.current_version
        if isinstance(data, pa.Table):
            schema = schema or data.schema
        with self.writer(ds.id) as w:
            if isinstance(data, pa.Table):
                w.write(data)
            else:
                for b in data:
                    w.write(b)
        return self.commit(
            w,
            dataset_id=ds.id,
            message=message,
            operation=operation,
            parent=parent,
            empty_schema=schema,
            action=str(operation.get("name", "commit")),
        )

    def create_dataset(
        self,
        name: str,
        data: pa.Table | Iterable[pa.RecordBatch],
        *,
        message: str = "created",
        operation: dict[str, Any] | None = None,
        source: str | None = None,
        schema: pa.Schema | None = None,
    ) -> VersionRecord:
        """A new dataset whose first version is ``data``."""
        ds_id = self.new_dataset_id()
        if isinstance(data, pa.Table):
            schema = schema or data.schema
        try:
            with self.writer(ds_id) as w:
                if isinstance(data, pa.Table):
                    w.write(data)
                else:
                    for b in data:
                        w.write(b)
        except BaseException:
            shutil.rmtree(self.root / ds_id, ignore_errors=True)
            raise
        return self.commit(
            w,
            dataset_id=ds_id,
            message=message,
            operation=operation or {"name": "create", "params": {}},
            parent=None,
            new_dataset_name=name,
            source=source,
            empty_schema=schema,
            action="create",
        )

    def revert(self, dataset: str, version: str) -> VersionRecord:
        """Make an earlier version current again (no copy; recorded in the log)."""
        v = self.version(dataset, version)
        now = _now()
        with self.db.transaction() as c:
            c.execute(
                "UPDATE datasets SET current_version = ? WHERE id = ?", (v.hash, v.dataset_id)
            )
            c.execute(
                "INSERT INTO dataset_log(dataset_id, version_hash, action, message, created_at) "
                "VALUES (?, ?, 'revert', ?, ?)",
                (v.dataset_id, v.hash, f"revert to {v.short}", now),
            )
        return v

    def cleanup_orphans(self, min_age_s: float = 600.0) -> list[str]:
        """Remove folders of datasets or versions the database does not know.

        They are what a process killed between moving a version into place and
        registering it leaves behind. A folder younger than ``min_age_s`` is kept: an
        import or operation of another process may be registering it right now.
        Temporary folders are left to :func:`app.core.store.files.find_temporaries`.
        """
        removed: list[str] = []
        if not self.root.exists():
            return removed
        known = {r["id"] for r in self.db.query("SELECT id FROM datasets")}
        versions = {
            (r["dataset_id"], r["hash"])
            for r in self.db.query("SELECT dataset_id, hash FROM dataset_versions")
        }
        cutoff = time.time() - min_age_s

        def old(p: Path) -> bool:
            try:
                return p.stat().st_mtime < cutoff
            except OSError:
                return False

        for d in self.root.iterdir():
            if not d.is_dir() or is_temp_name(d.name):
                continue
            if d.name not in known:
                inside = list(d.iterdir())
                if old(d) and all(old(v) for v in inside):
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d.name)
                continue
            for v in d.iterdir():
                if (
                    v.is_dir()
                    and not is_temp_name(v.name)
                    and (d.name, v.name) not in versions
                    and old(v)
                ):
                    shutil.rmtree(v, ignore_errors=True)
                    removed.append(f"{d.name}/{v.name}")
        return removed

    def rename(self, dataset: str, name: str) -> DatasetRecord:
        ds = self.get(dataset)
        self.db.execute("UPDATE datasets SET name = ? WHERE id = ?", (name, ds.id))
        return self.get(ds.id)

    def delete(self, dataset: str) -> None:
        """Remove a dataset, its versions and their files."""
        ds = self.get(dataset)
        with self.db.transaction() as c:
            c.execute("DELETE FROM dataset_log WHERE dataset_id = ?", (ds.id,))
            c.execute("DELETE FROM dataset_versions WHERE dataset_id = ?", (ds.id,))
            c.execute("DELETE FROM datasets WHERE id = ?", (ds.id,))
        shutil.rmtree(self.root / ds.id, ignore_errors=True)
