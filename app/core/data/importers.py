"""Import files into datasets, streaming: CSV, TSV, JSON, JSONL, Parquet, HF folders, text.

Every reader yields Arrow batches that go straight into a
:class:`~app.core.data.store.VersionWriter` (Parquet on disk), so a file larger
than memory imports in bounded memory. JSON Lines are cut into blocks at line
ends and each block is parsed by pyarrow's multi-threaded JSON reader; only a
block that fails is re-read line by line with Python to find the bad lines.

Bad rows (unparseable lines, lines that are not objects, values of the wrong
type, CSV rows with the wrong number of fields) are collected as
:class:`BadRow` (file, line, reason). ``on_bad="error"`` fails with the first
few and leaves nothing behind (no dataset row, no folder); ``on_bad="skip"``
leaves them out and stores the report in the version's ``manifest.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from app.core.data.store import CHUNK_ROWS, DatasetStore, VersionRecord
from app.core.errors import ConfigError, DemoAIError, NotFoundError

FORMATS: tuple[str, ...] = ("csv", "tsv", "json", "jsonl", "parquet", "hf", "text", "paragraphs")
OnBad = Literal["error", "skip"]
ProgressFn = Callable[[float | None, str], None]

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "paragraphs",
}
_JSON_BLOCK = 4 << 20  # bounded memory: peak RSS stays under ~300 MB
#: Block size of pyarrow's streaming JSON reader (the fast path for JSON Lines).
_JSON_STREAM_BLOCK = 1 << 20
_CSV_BLOCK = 8 << 20
_TEXT_BATCH = 50_000
#: Bad rows kept in a skip report (the total is always counted).
REPORT_LIMIT = 1000


@dataclass
class BadRow:
    """One rejected row: where it is and why."""

    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{Path(self.file).name} line {self.line}" if self.line else Path(self.file).name
        return f"{where}: {self.reason}"


class BadRowsError(DemoAIError):
    """The input has rows that cannot be imported; nothing was imported."""

    exit_code = 2

    def __init__(self, rows: list[BadRow], *, more: bool = False) -> None:
        lines = "; ".join(str(r) for r in rows[:5])
        extra = " (and more)" if more or len(rows) > 5 else ""
        super().__init__(
            f"Cannot import: {lines}{extra}. Nothing was imported.",
            "Fix these lines, or import again skipping bad rows (--skip-bad) to get a report.",
        )
        self.rows = rows


class _Retry(Exception):
    """Restart the import with other reader options (CSV column types, careful JSON Lines)."""

    def __init__(self, column_types: dict[str, pa.DataType], *, careful_json: bool = False):
        super().__init__("retry")
        self.column_types = column_types
        self.careful_json = careful_json


@dataclass
class _BadRows:
    file: str
    on_bad: OnBad
    limit: int = 10
    rows: list[BadRow] = field(default_factory=list)
    total: int = 0

    def add(self, line: int | None, reason: str) -> None:
        self.total += 1
        if self.on_bad == "error":
            self.rows.append(BadRow(self.file, line, reason))
            if len(self.rows) >= self.limit:
                raise BadRowsError(self.rows, more=True)
        elif len(self.rows) < REPORT_LIMIT:
            self.rows.append(BadRow(self.file, line, reason))

    @property
    def full(self) -> bool:
        return self.on_bad == "error" and len(self.rows) >= self.limit

    def fatal(self, line: int | None, reason: str) -> BadRowsError:
        """A problem that stops the import in any mode."""
        return BadRowsError([*self.rows[:4], BadRow(self.file, line, reason)])

    def finish(self) -> None:
        if self.on_bad == "error" and self.rows:
            raise BadRowsError(self.rows)

    def report(self) -> dict[str, Any]:
        return {"count": self.total, "rows": [asdict(r) for r in self.rows]}


@dataclass
class ImportResult:
    """What an import produced."""

    version: VersionRecord
    name: str
    format: str
    bad_rows: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_id": self.version.dataset_id,
            "name": self.name,
            "version": self.version.hash,
            "rows": self.version.rows,
            "format": self.format,
            "bad_rows": self.bad_rows["count"],
        }


def detect_format(path: Path) -> str:
    """The import format of ``path`` from its extension (a folder: an HF dataset)."""
    if path.is_dir():
        if any(
            (path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")
        ):
            return "hf"
        raise ConfigError(
            f"{path} is a folder but not a Hugging Face dataset saved with save_to_disk.",
            "Import a file, or a folder written by datasets' save_to_disk.",
        )
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"Cannot tell the format of {path.name} from its extension.",
            f"Give --format ({', '.join(FORMATS)}).",
        )
    return fmt


# -- JSON Lines ---------------------------------------------------------------------------
def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "text"
    if isinstance(v, list):
        return "a list"
    return "an object"


def _fits(v: Any, t: pa.DataType) -> bool:
    if v is None:
        return True
    if pa.types.is_boolean(t):
        return isinstance(v, bool)
    if pa.types.is_integer(t):
        return isinstance(v, int) and not isinstance(v, bool)
    if pa.types.is_floating(t):
        return isinstance(v, int | float) and not isinstance(v, bool)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_temporal(t):
        return isinstance(v, str)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return isinstance(v, list)
    if pa.types.is_struct(t):
        return isinstance(v, dict)
    if pa.types.is_null(t):
        return False
    return True


def _check_json_line(raw: bytes, schema: pa.Schema | None) -> str | None:
    """Why a JSON line cannot be a row (None when it can, or when it is blank)."""
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        col = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        return f"not valid JSON ({msg}{col})"
    if not isinstance(obj, dict):
        return f"not a JSON object ({_json_kind(obj)})"
    if schema is not None:
        for k, v in obj.items():
            idx = schema.get_field_index(k)
            if idx < 0:
                return f"unexpected field '{k}' (not in the first rows of the file)"
            t = schema.field(idx).type
            if not _fits(v, t):
                return f"field '{k}' is {_json_kind(v)}, expected {t}"
    return None


def _fix_first_schema(schema: pa.Schema) -> pa.Schema:
    # A column that is null in every row of the first block is most likely text.
    return pa.schema(
        [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in schema]
    )


def _infer_schema(lines: list[bytes]) -> pa.Schema | None:
    """The schema of the first rows that parse together (a block that failed as a whole)."""
    good = [raw for raw in lines[:2000] if _check_json_line(raw, None) is None and raw.strip()]
    for n in (1000, 100, 10, 1):
        try:
            return _fix_first_schema(_read_json_block(b"\n".join(good[:n]), None).schema)
        except pa.ArrowInvalid:
            continue
    return None


def _read_json_block(block: bytes, schema: pa.Schema | None) -> pa.Table:
    popts = pajson.ParseOptions(
        explicit_schema=schema,
        unexpected_field_behavior="error" if schema is not None else "infer",
    )
    return pajson.read_json(pa.BufferReader(block), parse_options=popts)


def _jsonl_batches(
    path: Path,
    bad: _BadRows,
    progress: ProgressFn,
    line_map: list[int] | None = None,
    size_for_progress: tuple[float, float] = (0.0, 1.0),
) -> Iterator[pa.Table]:
    total = max(path.stat().st_size, 1)
    lo, span = size_for_progress
    schema: pa.Schema | None = None

    def where(n: int) -> int:
        return line_map[n - 1] if line_map is not None and 0 < n <= len(line_map) else n

    with open(path, "rb") as fh:
        carry = b""
        line0 = 1
        first = True
        while True:
            data = fh.read(_JSON_BLOCK)
            if first:
                first = False
                if data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
            eof = not data
            buf = carry + data
            if not eof:
                cut = buf.rfind(b"\n")
                if cut < 0:
                    carry = buf
                    continue
                block, carry = buf[: cut + 1], buf[cut + 1 :]
            else:
                block, carry = buf, b""
            if block.strip():
                try:
                    table = _read_json_block(block, schema)
                except pa.ArrowInvalid as exc:
                    lines = block.split(b"\n")
                    if schema is None:
                        schema = _infer_schema(lines)
                    good: list[bytes] = []
                    found = False
                    for i, raw in enumerate(lines):
                        reason = _check_json_line(raw, schema)
                        if reason is None:
                            good.append(raw)
                        else:
                            found = True
                            bad.add(where(line0 + i), reason)
                    if not found:
                        last = line0 + block.count(b"\n")
                        raise bad.fatal(
                            where(line0), f"lines {where(line0)}-{where(last)}: {exc}"
                        ) from None
                    cleaned = b"\n".join(good)
                    if not cleaned.strip():
                        table = None
                    else:
                        try:
                            table = _read_json_block(cleaned, schema)
                        except pa.ArrowInvalid as exc2:
                            raise bad.fatal(where(line0), str(exc2)) from None
                if table is not None and table.num_rows:
                    if schema is None:
                        schema = _fix_first_schema(table.schema)
                        table = table.cast(schema)
                    yield table
            line0 += block.count(b"\n")
            progress(lo + span * min(fh.tell() / total, 1.0), f"{line0 - 1:,} lines read")
            if eof:
                break


def _jsonl_stream(path: Path, progress: ProgressFn) -> Iterator[pa.RecordBatch]:
    """JSON Lines through pyarrow's streaming reader (parallel parsing, bounded memory).

    The schema is inferred from the first block, as in :func:`_jsonl_batches`.
    Anything unusual (a byte-order mark, a bad line, a type change, a field the
    first rows do not have) raises :class:`_Retry` so the import restarts on the
    careful block-by-block path, which reports bad rows with their line numbers.
    """
    careful = _Retry({}, careful_json=True)
    total = max(path.stat().st_size, 1)
    with open(path, "rb") as fh:
        head = fh.read(_JSON_STREAM_BLOCK)
    cut = head.rfind(b"\n")
    first = head if len(head) < _JSON_STREAM_BLOCK else head[: cut + 1]
    if head.startswith(b"\xef\xbb\xbf") or not first.strip():
        raise careful
    try:
        schema = _fix_first_schema(_read_json_block(first, None).schema)
    except pa.ArrowInvalid:
        raise careful from None
    row_bytes = len(first) / max(first.count(b"\n"), 1)
    try:
        reader = pajson.open_json(
            path,
            read_options=pajson.ReadOptions(block_size=_JSON_STREAM_BLOCK),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="error"
            ),
        )
        rows = 0
        for batch in reader:
            if batch.num_rows:
                rows += batch.num_rows
                yield batch
                progress(min(rows * row_bytes / total, 0.99), f"{rows:,} rows read")
    except pa.ArrowInvalid:
        raise careful from None


# -- JSON (an array of objects, or columns) -------------------------------------------------
def _first_char(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        while True:
            chunk = fh.read(4096)
            if not chunk:
                return ""
            s = chunk.lstrip()
            if s:
                return s[0]


def _json_array_to_jsonl(path: Path, out: Path, bad: _BadRows, progress: ProgressFn) -> list[int]:
    """Stream the elements of a top-level JSON array into a JSONL file; returns their lines."""
    dec = json.JSONDecoder()
    total = max(path.stat().st_size, 1)
    line_map: list[int] = []
    with open(path, encoding="utf-8-sig") as fh, open(out, "w", encoding="utf-8") as dst:
        buf = ""
        pos = 0
        line = 1  # line number of buf[0]
        eof = False

        def fill() -> None:
            nonlocal buf, pos, line, eof
            if pos > 0:
                line += buf.count("\n", 0, pos)
                buf = buf[pos:]
                pos = 0
            more = fh.read(1 << 20)
            if not more:
                eof = True
            buf += more

        def skip_ws() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or eof:
                    return
                fill()

        def here() -> int:
            return line + buf.count("\n", 0, pos)

        fill()
        skip_ws()
        if pos >= len(buf) or buf[pos] != "[":
            raise bad.fatal(here(), "expected a JSON array of objects")
        pos += 1
        skip_ws()
        if pos < len(buf) and buf[pos] == "]":
            return line_map
        while True:
            skip_ws()
            while True:
                try:
                    obj, end = dec.raw_decode(buf, pos)
                    if end < len(buf) or eof:
                        break
                except json.JSONDecodeError as exc:
                    if eof:
                        raise bad.fatal(
                            line + buf.count("\n", 0, exc.pos),
                            f"not valid JSON ({exc.msg})",
                        ) from None
                fill()
            elem_line = here()
            pos = end
            if isinstance(obj, dict):
                dst.write(json.dumps(obj, ensure_ascii=False))
                dst.write("\n")
                line_map.append(elem_line)
            else:
                bad.add(elem_line, f"not a JSON object ({_json_kind(obj)})")
            skip_ws()
            if pos >= len(buf):
                raise bad.fatal(here(), "the JSON array is not closed")
            ch = buf[pos]
            pos += 1
            if ch == "]":
                break
            if ch != ",":
                raise bad.fatal(here(), f"expected ',' or ']' between elements, found {ch!r}")
            if len(line_map) % 10_000 == 0:
                progress(0.5 * min(fh.tell() / total, 1.0), f"{len(line_map):,} records read")
        skip_ws()
        if pos < len(buf):
            raise bad.fatal(here(), "unexpected text after the JSON array")
    return line_map


def _json_batches(
    path: Path, bad: _BadRows, progress: ProgressFn, tmp_dir: Path
) -> Iterator[pa.Table]:
    first = _first_char(path)
    if first == "[":
        tmp = tmp_dir / "records.jsonl"
        line_map = _json_array_to_jsonl(path, tmp, bad, progress)
        try:
            yield from _jsonl_batches(tmp, bad, progress, line_map, (0.5, 0.5))
        finally:
            tmp.unlink(missing_ok=True)
        return
    if first != "{":
        raise bad.fatal(1, "expected a JSON array of objects or a JSON object")
    # One object (columns, or one list of records) is read whole; JSON Lines stream.
    try:
        with open(path, encoding="utf-8-sig") as fh:
            obj = json.load(fh)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several top-level objects: JSON Lines
            yield from _jsonl_batches(path, bad, progress)
            return
        raise bad.fatal(exc.lineno, f"not valid JSON ({exc.msg})") from None
    lists = {k: v for k, v in obj.items() if isinstance(v, list)}
    if lists and len(lists) == len(obj) and len({len(v) for v in lists.values()}) == 1:
        yield pa.table(lists)
    elif len(lists) == 1 and all(isinstance(r, dict) for r in next(iter(lists.values()))):
        yield pa.Table.from_pylist(next(iter(lists.values())))
    else:
        yield pa.Table.from_pylist([obj])


# -- CSV / TSV ----------------------------------------------------------------------------
def _csv_batches(
    path: Path,
    delimiter: str,
    bad: _BadRows,
    progress: ProgressFn,
    column_types: dict[str, pa.DataType],
) -> Iterator[pa.RecordBatch]:
    def on_invalid(row: Any) -> str:
        if bad.full:
            return "error"
        bad.add(
            row.number,
            f"expected {row.expected_columns} fields, found {row.actual_columns}",
        )
        return "skip"

    total = max(path.stat().st_size, 1)
    reader: Any = None
    with open(path, "rb") as fh:
        try:
            reader = pacsv.open_csv(
                fh,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK),
                parse_options=pacsv.ParseOptions(
                    delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
                ),
                convert_options=pacsv.ConvertOptions(column_types=column_types),
            )
            rows = 0
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                rows += batch.num_rows
                yield batch
                progress(min(fh.tell() / total, 1.0), f"{rows:,} rows read")
        except pa.ArrowInvalid as exc:
            msg = str(exc)
            if bad.rows and "Expected" in msg and "columns" in msg:
                raise BadRowsError(bad.rows, more=True) from None
            m = re.search(r"In CSV column #(\d+):.*?CSV conversion error", msg)
            if m is not None:
                names = reader.schema.names if reader is not None else []
                idx = int(m.group(1))
                if idx < len(names) and names[idx] not in column_types:
                    raise _Retry({**column_types, names[idx]: pa.string()}) from None
            raise bad.fatal(None, msg) from None


# -- Parquet, HF, text -------------------------------------------------------------------------
def _parquet_batches(path: Path, bad: _BadRows, progress: ProgressFn) -> Iterator[pa.RecordBatch]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise bad.fatal(None, f"not a valid Parquet file ({exc})") from None
    n = max(pf.num_row_groups, 1)
    for i in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(i)
        except (pa.ArrowException, OSError) as exc:
            raise bad.fatal(None, f"row group {i} cannot be read ({exc})") from None
        yield from table.to_batches(CHUNK_ROWS)
        progress((i + 1) / n, f"row group {i + 1}/{n}")


def _hf_batches(path: Path, progress: ProgressFn) -> Iterator[pa.Table]:
    import datasets  # heavy: only inside the import

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"{path} is not a dataset saved with save_to_disk ({exc}).",
            "Save it with datasets' Dataset.save_to_disk and import that folder.",
        ) from None
    parts: list[tuple[str | None, Any]]
    if isinstance(loaded, datasets.DatasetDict):
        parts = list(loaded.items())
    else:
        parts = [(None, loaded)]
    for i, (split, ds) in enumerate(parts):
        if getattr(ds, "_indices", None) is not None:
            ds = ds.flatten_indices()
        table: pa.Table = ds.data.table
        for batch in table.to_batches(CHUNK_ROWS):
            if split is not None:
                batch = batch.append_column("split", pa.array([split] * batch.num_rows))
            yield pa.Table.from_batches([batch])
        progress((i + 1) / len(parts), f"split {split}" if split else "read")


def _text_batches(
    path: Path, paragraphs: bool, column: str, progress: ProgressFn
) -> Iterator[pa.Table]:
    total = max(path.stat().st_size, 1)
    rows: list[str] = []
    para: list[str] = []
    seen = 0
    lineno = 0
    with open(path, encoding="utf-8-sig", errors="strict") as fh:
        while True:
            try:
                raw = fh.readline()
            except UnicodeDecodeError:
                raise BadRowsError(
                    [BadRow(str(path), lineno + 1, "not UTF-8 text (save the file as UTF-8)")]
                ) from None
            if not raw:
                break
            lineno += 1
            seen += len(raw)
            text = raw.rstrip("\r\n")
            if paragraphs:
                if text.strip():
                    para.append(text)
                elif para:
                    rows.append("\n".join(para))
                    para = []
            elif text.strip():
                rows.append(text)
            if len(rows) >= _TEXT_BATCH:
                yield pa.table({column: pa.array(rows, pa.string())})
                rows = []
                progress(min(seen / total, 1.0), f"{seen:,} characters read")
        if para:
            rows.append("\n".join(para))
    if rows:
        yield pa.table({column: pa.array(rows, pa.string())})


# -- the import --------------------------------------------------------------------------------
_DONE = object()


def _prefetch(it: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """Run ``it`` in a thread ``depth`` items ahead: parsing overlaps writing.

    pyarrow's readers and the Parquet writer release the GIL, so the two overlap
    on separate cores. Exceptions from ``it`` are raised here, in order.
    """
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in it:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:
            put((_DONE, exc))

    thread = threading.Thread(target=run, name="import-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _noop_progress(fraction: float | None, message: str = "") -> None:
    return None


def import_dataset(
    workspace: Any,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    format: str | None = None,
    on_bad: OnBad = "error",
    text_column: str = "text",
    progress: ProgressFn | None = None,
    check_cancelled: Callable[[], None] | None = None,
) -> ImportResult:
    """Import ``path`` as a new dataset; on any failure nothing is left behind."""
    src = Path(path).expanduser()
    if not src.exists():
        raise NotFoundError(f"There is nothing at {src}.")
    fmt = format or detect_format(src)
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown format '{fmt}'.", f"Use one of: {', '.join(FORMATS)}.")
    if on_bad not in ("error", "skip"):
        raise ConfigError(f"on_bad must be 'error' or 'skip', not '{on_bad}'.")
    report = progress or _noop_progress
    store = DatasetStore(workspace)
    ds_id = store.new_dataset_id()
    ds_dir = store.root / ds_id
    column_types: dict[str, pa.DataType] = {}
    careful_json = False
    try:
        for _attempt in range(1000):
            bad = _BadRows(str(src), on_bad)
            work = Path(tempfile.mkdtemp(prefix=".import-", dir=store.root))
            try:
                with store.writer(ds_id) as w:
                    parts = _batches(
                        fmt, src, bad, report, work, text_column, column_types, careful_json
                    )
                    # 8 stream blocks (~8 MB) ahead: the parser keeps going while a chunk is written.
                    for part in _prefetch(parts, 8):
                        if check_cancelled is not None:
                            check_cancelled()
                        w.write(part)
                    bad.finish()
                break
            except _Retry as retry:
                column_types = retry.column_types or column_types
                careful_json = careful_json or retry.careful_json
            finally:
                shutil.rmtree(work, ignore_errors=True)
        else:  # pragma: no cover - one retry per column at most
            raise ConfigError(f"Cannot settle the column types of {src}.")
        params = {"path": str(src), "format": fmt, "on_bad": on_bad}
        version = store.commit(
            w,
            dataset_id=ds_id,
            message=f"import {src.name}",
            operation={"name": "import", "params": params},
            parent=None,
            new_dataset_name=name or src.stem,
            source=str(src),
            extra_manifest={"import": {**params, "bad_rows": bad.report()}},
            action="import",
        )
    except BaseException:
        shutil.rmtree(ds_dir, ignore_errors=True)
        raise
    report(1.0, f"imported {version.rows:,} rows")
    return ImportResult(version, name or src.stem, fmt, bad.report())


def _batches(
    fmt: str,
    src: Path,
    bad: _BadRows,
    progress: ProgressFn,
    work: Path,
    text_column: str,
    column_types: dict[str, pa.DataType],
    careful_json: bool = False,
) -> Iterator[pa.Table | pa.RecordBatch]:
    if fmt == "jsonl":
        if careful_json:
            yield from _jsonl_batches(src, bad, progress)
        else:
            yield from _jsonl_stream(src, progress)
    elif fmt == "json":
        yield from _json_batches(src, bad, progress, work)
    elif fmt in ("csv", "tsv"):
        yield from _csv_batches(src, "," if fmt == "csv" else "\t", bad, progress, column_types)
    elif fmt == "parquet":
        yield from _parquet_batches(src, bad, progress)
    elif fmt == "hf":
        yield from _hf_batches(src, progress)
    else:
        yield from _text_batches(src, fmt == "paragraphs", text_column, progress)


def import_job(
    ctx: Any,
    path: str,
    name: str | None = None,
    format: str | None = None,
    on_bad: OnBad = "error",
    text_column: str = "text",
) -> dict[str, Any]:
    """Job ``data.import``: import a file or folder as a new dataset, with progress."""
    res = import_dataset(
        ctx.workspace,
        path,
        name=name,
        format=format,
        on_bad=on_bad,
        text_column=text_column,
        progress=ctx.progress,
        check_cancelled=ctx.check_cancelled,
    )
    if res.bad_rows["count"]:
        ctx.log(f"skipped {res.bad_rows['count']} bad row(s)", "warning")
        for r in res.bad_rows["rows"][:20]:
            ctx.log(str(BadRow(**r)), "warning")
    ctx.artifact("dataset_version", res.version.path)
    out = res.to_dict()
    ctx.result(out)
    return out
