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

Text must be text: invalid UTF-8 and NUL bytes in CSV, TSV, JSON, JSON Lines
and text files are bad rows too, with their line numbers (a Parquet or HF
string column with invalid UTF-8: bad rows with their row numbers), so a text
column never silently becomes ``binary`` and no stored version holds a string
that cannot be shown or exported. ``replace_invalid`` keeps those rows instead:
invalid bytes become U+FFFD, NUL bytes are dropped, and the result counts the
lines changed. Values nested deeper than :data:`MAX_DEPTH` levels are bad rows
(pyarrow's JSON reader crashes the process on ~10,000 levels, Python's decoder
raises ``RecursionError``), found by a bracket scan before pyarrow sees a block
without a schema.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from app.core.data.store import CHUNK_ROWS, DatasetStore, VersionRecord
from app.core.errors import ConfigError, DemoAIError, NotFoundError
from app.core.store.files import make_owned_temp_dir

if TYPE_CHECKING:
    from app.core.jobs.context import JobContext
    from app.core.workspace.workspace import Workspace

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
#: Deepest nesting of lists and objects accepted (JSON brackets, Parquet types).
MAX_DEPTH = 64
#: Formats whose input is text: no column of theirs may become binary.
TEXT_FORMATS = frozenset({"csv", "tsv", "json", "jsonl", "text", "paragraphs"})


@dataclass
class BadRow:
    """One rejected row: where it is and why."""

    file: str
    line: int | None
    reason: str
    unit: str = "line"  # "row" for Parquet and HF input, which have no lines

    def __str__(self) -> str:
        name = Path(self.file).name
        where = f"{name} {self.unit} {self.line}" if self.line else name
        return f"{where}: {self.reason}"


class BadRowsError(DemoAIError):
    """The input has rows that cannot be imported; nothing was imported."""

    exit_code = 2

    def __init__(self, rows: list[BadRow], *, more: bool = False) -> None:
        lines = "; ".join(str(r) for r in rows[:5])
        extra = " (and more)" if more or len(rows) > 5 else ""
        super().__init__(
            f"Cannot import: {lines}{extra}. Nothing was imported.",
            "Fix these lines, or import again skipping bad rows (--skip-bad) to get a report"
            " (text that is not UTF-8: --replace-invalid keeps those rows with U+FFFD).",
        )
        self.rows = rows


class _Retry(Exception):
    """Restart the import with other reader options (CSV column types, careful JSON Lines)."""

    def __init__(
        self,
        column_types: dict[str, pa.DataType],
        *,
        careful_json: bool = False,
        careful_csv: bool = False,
    ):
        super().__init__("retry")
        self.column_types = column_types
        self.careful_json = careful_json
        self.careful_csv = careful_csv


@dataclass
class _BadRows:
    file: str
    on_bad: OnBad
    limit: int = 10
    rows: list[BadRow] = field(default_factory=list)
    total: int = 0

    def add(self, line: int | None, reason: str, unit: str = "line") -> None:
        self.total += 1
        if self.on_bad == "error":
            self.rows.append(BadRow(self.file, line, reason, unit))
            if len(self.rows) >= self.limit:
                raise BadRowsError(self.rows, more=True)
        elif len(self.rows) < REPORT_LIMIT:
            self.rows.append(BadRow(self.file, line, reason, unit))

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
class _Replaced:
    """Lines (or rows) where invalid UTF-8 became U+FFFD or NUL bytes were dropped."""

    enabled: bool
    unit: str = "line"
    count: int = 0
    lines: list[int] = field(default_factory=list)

    def add(self, line: int) -> None:
        self.count += 1
        if len(self.lines) < REPORT_LIMIT:
            self.lines.append(line)

    def report(self) -> dict[str, Any]:
        return {"count": self.count, "unit": self.unit, "lines": self.lines}


@dataclass
class ImportResult:
    """What an import produced."""

    version: VersionRecord
    name: str
    format: str
    bad_rows: dict[str, Any]
    replaced: dict[str, Any] = field(default_factory=lambda: {"count": 0, "lines": []})

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_id": self.version.dataset_id,
            "name": self.name,
            "version": self.version.hash,
            "rows": self.version.rows,
            "format": self.format,
            "bad_rows": self.bad_rows["count"],
            "replaced": self.replaced["count"],
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


# -- text checks ----------------------------------------------------------------------------
#: Surrogate code points: invalid bytes read with ``surrogateescape`` (U+DC80-U+DCFF), or
#: a lone ``\ud800``-style escape in JSON; neither can be stored as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Bracket depth step of each byte: ``[`` and ``{`` open, ``]`` and ``}`` close.
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1
#: Bytes of a line scanned at once for its depth (bounds the scan's memory).
_SCAN_PIECE = 1 << 20


def _text_ok(data: bytes) -> bool:
    """Whether ``data`` is UTF-8 text without NUL bytes (memchr and the C decoder: fast)."""
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _utf8_problem(raw: bytes) -> str | None:
    """Why one line is not text (a NUL byte, invalid UTF-8), or None."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        return f"contains a NUL byte at column {nul + 1}"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
    return None


def _repair_line(raw: bytes) -> bytes:
    """Invalid UTF-8 to U+FFFD, NUL bytes dropped."""
    return raw.replace(b"\x00", b"").decode("utf-8", "replace").encode("utf-8")


def _repair_block(
    block: bytes, line0: int, replaced: _Replaced, where: Callable[[int], int] = int
) -> bytes:
    """:func:`_repair_line` on each line of ``block`` that needs it, counting them."""
    if _text_ok(block):
        return block
    lines = block.split(b"\n")
    for i, raw in enumerate(lines):
        if _utf8_problem(raw) is not None:
            lines[i] = _repair_line(raw)
            replaced.add(where(line0 + i))
    return b"\n".join(lines)


def _repair_text(text: str, line0: int, replaced: _Replaced) -> str:
    """The ``surrogateescape`` form of :func:`_repair_block` (decoded text)."""
    if "\x00" not in text and _SURROGATE.search(text) is None:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if "\x00" in line or _SURROGATE.search(line):
            lines[i] = _SURROGATE.sub("\ufffd", line.replace("\x00", ""))
            replaced.add(line0 + i)
    return "\n".join(lines)


def _utf8_cut(data: bytes) -> int:
    """Where an incomplete UTF-8 sequence at the end of ``data`` starts (len: none)."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b < 0x80:
            return n
        if b >= 0xC0:
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return n - back if need > back else n
    return n


def _deep_lines(block: bytes, limit: int = MAX_DEPTH) -> list[int]:
    """0-based indices of the lines of ``block`` whose JSON nesting exceeds ``limit``.

    Brackets inside strings do not count (quotes are matched, escapes honoured,
    per line), so the count is what a JSON parser sees up to its first error. A
    guard before pyarrow infers a schema: it overflows its stack on ~10,000 levels.
    Only lines with more than ``limit`` opening brackets can be that deep, and only
    those are scanned (1 MB of typical rows: ~1 ms).
    """
    if block.count(b"[") + block.count(b"{") <= limit:
        return []
    return [
        i
        for i, line in enumerate(block.split(b"\n"))
        if line.count(b"[") + line.count(b"{") > limit and _deep_lines_piece(line, limit)
    ]


def _deep_lines_piece(line: bytes, limit: int) -> bool:
    """Whether one line nests brackets outside strings more than ``limit`` deep."""
    return _too_deep_at(line, limit) is not None


def _too_deep_at(line: bytes, limit: int = MAX_DEPTH) -> int | None:
    """Offset of the first bracket outside strings more than ``limit`` deep, or None.

    Vectorised over pieces of 1 MB that carry the depth, the string state and a run
    of backslashes across, so a line (or a whole document: line ends do not reset
    anything) of any length is scanned in bounded memory.
    """
    depth = 0
    in_string = 0
    backslashes = 0  # the run of backslashes that ended the previous piece
    for at in range(0, len(line), _SCAN_PIECE):
        a = np.frombuffer(line, dtype=np.uint8, count=min(_SCAN_PIECE, len(line) - at), offset=at)
        n = len(a)
        is_bs = a == 92
        quotes = np.flatnonzero(a == 34)
        if len(quotes) and (is_bs.any() or backslashes):
            idx = np.arange(n, dtype=np.int64)
            last_plain = np.maximum.accumulate(np.where(is_bs, -1, idx))
            before = quotes - 1
            run = np.where(before >= 0, before - last_plain[np.maximum(before, 0)], 0)
            run = np.where(run == quotes, run + backslashes, run)  # the run began earlier
            quotes = quotes[run % 2 == 0]  # an odd run of backslashes escapes the quote
        toggles = np.zeros(n, dtype=np.int8)
        toggles[quotes] = 1
        parity = (np.cumsum(toggles, dtype=np.int64) + in_string) & 1
        step = _DEPTH_STEP[a].astype(np.int64)
        step[parity == 1] = 0
        levels = np.cumsum(step) + depth
        over = np.flatnonzero(levels > limit)
        if len(over):
            return at + int(over[0])
        depth = int(levels[-1])
        in_string = int(parity[-1])
        plain = np.flatnonzero(~is_bs)
        trailing = n - 1 - int(plain[-1]) if len(plain) else n
        backslashes = trailing if len(plain) else backslashes + n
    return None


def _value_problem(obj: Any, invalid_bytes: bool = False) -> str | None:
    """Why a decoded JSON value cannot be stored: nested too deep, or text with surrogates
    (``invalid_bytes``: they stand for bytes that are not UTF-8)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return (
                    "not UTF-8 text" if invalid_bytes else "text with a lone \\u surrogate escape"
                )
        elif isinstance(v, dict | list):
            if d > MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            if isinstance(v, dict):
                for k, x in v.items():
                    stack.append((k, d))
                    stack.append((x, d + 1))
            else:
                stack.extend((x, d + 1) for x in v)
    return None


def _type_depth(t: pa.DataType) -> int:
    if isinstance(t, pa.ListType | pa.LargeListType | pa.FixedSizeListType):
        return 1 + _type_depth(t.value_type)
    if isinstance(t, pa.StructType):
        return 1 + max((_type_depth(f.type) for f in t), default=0)
    if isinstance(t, pa.MapType):
        return 1 + max(_type_depth(t.key_type), _type_depth(t.item_type))
    return 0


def _has_binary(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return True
    return any(_has_binary(t.field(i).type) for i in range(t.num_fields))


def _check_utf8(batch: pa.RecordBatch) -> None:
    """Raise ``ArrowInvalid`` when a string of ``batch`` is not UTF-8.

    A string column whose bytes are all ASCII is valid whatever its offsets say; numpy
    finds that at memory speed (6 ms for 100 MB of rows, a third of a full validation).
    Other columns get pyarrow's full validation.
    """
    for col in batch.columns:
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            bufs = col.buffers()
            if bufs[2] is None or len(col) == 0:
                continue
            wide = pa.types.is_large_string(t)
            offsets = np.frombuffer(
                bufs[1],
                dtype=np.int64 if wide else np.int32,
                count=len(col) + 1,
                offset=col.offset * (8 if wide else 4),
            )
            data = np.frombuffer(bufs[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
            if len(data) and int(data.max()) >= 0x80:
                col.validate(full=True)
        elif pa.types.is_nested(t) or pa.types.is_dictionary(t):
            col.validate(full=True)


def _bad_text_rows(batch: pa.RecordBatch) -> list[int]:
    """Rows of ``batch`` holding a string that is not UTF-8 (bisection on full validation)."""
    out: list[int] = []

    def find(lo: int, hi: int) -> None:
        try:
            batch.slice(lo, hi - lo).validate(full=True)
            return
        except pa.ArrowInvalid:
            if hi - lo == 1:
                out.append(lo)
                return
        mid = (lo + hi) // 2
        find(lo, mid)
        find(mid, hi)

    if batch.num_rows:
        find(0, batch.num_rows)
    return out


def _checked_rows(
    batches: Iterator[pa.RecordBatch], bad: _BadRows, replaced: _Replaced
) -> Iterator[pa.RecordBatch]:
    """Parquet and HF input: rows with strings that are not UTF-8 are bad rows (by row
    number), or get U+FFFD with ``replace_invalid`` (top-level string columns)."""
    offset = 0
    for batch in batches:
        n = batch.num_rows
        try:
            batch.validate(full=True)
        except pa.ArrowInvalid:
            rows = _bad_text_rows(batch)
            if replaced.enabled:
                cols = [_repair_strings(c) for c in batch.columns]
                batch = pa.RecordBatch.from_arrays(cols, schema=batch.schema)
                still = set(_bad_text_rows(batch))
                for r in rows:
                    if r not in still:
                        replaced.add(offset + r + 1)
                rows = sorted(still)
            for r in rows:
                bad.add(offset + r + 1, "a string column holds text that is not UTF-8", "row")
            if rows:
                keep = np.ones(batch.num_rows, dtype=bool)
                keep[rows] = False
                batch = batch.filter(pa.array(keep))
        offset += n
        yield batch


def _repair_strings(col: pa.Array) -> pa.Array:
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return col
    try:
        col.validate(full=True)
        return col
    except pa.ArrowInvalid:
        raw = col.view(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary())
        fixed = [None if v is None else v.decode("utf-8", "replace") for v in raw.to_pylist()]
        return pa.array(fixed, col.type)


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
    problem = _utf8_problem(raw)
    if problem is not None:
        return problem
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return f"nested deeper than {MAX_DEPTH} levels"
    if not isinstance(obj, dict):
        return f"not a JSON object ({_json_kind(obj)})"
    problem = _value_problem(obj)
    if problem is not None:
        return problem
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
    replaced: _Replaced,
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
            if replaced.enabled:
                block = _repair_block(block, line0, replaced, where)
            if block.strip():
                try:
                    # Lines that are not text, or too deep for pyarrow to infer a schema
                    # from (it crashes), go straight to the line-by-line path.
                    if (schema is None and _deep_lines(block)) or not _text_ok(block):
                        raise pa.ArrowInvalid("the block has lines that are not JSON rows")
                    table = _read_json_block(block, schema)
                    table.validate(full=True)
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
    # pyarrow infers the schema of the first block with no depth limit (it overflows its
    # stack on ~10,000 levels) and does not check UTF-8; with an explicit schema it stops
    # at the first value deeper than the schema, and every batch is validated below.
    if not _text_ok(first) or _deep_lines(first):
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
                _check_utf8(batch)
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


def _json_array_to_jsonl(
    path: Path, out: Path, bad: _BadRows, progress: ProgressFn, replaced: _Replaced
) -> list[int]:
    """Stream the elements of a top-level JSON array into a JSONL file; returns their lines.

    The file is read with ``surrogateescape``: bytes that are not UTF-8 become
    surrogates, so an element holding them is a bad row at its line (or, with
    ``replace_invalid``, they become U+FFFD as the text is read).
    """
    dec = json.JSONDecoder()
    total = max(path.stat().st_size, 1)
    line_map: list[int] = []
    with (
        open(path, encoding="utf-8-sig", errors="surrogateescape") as fh,
        open(out, "w", encoding="utf-8") as dst,
    ):
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
            if replaced.enabled:
                more = _repair_text(more, line + buf.count("\n"), replaced)
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
                except RecursionError:
                    raise bad.fatal(here(), f"nested deeper than {MAX_DEPTH} levels") from None
                fill()
            elem_line = here()
            pos = end
            problem = _value_problem(obj, invalid_bytes=True)
            if problem is not None:
                bad.add(elem_line, problem)
            elif isinstance(obj, dict):
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
    path: Path, bad: _BadRows, progress: ProgressFn, tmp_dir: Path, replaced: _Replaced
) -> Iterator[pa.Table]:
    first = _first_char(path)
    if first == "[":
        tmp = tmp_dir / "records.jsonl"
        line_map = _json_array_to_jsonl(path, tmp, bad, progress, replaced)
        try:
            no_repairs = _Replaced(False)  # done while reading the array
            yield from _jsonl_batches(tmp, bad, progress, no_repairs, line_map, (0.5, 0.5))
        finally:
            tmp.unlink(missing_ok=True)
        return
    if first != "{":
        raise bad.fatal(1, "expected a JSON array of objects or a JSON object")
    # One object (columns, or one list of records) is read whole; JSON Lines stream.
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    text = raw.decode("utf-8", "surrogateescape")
    if replaced.enabled:
        text = _repair_text(text, 1, replaced)
    deep_at = _too_deep_at(raw) if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH else None
    if deep_at is not None:
        line = raw.count(b"\n", 0, deep_at) + 1
        raise bad.fatal(line, f"nested deeper than {MAX_DEPTH} levels")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several top-level objects: JSON Lines
            yield from _jsonl_batches(path, bad, progress, replaced)
            return
        raise bad.fatal(exc.lineno, f"not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise bad.fatal(1, "expected a JSON array of objects or a JSON object")
    problem = _value_problem(obj, invalid_bytes=True)
    if problem is not None:
        m = _SURROGATE.search(text)
        line = text.count("\n", 0, m.start()) + 1 if m is not None else 1
        raise bad.fatal(line, problem)
    lists = {k: v for k, v in obj.items() if isinstance(v, list)}
    try:
        if lists and len(lists) == len(obj) and len({len(v) for v in lists.values()}) == 1:
            yield pa.table(lists)
        elif len(lists) == 1 and all(isinstance(r, dict) for r in next(iter(lists.values()))):
            yield pa.Table.from_pylist(next(iter(lists.values())))
        else:
            yield pa.Table.from_pylist([obj])
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise bad.fatal(1, f"the values cannot form a table ({exc})") from None


# -- CSV / TSV ----------------------------------------------------------------------------
class _CheckedText:
    """The input file as pyarrow's CSV reader sees it, checked as the blocks pass.

    Without ``replaced`` it only looks: a NUL byte or invalid UTF-8 sets
    ``problem`` and stops the read (the import restarts on the careful path, which
    finds the lines). With it, those lines get U+FFFD and lose their NUL bytes, and
    are counted. Either way no text column can become ``binary``. The checks are
    the C decoder and memchr on 8 MB blocks: a few ms per block.
    """

    def __init__(self, fh: Any, replaced: _Replaced | None) -> None:
        self._fh = fh
        self._replaced = replaced
        self._carry = b""
        self._line = 1
        self.problem = False
        self.closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return int(self._fh.tell())

    def close(self) -> None:
        self.closed = True

    def read(self, n: int = -1) -> bytes:
        while True:
            chunk: bytes = self._fh.read(n)
            data = self._carry + chunk
            if chunk:
                cut = _utf8_cut(data)  # a character cut at the block end waits for the rest
                body, self._carry = data[:cut], data[cut:]
                if not body:
                    continue
            else:
                body, self._carry = data, b""
            if not _text_ok(body):
                if self._replaced is None:
                    self.problem = True
                    raise OSError("the input has bytes that are not UTF-8 text")
                body = _repair_block(body, self._line, self._replaced)
            if self._replaced is not None:
                self._line += body.count(b"\n")
            return body


def _csv_careful(path: Path, delimiter: str, bad: _BadRows, out: Path) -> None:
    """Copy the rows of a CSV file that are text to ``out``; the others are bad rows.

    Python's csv module reads the file with ``surrogateescape`` (bytes that are not
    UTF-8 become surrogates), so each row is judged whole, with the line it starts
    on, even when a quoted value spans lines. Rows with the wrong number of fields
    are bad rows here too (pyarrow would count lines of ``out``). Only files with
    such bytes take this path.
    """
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    with (
        open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as src,
        open(out, "w", encoding="utf-8", newline="") as dst,
    ):
        reader = csv.reader(src, delimiter=delimiter)
        writer = csv.writer(dst, delimiter=delimiter, lineterminator="\n")
        width: int | None = None
        prev = 0
        try:
            for rec in reader:
                start, prev = prev + 1, reader.line_num
                if not rec:
                    continue
                problem = None
                for value in rec:
                    if "\x00" in value:
                        problem = "contains a NUL byte"
                        break
                    m = _SURROGATE.search(value)
                    if m is not None:
                        problem = f"not UTF-8 text (byte 0x{ord(m.group()) - 0xDC00:02x})"
                        break
                if width is None:
                    if problem is not None:
                        raise bad.fatal(start, f"the header is {problem}")
                    width = len(rec)
                elif problem is None and len(rec) != width:
                    problem = f"expected {width} fields, found {len(rec)}"
                if problem is not None:
                    bad.add(start, problem)
                    continue
                writer.writerow(rec)
        except csv.Error as exc:
            raise bad.fatal(reader.line_num, f"not valid CSV ({exc})") from None


_CSV_ROW_RE = re.compile(r"[Rr]ow #?(\d+)")


def _csv_batches(
    path: Path,
    delimiter: str,
    bad: _BadRows,
    progress: ProgressFn,
    column_types: dict[str, pa.DataType],
    replaced: _Replaced,
    careful: bool,
    work: Path,
) -> Iterator[pa.RecordBatch]:
    def on_invalid(row: Any) -> str:
        if bad.full:
            return "error"
        bad.add(
            row.number,
            f"expected {row.expected_columns} fields, found {row.actual_columns}",
        )
        return "skip"

    src = path
    if careful and not replaced.enabled:
        src = work / "text-rows.csv"
        _csv_careful(path, delimiter, bad, src)
    total = max(src.stat().st_size, 1)
    reader: Any = None
    with open(src, "rb") as raw:
        fh = _CheckedText(raw, replaced if replaced.enabled else None)
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
        except (pa.ArrowException, OSError) as exc:
            if fh.problem:
                if careful:  # pragma: no cover - the careful copy holds text only
                    raise bad.fatal(None, "the input is not UTF-8 text") from None
                raise _Retry(column_types, careful_csv=True) from None
            if not isinstance(exc, pa.ArrowInvalid):
                raise bad.fatal(None, f"cannot read the file ({exc})") from None
            msg = str(exc)
            if bad.rows and "Expected" in msg and "columns" in msg:
                raise BadRowsError(bad.rows, more=True) from None
            m = re.search(r"In CSV column #(\d+):.*?CSV conversion error", msg)
            if m is not None:
                names = reader.schema.names if reader is not None else []
                idx = int(m.group(1))
                if idx < len(names) and names[idx] not in column_types:
                    raise _Retry({**column_types, names[idx]: pa.string()}) from None
            if "Empty CSV file" in msg:
                raise bad.fatal(1, "there is no header line (the file is empty)") from None
            row = _CSV_ROW_RE.search(msg)
            raise bad.fatal(int(row.group(1)) if row else None, msg) from None


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
    path: Path,
    paragraphs: bool,
    column: str,
    progress: ProgressFn,
    bad: _BadRows,
    replaced: _Replaced,
) -> Iterator[pa.Table]:
    """One row per line (or paragraph); a line that is not text is a bad row (with
    ``paragraphs``: its whole paragraph), or is repaired with ``replace_invalid``."""
    total = max(path.stat().st_size, 1)
    rows: list[str] = []
    para: list[str] = []
    para_bad = False
    seen = 0
    lineno = 0
    with open(path, "rb") as fh:
        for raw in fh:
            lineno += 1
            seen += len(raw)
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            problem = _utf8_problem(raw)
            if problem is not None:
                if replaced.enabled:
                    raw = _repair_line(raw)
                    replaced.add(lineno)
                else:
                    bad.add(lineno, problem)
                    if not paragraphs:
                        continue
                    para_bad = True
                    raw = b"x"  # keeps the paragraph open until its end
            text = raw.decode("utf-8").rstrip("\r\n")
            if paragraphs:
                if text.strip():
                    para.append(text)
                elif para:
                    if not para_bad:
                        rows.append("\n".join(para))
                    para, para_bad = [], False
            elif text.strip():
                rows.append(text)
            if len(rows) >= _TEXT_BATCH:
                yield pa.table({column: pa.array(rows, pa.string())})
                rows = []
                progress(min(seen / total, 1.0), f"{seen:,} bytes read")
        if para and not para_bad:
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
    workspace: Workspace,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    format: str | None = None,
    on_bad: OnBad = "error",
    replace_invalid: bool = False,
    text_column: str = "text",
    progress: ProgressFn | None = None,
    check_cancelled: Callable[[], None] | None = None,
) -> ImportResult:
    """Import ``path`` as a new dataset; on any failure nothing is left behind.

    ``on_bad``: fail on bad rows (``error``, the first ones listed with their lines)
    or leave them out with a report (``skip``). ``replace_invalid``: keep rows whose
    text is not UTF-8 or holds NUL bytes, with U+FFFD for the invalid bytes and the
    NUL bytes dropped; the result counts the lines (rows) changed.
    """
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
    careful_json = careful_csv = False
    try:
        for _attempt in range(1000):
            bad = _BadRows(str(src), on_bad)
            replaced = _Replaced(replace_invalid, "row" if fmt in ("parquet", "hf") else "line")
            work = make_owned_temp_dir(store.root, "import")
            try:
                with store.writer(ds_id) as w:
                    parts = _batches(
                        fmt,
                        src,
                        bad,
                        report,
                        work,
                        text_column,
                        column_types,
                        replaced,
                        careful_json=careful_json,
                        careful_csv=careful_csv,
                    )
                    schema: pa.Schema | None = None
                    # 8 stream blocks (~8 MB) ahead: the parser keeps going while a chunk is written.
                    for part in _prefetch(parts, 8):
                        if check_cancelled is not None:
                            check_cancelled()
                        if part.schema is not schema:
                            _check_schema(part.schema, fmt, bad)
                            schema = part.schema
                        w.write(part)
                    bad.finish()
                break
            except _Retry as retry:
                column_types = retry.column_types or column_types
                careful_json = careful_json or retry.careful_json
                careful_csv = careful_csv or retry.careful_csv
            finally:
                shutil.rmtree(work, ignore_errors=True)
        else:  # pragma: no cover - one retry per column at most
            raise ConfigError(f"Cannot settle the column types of {src}.")
        params = {
            "path": str(src),
            "format": fmt,
            "on_bad": on_bad,
            "replace_invalid": replace_invalid,
        }
        version = store.commit(
            w,
            dataset_id=ds_id,
            message=f"import {src.name}",
            operation={"name": "import", "params": params},
            parent=None,
            new_dataset_name=name or src.stem,
            source=str(src),
            extra_manifest={
                "import": {**params, "bad_rows": bad.report(), "replaced": replaced.report()}
            },
            action="import",
        )
    except BaseException:
        shutil.rmtree(ds_dir, ignore_errors=True)
        raise
    report(1.0, f"imported {version.rows:,} rows")
    return ImportResult(version, name or src.stem, fmt, bad.report(), replaced.report())


def _check_schema(schema: pa.Schema, fmt: str, bad: _BadRows) -> None:
    """No column of text input is binary; nothing is nested deeper than MAX_DEPTH."""
    for f in schema:
        if fmt in TEXT_FORMATS and _has_binary(f.type):
            raise bad.fatal(None, f"column '{f.name}' is not text")
        if _type_depth(f.type) > MAX_DEPTH:
            raise bad.fatal(None, f"column '{f.name}' is nested deeper than {MAX_DEPTH} levels")


def _batches(
    fmt: str,
    src: Path,
    bad: _BadRows,
    progress: ProgressFn,
    work: Path,
    text_column: str,
    column_types: dict[str, pa.DataType],
    replaced: _Replaced,
    *,
    careful_json: bool = False,
    careful_csv: bool = False,
) -> Iterator[pa.Table | pa.RecordBatch]:
    if fmt == "jsonl":
        if careful_json:
            yield from _jsonl_batches(src, bad, progress, replaced)
        else:
            yield from _jsonl_stream(src, progress)
    elif fmt == "json":
        yield from _json_batches(src, bad, progress, work, replaced)
    elif fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        yield from _csv_batches(
            src, delimiter, bad, progress, column_types, replaced, careful_csv, work
        )
    elif fmt == "parquet":
        yield from _checked_rows(_parquet_batches(src, bad, progress), bad, replaced)
    elif fmt == "hf":
        batches = (b for t in _hf_batches(src, progress) for b in t.to_batches())
        yield from _checked_rows(batches, bad, replaced)
    else:
        yield from _text_batches(src, fmt == "paragraphs", text_column, progress, bad, replaced)


def import_job(
    ctx: JobContext,
    path: str,
    name: str | None = None,
    format: str | None = None,
    on_bad: OnBad = "error",
    text_column: str = "text",
    replace_invalid: bool = False,
) -> dict[str, Any]:
    """Job ``data.import``: import a file or folder as a new dataset, with progress."""
    res = import_dataset(
        ctx.workspace,
        path,
        name=name,
        format=format,
        on_bad=on_bad,
        replace_invalid=replace_invalid,
        text_column=text_column,
        progress=ctx.progress,
        check_cancelled=ctx.check_cancelled,
    )
    if res.bad_rows["count"]:
        ctx.log(f"skipped {res.bad_rows['count']} bad row(s)", "warning")
        for r in res.bad_rows["rows"][:20]:
            ctx.log(str(BadRow(**r)), "warning")
    if res.replaced["count"]:
        where = ", ".join(str(n) for n in res.replaced["lines"][:20])
        ctx.log(
            f"replaced invalid UTF-8 / dropped NUL bytes in {res.replaced['count']} "
            f"{res.replaced['unit']}(s): {where}",
            "warning",
        )
    ctx.artifact("dataset_version", res.version.path)
    out = res.to_dict()
    ctx.result(out)
    return out
