"""Text that is not text: invalid UTF-8, NUL bytes and deep nesting are line-numbered bad
rows (or replaced on request); every stored version can be shown and exported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.data import importers
from app.core.data.export import export_version
from app.core.data.importers import BadRowsError, import_dataset
from app.core.data.store import DatasetStore


def _nothing_left(ws: Any) -> None:
    assert ws.db.query("SELECT * FROM datasets") == []
    assert ws.db.query("SELECT * FROM dataset_versions") == []
    assert list(ws.datasets_dir.iterdir()) == []


def _shown_and_exported(ws: Any, ds_id: str, tmp: Path) -> list[dict[str, Any]]:
    """Read every value as Python (what the table view does) and export in each format."""
    store = DatasetStore(ws)
    rows = store.read_table(ds_id).to_pylist()
    for f in store.read_table(ds_id).schema:
        assert not pa.types.is_binary(f.type), f
    for fmt in ("jsonl", "csv", "parquet"):
        out = export_version(ws, ds_id, fmt, tmp / f"{ds_id}.{fmt}")
        assert out.stat().st_size > 0
    return rows


def _big_jsonl_with(tmp: Path, bad: dict[int, bytes], n: int = 50_000) -> Path:
    """``n`` good rows (several MB: past pyarrow's first stream block) and bad raw lines."""
    lines = [json.dumps({"id": i, "text": f"row {i} ünï"}).encode() for i in range(n)]
    for lineno, raw in bad.items():
        lines[lineno - 1] = raw
    path = tmp / "rows.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert path.stat().st_size > 2 * importers._JSON_STREAM_BLOCK
    return path


def test_jsonl_invalid_utf8_and_nul_fail_with_line_numbers(workspace: Any, tmp_path: Path) -> None:
    src = _big_jsonl_with(
        tmp_path,
        {
            40_001: b'{"id": 40000, "text": "bad \xff\xfe byte"}',
            45_000: b'{"id": 44999, "text": "nul \x00 byte"}',
        },
    )
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, src)
    lines = {(r.line, r.reason.split(" (")[0]) for r in err.value.rows}
    assert lines == {(40_001, "not UTF-8 text"), (45_000, "contains a NUL byte at column 28")}
    assert "line 40001" in str(err.value) and "--replace-invalid" in str(err.value)
    _nothing_left(workspace)


def test_jsonl_skip_and_replace_count_and_stay_showable(workspace: Any, tmp_path: Path) -> None:
    src = _big_jsonl_with(
        tmp_path,
        {
            40_001: b'{"id": 40000, "text": "bad \xff\xfe byte"}',
            45_000: b'{"id": 44999, "text": "nul \x00 byte"}',
        },
    )
    skipped = import_dataset(workspace, src, on_bad="skip")
    assert skipped.version.rows == 49_998 and skipped.bad_rows["count"] == 2
    assert [r["line"] for r in skipped.bad_rows["rows"]] == [40_001, 45_000]
    _shown_and_exported(workspace, skipped.version.dataset_id, tmp_path)

    fixed = import_dataset(workspace, src, replace_invalid=True)
    assert fixed.version.rows == 50_000 and fixed.bad_rows["count"] == 0
    assert fixed.replaced["count"] == 2 and fixed.replaced["lines"] == [40_001, 45_000]
    assert fixed.to_dict()["replaced"] == 2
    rows = _shown_and_exported(workspace, fixed.version.dataset_id, tmp_path)
    assert rows[40_000]["text"] == "bad \ufffd\ufffd byte"
    assert rows[44_999]["text"] == "nul  byte"
    manifest = json.loads((fixed.version.path / "manifest.json").read_text())
    assert manifest["import"]["replaced"]["lines"] == [40_001, 45_000]
    assert manifest["import"]["replace_invalid"] is True


def test_jsonl_lone_surrogate_escape_is_a_bad_row(workspace: Any, tmp_path: Path) -> None:
    src = tmp_path / "s.jsonl"
    src.write_bytes(b'{"a": "ok"}\n{"a": "x\\ud800y"}\n{"a": "\\ud83d\\ude00"}\n')
    res = import_dataset(workspace, src, on_bad="skip")
    assert [r["line"] for r in res.bad_rows["rows"]] == [2]
    assert DatasetStore(workspace).read_table(res.version.dataset_id)["a"].to_pylist() == [
        "ok",
        "\U0001f600",
    ]


def _csv_bytes(n: int, bad: dict[int, bytes]) -> bytes:
    rows = [b"id,text,n"] + [f'{i},"value {i} ü",{i * 2}'.encode() for i in range(n)]
    for lineno, raw in bad.items():
        rows[lineno - 1] = raw
    return b"\n".join(rows) + b"\n"


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_invalid_utf8_and_nul_are_bad_rows(workspace: Any, tmp_path: Path, fmt: str) -> None:
    data = _csv_bytes(
        5000,
        {
            1001: b'1000,"bad \xff byte",2000',
            # a quoted value over two lines: the row starts on line 3001
            3001: b'3000,"two\nlines \xc3",6000',
            4001: b'4000,"nul \x00",8000',
        },
    )
    if fmt == "tsv":
        data = data.replace(b",", b"\t")
    src = tmp_path / f"rows.{fmt}"
    src.write_bytes(data)
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, src)
    assert [r.line for r in err.value.rows] == [1001, 3001, 4002]
    assert "not UTF-8 text (byte 0xff)" in str(err.value)
    _nothing_left(workspace)

    skipped = import_dataset(workspace, src, on_bad="skip")
    assert skipped.version.rows == 4997 and skipped.bad_rows["count"] == 3
    rows = _shown_and_exported(workspace, skipped.version.dataset_id, tmp_path)
    assert rows[0] == {"id": 0, "text": "value 0 ü", "n": 0}

    fixed = import_dataset(workspace, src, replace_invalid=True)
    assert fixed.version.rows == 5000 and fixed.replaced["count"] == 3
    assert fixed.replaced["lines"] == [1001, 3002, 4002]
    rows = _shown_and_exported(workspace, fixed.version.dataset_id, tmp_path)
    assert rows[999]["text"] == "bad \ufffd byte"
    assert rows[2999]["text"] == "two\nlines \ufffd"
    assert rows[3999]["text"] == "nul "
    assert [
        f.type for f in DatasetStore(workspace).read_table(fixed.version.dataset_id).schema
    ] == [
        pa.int64(),
        pa.string(),
        pa.int64(),
    ]


def test_csv_all_invalid_column_never_becomes_binary(workspace: Any, tmp_path: Path) -> None:
    src = tmp_path / "f.csv"
    src.write_bytes(b"a,b\n1,\xff\n2,\xfe\n")
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, src)
    assert [r.line for r in err.value.rows] == [2, 3]
    res = import_dataset(workspace, src, replace_invalid=True)
    assert _shown_and_exported(workspace, res.version.dataset_id, tmp_path) == [
        {"a": 1, "b": "\ufffd"},
        {"a": 2, "b": "\ufffd"},
    ]


def test_csv_characters_cut_at_block_ends_are_kept(
    workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checking reader sees small blocks that cut multi-byte characters in two."""
    monkeypatch.setattr(importers, "_CSV_BLOCK", 64)
    text = "a,b\n" + "".join(f"{i},ü€😀{i}\n" for i in range(50))
    src = tmp_path / "cut.csv"
    src.write_text(text, "utf-8")
    res = import_dataset(workspace, src)
    assert res.replaced["count"] == 0
    rows = DatasetStore(workspace).read_table(res.version.dataset_id).to_pylist()
    assert rows[49] == {"a": 49, "b": "ü€😀49"}


def test_text_lines_that_are_not_utf8(workspace: Any, tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    src.write_bytes(b"hello\nwor\xffld\nnul\x00here\nend\n")
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, src)
    assert [r.line for r in err.value.rows] == [2, 3]
    res = import_dataset(workspace, src, on_bad="skip")
    assert DatasetStore(workspace).read_table(res.version.dataset_id)["text"].to_pylist() == [
        "hello",
        "end",
    ]
    res = import_dataset(workspace, src, replace_invalid=True)
    assert res.replaced["lines"] == [2, 3]
    assert _shown_and_exported(workspace, res.version.dataset_id, tmp_path)[1:3] == [
        {"text": "wor\ufffdld"},
        {"text": "nulhere"},
    ]


DEEP = 10_000


@pytest.mark.parametrize(
    ("name", "data", "line"),
    [
        ("deep.jsonl", b'{"a": 1}\n{"a": ' + b"[" * DEEP + b"]" * DEEP + b"}\n", 2),
        ("deep.json", b'[\n{"a": 1},\n{"a": ' + b"[" * DEEP + b"]" * DEEP + b"}\n]\n", 3),
        # pretty-printed: one bracket per line, the depth counts across lines
        ("deep-object.json", b'{"a":\n' + b"[\n" * DEEP + b"]\n" * DEEP + b"}\n", 65),
    ],
)
def test_deep_nesting_is_a_line_numbered_error(
    workspace: Any, tmp_path: Path, name: str, data: bytes, line: int
) -> None:
    src = tmp_path / name
    src.write_bytes(data)
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, src)
    assert err.value.rows[-1].line == line
    assert "nested deeper than 64 levels" in str(err.value)
    _nothing_left(workspace)


def test_deep_jsonl_line_is_skipped_and_brackets_in_strings_do_not_count(
    workspace: Any, tmp_path: Path
) -> None:
    src = tmp_path / "d.jsonl"
    brackets = "[" * 500 + "]" * 700 + '\\"[['
    lines = [
        json.dumps({"a": [[1]], "t": brackets}),
        '{"a": ' + "[" * DEEP + "]" * DEEP + ', "t": "x"}',
        json.dumps({"a": [[2]], "t": "y"}),
    ]
    src.write_text("\n".join(lines) + "\n")
    res = import_dataset(workspace, src, on_bad="skip")
    assert [r["line"] for r in res.bad_rows["rows"]] == [2]
    rows = DatasetStore(workspace).read_table(res.version.dataset_id).to_pylist()
    assert rows == [{"a": [[1]], "t": brackets}, {"a": [[2]], "t": "y"}]


def _parquet_with_invalid_strings(path: Path) -> Path:
    s = pa.array([b"ok", b"bad \xff", None, b"fine"], pa.binary()).view(pa.string())
    blob = pa.array([b"\x00\xff", b"\x01", b"", None], pa.binary())
    pq.write_table(pa.table({"s": s, "blob": blob}), path)
    return path


def test_parquet_string_column_with_invalid_utf8(workspace: Any, tmp_path: Path) -> None:
    src = _parquet_with_invalid_strings(tmp_path / "p.parquet")
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, src)
    assert "p.parquet row 2: a string column holds text that is not UTF-8" in str(err.value)
    _nothing_left(workspace)

    skipped = import_dataset(workspace, src, on_bad="skip")
    table = DatasetStore(workspace).read_table(skipped.version.dataset_id)
    assert table["s"].to_pylist() == ["ok", None, "fine"]
    assert table.schema.field("blob").type == pa.binary()  # binary stays binary

    fixed = import_dataset(workspace, src, replace_invalid=True)
    assert fixed.replaced == {"count": 1, "unit": "row", "lines": [2]}
    table = DatasetStore(workspace).read_table(fixed.version.dataset_id)
    assert table["s"].to_pylist() == ["ok", "bad \ufffd", None, "fine"]
    assert table["blob"].to_pylist() == [b"\x00\xff", b"\x01", b"", None]
    for fmt in ("jsonl", "parquet"):
        export_version(workspace, fixed.version.dataset_id, fmt, tmp_path / f"out.{fmt}")


def test_json_array_with_invalid_bytes(workspace: Any, tmp_path: Path) -> None:
    src = tmp_path / "a.json"
    src.write_bytes(b'[\n{"a": "ok"},\n{"a": "b\xffd"},\n{"a": "z"}\n]\n')
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, src)
    assert [r.line for r in err.value.rows] == [3]
    res = import_dataset(workspace, src, replace_invalid=True)
    assert res.replaced["lines"] == [3]
    assert _shown_and_exported(workspace, res.version.dataset_id, tmp_path)[1] == {"a": "b\ufffdd"}


def _reference_depth(line: bytes) -> tuple[int, bool]:
    """The deepest bracket outside strings, by a plain JSON-like state machine, up to the
    first backslash outside a string (where a JSON parser stops); and whether it stopped."""
    depth = peak = 0
    in_string = escaped = False
    for ch in line:
        if in_string:
            if escaped:
                escaped = False
            elif ch == 0x5C:
                escaped = True
            elif ch == 0x22:
                in_string = False
        elif ch == 0x5C:
            return peak, True
        elif ch == 0x22:
            in_string = True
        elif ch in b"[{":
            depth += 1
            peak = max(peak, depth)
        elif ch in b"]}":
            depth -= 1
    return peak, False


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    line=st.lists(st.sampled_from([b"[", b"{", b"]", b"}", b'"', b"\\", b"a", b":"]), max_size=60),
    piece=st.integers(1, 9),
    limit=st.integers(0, 6),
)
def test_depth_scan_matches_a_state_machine_across_pieces(
    line: list[bytes], piece: int, limit: int
) -> None:
    """Exact on JSON-like lines; never below the depth a parser reaches before an error."""
    raw = b"".join(line)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importers, "_SCAN_PIECE", piece)
        found = importers._deep_lines_piece(raw, limit)
    peak, stopped = _reference_depth(raw)
    if stopped:
        assert found or peak <= limit
    else:
        assert found == (peak > limit)


def test_utf8_check_of_stream_batches() -> None:
    """ASCII passes at memory speed; a character split over two values is still caught."""
    ascii_ = pa.array(["abc", None])
    split = pa.array([b"\xc3", b"\xa9"], pa.binary()).view(pa.string())
    ok = pa.array(["é", "ü"])
    for arrays, valid in (
        ([ascii_, ok], True),
        ([split, ok], False),
        ([pa.array([["x"], ["\u00e9"]])], True),
        ([pa.array([[b"\xff"]], pa.list_(pa.binary())).cast(pa.list_(pa.binary()))], True),
    ):
        batch = pa.RecordBatch.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])
        if valid:
            importers._check_utf8(batch)
        else:
            with pytest.raises(pa.ArrowInvalid):
                importers._check_utf8(batch)
    # a slice sees only its own values
    bad_tail = pa.array([b"ok", b"\xff"], pa.binary()).view(pa.string())
    importers._check_utf8(pa.RecordBatch.from_arrays([bad_tail.slice(0, 1)], names=["s"]))
    with pytest.raises(pa.ArrowInvalid):
        importers._check_utf8(pa.RecordBatch.from_arrays([bad_tail.slice(1)], names=["s"]))
