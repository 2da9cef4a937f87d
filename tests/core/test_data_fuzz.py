"""Fuzz of the importers: mutated CSV, TSV, JSON Lines, JSON, Parquet and text files.

2,000 inputs in all (byte flips, truncation, inserted quotes, newlines, NUL bytes,
invalid UTF-8, 10,000-deep brackets). Each input either imports, and the version can
be read back whole and exported, or fails with one of the app's errors, with a line
(row) number where the problem is a row, and leaves no dataset row, no version row
and no folder behind.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.data.export import export_version
from app.core.data.importers import TEXT_FORMATS, BadRowsError, import_dataset
from app.core.data.store import DatasetStore
from app.core.errors import ConfigError, DemoAIError

ROWS: list[dict[str, Any]] = [
    {"id": 1, "text": "Hello, world", "tags": ["a", "b"], "score": 0.5},
    {"id": 2, "text": 'Quotes "inside" and ünïcödé 😀', "tags": [], "score": 1.25},
    {"id": 3, "text": "two\nlines, a comma", "tags": ["x"], "score": None},
    {"id": 4, "text": "tab\tseparated [brackets] {braces}", "tags": ["y", "z"], "score": -3.0},
]
FLAT = [{k: v for k, v in r.items() if k != "tags"} for r in ROWS]


def _csv(delim: str) -> bytes:
    buf = io.StringIO()
    import csv

    w = csv.writer(buf, delimiter=delim, lineterminator="\n")
    w.writerow(FLAT[0].keys())
    for r in FLAT:
        w.writerow(["" if v is None else v for v in r.values()])
    return buf.getvalue().encode()


def _parquet() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ROWS), buf)
    return buf.getvalue()


SEEDS: dict[str, bytes] = {
    "csv": _csv(","),
    "tsv": _csv("\t"),
    "jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS).encode(),
    "json": json.dumps(ROWS, ensure_ascii=False, indent=1).encode(),
    "json-columns": json.dumps({k: [r[k] for r in FLAT] for k in FLAT[0]}).encode(),
    "parquet": _parquet(),
    "text": "first line\nsecond ünï line\n\nlast\n".encode(),
}
INSERTS = [
    b'"',
    b"\n",
    b"\r\n",
    b"\x00",
    b"\xff",
    b"\xc3",  # a lead byte without its continuation
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xef\xbb\xbf",
    b",",
    b"\t",
    b"{",
    b"]",
    b'\\ud800"',
    b"[" * 10_000,
    b'{"a":' * 10_000,
]


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> bytes:
    data = bytearray(SEEDS[kind])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(INSERTS))
        elif data:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


class _Fuzz:
    """One workspace for all the examples of a test (hypothesis re-runs the body)."""

    def __init__(self, root: Path) -> None:
        from app.core.workspace import Workspace

        self.root = root
        self.ws = Workspace.open(root / "ws")
        self.n = 0
        self.outcomes: dict[str, int] = {}

    def close(self) -> None:
        self.ws.close()

    def _state(self) -> tuple[int, int, list[str]]:
        db = self.ws.db
        return (
            len(db.query("SELECT id FROM datasets")),
            len(db.query("SELECT hash FROM dataset_versions")),
            sorted(p.name for p in self.ws.datasets_dir.iterdir()),
        )

    def check(self, data: bytes, fmt: str, on_bad: str, replace: bool) -> None:
        self.n += 1
        suffix = {"text": "txt"}.get(fmt, fmt)
        src = self.root / f"in-{self.n}.{suffix}"
        src.write_bytes(data)
        before = self._state()
        try:
            res = import_dataset(self.ws, src, format=fmt, on_bad=on_bad, replace_invalid=replace)  # type: ignore[arg-type]
        except DemoAIError as exc:
            assert str(exc)
            if isinstance(exc, BadRowsError) and fmt != "parquet":
                # a row problem names its line
                assert exc.rows and exc.rows[-1].line is not None, str(exc)
            assert self._state() == before, f"a failed import left something: {exc}"
            if isinstance(exc, ConfigError):  # no rows at all: the only config error here
                assert "no rows" in str(exc), str(exc)
            self.outcomes[type(exc).__name__] = self.outcomes.get(type(exc).__name__, 0) + 1
            return
        finally:
            src.unlink()
        store = DatasetStore(self.ws)
        table = store.read_table(res.version.dataset_id)
        table.to_pylist()  # every value can be shown
        assert table.num_rows == res.version.rows
        if fmt in TEXT_FORMATS:
            for f in table.schema:
                assert "binary" not in str(f.type), (f, data)
        for out_fmt in ("jsonl", "csv"):
            out = self.root / f"out-{self.n}.{out_fmt}"
            export_version(self.ws, res.version.dataset_id, out_fmt, out)
            out.unlink()
        store.delete(res.version.dataset_id)
        assert not [t for t in self.ws.temporaries()]
        self.outcomes["imported"] = self.outcomes.get("imported", 0) + 1


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Fuzz]:
    f = _Fuzz(tmp_path_factory.mktemp("fuzz"))
    yield f
    print(f"\nfuzz: {f.n} inputs, outcomes {f.outcomes}")
    f.close()


# 2,000 inputs in all; derandomized so a failure reproduces on every run.
CASES = [
    ("csv", "csv", 400),
    ("tsv", "tsv", 200),
    ("jsonl", "jsonl", 400),
    ("json", "json", 300),
    ("json-columns", "json", 100),
    ("parquet", "parquet", 300),
    ("text", "text", 300),
]
assert sum(n for _, _, n in CASES) == 2000


@pytest.mark.parametrize(("kind", "fmt", "examples"), CASES)
def test_mutated_inputs_import_cleanly_or_fail_cleanly(
    fuzz: _Fuzz, kind: str, fmt: str, examples: int
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        data=mutated(kind),
        on_bad=st.sampled_from(["error", "skip"]),
        replace=st.booleans(),
    )
    def run(data: bytes, on_bad: str, replace: bool) -> None:
        fuzz.check(data, fmt, on_bad, replace)

    run()
