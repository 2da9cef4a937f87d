"""Dataset import: every format round-trips; bad rows are line-numbered; failures leave nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from app.core.data import importers
from app.core.data.export import export_version
from app.core.data.importers import BadRowsError, import_dataset
from app.core.data.store import DatasetStore

ROWS: list[dict[str, Any]] = [
    {"id": 1, "text": "Hello, world", "score": 0.5},
    {"id": 2, "text": 'Quotes "inside" and ünïcödé', "score": 1.25},
    {"id": 3, "text": "two\nlines", "score": -3.0},
    {"id": 4, "text": "tab\tseparated", "score": 0.0},
]
TABLE = pa.Table.from_pylist(ROWS)


def _nothing_left(ws: Any) -> None:
    assert ws.db.query("SELECT * FROM datasets") == []
    assert ws.db.query("SELECT * FROM dataset_versions") == []
    assert list(ws.datasets_dir.iterdir()) == []


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def _roundtrip(ws: Any, src: Path, fmt: str, tmp: Path, **kw: Any) -> tuple[str, str]:
    """Import ``src``, export it in ``fmt``, import the export: both hashes."""
    first = import_dataset(ws, src, **kw).version
    out = tmp / f"out.{fmt}"
    export_version(ws, first.dataset_id, fmt, out)
    second = import_dataset(ws, out, format=fmt).version
    return first.hash, second.hash


def test_jsonl_roundtrip(workspace: Any, tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "in.jsonl", ROWS)
    res = import_dataset(workspace, src)
    assert res.version.rows == 4 and res.format == "jsonl"
    assert DatasetStore(workspace).read_table(res.version.dataset_id).to_pylist() == ROWS
    h1, h2 = _roundtrip(workspace, src, "jsonl", tmp_path)
    assert h1 == h2 == res.version.hash


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_and_tsv_roundtrip(workspace: Any, tmp_path: Path, fmt: str) -> None:
    src = tmp_path / f"in.{fmt}"
    pacsv.write_csv(
        TABLE,
        src,
        pacsv.WriteOptions(delimiter="," if fmt == "csv" else "\t", quoting_style="needed"),
    )
    res = import_dataset(workspace, src)
    table = DatasetStore(workspace).read_table(res.version.dataset_id)
    assert table.to_pylist() == ROWS
    # CSV export then import again gives the very same content hash.
    out = tmp_path / "out.csv"
    export_version(workspace, res.version.dataset_id, "csv", out)
    assert import_dataset(workspace, out).version.hash == res.version.hash


def test_json_array_and_columns_roundtrip(workspace: Any, tmp_path: Path) -> None:
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps(ROWS, indent=2, ensure_ascii=False), "utf-8")
    a = import_dataset(workspace, arr).version
    assert DatasetStore(workspace).read_table(a.dataset_id).to_pylist() == ROWS
    cols = tmp_path / "cols.json"
    cols.write_text(json.dumps({k: [r[k] for r in ROWS] for k in ROWS[0]}), "utf-8")
    b = import_dataset(workspace, cols).version
    assert a.hash == b.hash
    out = tmp_path / "out.jsonl"
    export_version(workspace, a.dataset_id, "jsonl", out)
    assert [json.loads(x) for x in out.read_text("utf-8").splitlines()] == ROWS


def test_parquet_roundtrip(workspace: Any, tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    pq.write_table(TABLE, src, row_group_size=1)  # several row groups
    h1, h2 = _roundtrip(workspace, src, "parquet", tmp_path)
    assert h1 == h2
    assert h1 == import_dataset(workspace, _write_jsonl(tmp_path / "same.jsonl", ROWS)).version.hash


def test_hf_folder_roundtrip(workspace: Any, tmp_path: Path) -> None:
    import datasets

    src = tmp_path / "hf"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(src))
    res = import_dataset(workspace, src)
    assert res.format == "hf"
    assert DatasetStore(workspace).read_table(res.version.dataset_id).to_pylist() == ROWS
    out = tmp_path / "out_hf"
    export_version(workspace, res.version.dataset_id, "hf", out)
    assert datasets.load_from_disk(str(out)).to_list() == ROWS
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_hf_dataset_dict_gets_a_split_column(workspace: Any, tmp_path: Path) -> None:
    import datasets

    src = tmp_path / "hfdict"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(ROWS[:3]),
            "test": datasets.Dataset.from_list(ROWS[3:]),
        }
    ).save_to_disk(str(src))
    v = import_dataset(workspace, src).version
    table = DatasetStore(workspace).read_table(v.dataset_id)
    assert table["split"].to_pylist() == ["train", "train", "train", "test"]


def test_text_lines_and_paragraphs(workspace: Any, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("first line\nsecond line\n\nthird para\ncontinues\n\n\n", "utf-8")
    lines = import_dataset(workspace, src).version
    store = DatasetStore(workspace)
    assert store.read_table(lines.dataset_id)["text"].to_pylist() == [
        "first line",
        "second line",
        "third para",
        "continues",
    ]
    paras = import_dataset(workspace, src, format="paragraphs").version
    assert store.read_table(paras.dataset_id)["text"].to_pylist() == [
        "first line\nsecond line",
        "third para\ncontinues",
    ]
    out = tmp_path / "out.jsonl"
    export_version(workspace, paras.dataset_id, "jsonl", out)
    assert json.loads(out.read_text("utf-8").splitlines()[1]) == {"text": "third para\ncontinues"}


# -- bad input -------------------------------------------------------------------------------------
def test_malformed_jsonl_fails_with_line_numbers_and_leaves_nothing(
    workspace: Any, tmp_path: Path
) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"a": 1}\n{"a": 2}\n{"a": oops}\n[1, 2]\n{"a": 5}\n', "utf-8")
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, src)
    assert [(r.line, r.reason.split(" (")[0]) for r in err.value.rows] == [
        (3, "not valid JSON"),
        (4, "not a JSON object"),
    ]
    assert "bad.jsonl line 3" in str(err.value)
    _nothing_left(workspace)


def test_skip_mode_reports_bad_lines_in_the_manifest(workspace: Any, tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"a": 1}\nnot json\n{"a": "text"}\n{"a": 4}\n"str"\n', "utf-8")
    res = import_dataset(workspace, src, on_bad="skip")
    assert res.version.rows == 2
    manifest = json.loads((res.version.path / "manifest.json").read_text())
    report = manifest["import"]["bad_rows"]
    assert report["count"] == 3
    assert [r["line"] for r in report["rows"]] == [2, 3, 5]
    assert "expected int64" in report["rows"][1]["reason"]
    assert DatasetStore(workspace).read_table(res.version.dataset_id)["a"].to_pylist() == [1, 4]


def test_jsonl_blocks_keep_line_numbers_and_hash(
    workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"i": i, "t": f"row {i} " + "x" * (i % 7)} for i in range(3000)]
    src = _write_jsonl(tmp_path / "many.jsonl", rows)
    whole = import_dataset(workspace, src).version
    monkeypatch.setattr(importers, "_JSON_BLOCK", 1000)  # many small blocks
    blocks = import_dataset(workspace, src).version
    assert blocks.hash == whole.hash and blocks.rows == 3000
    lines = src.read_text("utf-8").splitlines()
    lines[2500] = '{"i": 2500, "t": '  # a broken line deep in the file
    bad = tmp_path / "many_bad.jsonl"
    bad.write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, bad)
    assert [r.line for r in err.value.rows] == [2501]
    skipped = import_dataset(workspace, bad, on_bad="skip").version
    assert skipped.rows == 2999


def test_jsonl_streaming_and_careful_paths_agree(
    workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clean JSON Lines go through pyarrow's streaming reader; anything odd falls back to
    the careful block path: the same rows give the same version hash either way."""
    monkeypatch.setattr(importers, "_JSON_STREAM_BLOCK", 4096)  # many stream blocks
    rows = [{"i": i, "t": None if i < 5 else f"row {i}", "f": i / 3} for i in range(4000)]
    src = _write_jsonl(tmp_path / "clean.jsonl", rows)
    used: list[str] = []
    real_stream, real_careful = importers._jsonl_stream, importers._jsonl_batches
    monkeypatch.setattr(importers, "_jsonl_stream",
                        lambda *a: (used.append("stream"), (yield from real_stream(*a))))  # fmt: skip
    monkeypatch.setattr(importers, "_jsonl_batches",
                        lambda *a: (used.append("careful"), (yield from real_careful(*a))))  # fmt: skip
    fast = import_dataset(workspace, src).version
    assert used == ["stream"] and fast.rows == 4000
    assert DatasetStore(workspace).read_table(fast.dataset_id).column("t")[5].as_py() == "row 5"
    bom = tmp_path / "bom.jsonl"  # a byte-order mark: the careful path
    bom.write_bytes(b"\xef\xbb\xbf" + src.read_bytes())
    used.clear()
    careful = import_dataset(workspace, bom).version
    assert used == ["stream", "careful"] and careful.hash == fast.hash
    # A type change far beyond the first stream block: restarted carefully, line reported.
    lines = src.read_text("utf-8").splitlines()
    lines[3500] = '{"i": "three thousand five hundred", "t": "x", "f": 1.0}'
    changed = tmp_path / "changed.jsonl"
    changed.write_text("\n".join(lines) + "\n", "utf-8")
    used.clear()
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, changed)
    assert used == ["stream", "careful"] and [r.line for r in err.value.rows] == [3501]
    assert "expected int64" in err.value.rows[0].reason
    assert len(DatasetStore(workspace).list_datasets()) == 2  # nothing left by the failure


def test_malformed_csv_fails_with_line_numbers(workspace: Any, tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("a,b\n1,x\n2,y\n3,z,extra\n4\n5,w\n", "utf-8")
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, src)
    assert [r.line for r in err.value.rows] == [4, 5]
    assert "expected 2 fields, found 3" in err.value.rows[0].reason
    _nothing_left(workspace)
    res = import_dataset(workspace, src, on_bad="skip")
    assert res.bad_rows["count"] == 2
    assert DatasetStore(workspace).read_table(res.version.dataset_id).to_pylist() == [
        {"a": 1, "b": "x"},
        {"a": 2, "b": "y"},
        {"a": 5, "b": "w"},
    ]


def test_csv_column_that_turns_to_text_later_is_read_as_text(
    workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importers, "_CSV_BLOCK", 256)
    src = tmp_path / "drift.csv"
    src.write_text("code,n\n" + "".join(f"{i},{i}\n" for i in range(200)) + "A7,200\n", "utf-8")
    v = import_dataset(workspace, src).version
    table = DatasetStore(workspace).read_table(v.dataset_id)
    assert table.schema.field("code").type == pa.string()
    assert table.schema.field("n").type == pa.int64()
    assert table["code"].to_pylist()[-1] == "A7" and table.num_rows == 201


def test_malformed_json_array_and_parquet_leave_nothing(workspace: Any, tmp_path: Path) -> None:
    arr = tmp_path / "bad.json"
    arr.write_text('[\n  {"a": 1},\n  42,\n  {"a": 3}\n]\n', "utf-8")
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, arr)
    assert [(r.line, r.reason) for r in err.value.rows] == [(3, "not a JSON object (a number)")]
    _nothing_left(workspace)
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"a": 1},\n  {"a": 2\n  {"a": 3}\n]\n', "utf-8")
    with pytest.raises(BadRowsError) as err:
        import_dataset(workspace, broken, on_bad="skip")  # a broken array cannot be skipped over
    assert err.value.rows[-1].line == 4
    _nothing_left(workspace)
    pqf = tmp_path / "bad.parquet"
    pq.write_table(TABLE, pqf)
    pqf.write_bytes(pqf.read_bytes()[:-40])  # truncated footer
    with pytest.raises(BadRowsError, match="not a valid Parquet file"):
        import_dataset(workspace, pqf)
    _nothing_left(workspace)
    skipped = import_dataset(workspace, arr, on_bad="skip")
    assert skipped.version.rows == 2 and skipped.bad_rows["rows"][0]["line"] == 3


def test_unknown_extension_and_missing_file(workspace: Any, tmp_path: Path) -> None:
    from app.core.errors import ConfigError, NotFoundError

    (tmp_path / "x.xyz").write_text("a")
    with pytest.raises(ConfigError, match="--format"):
        import_dataset(workspace, tmp_path / "x.xyz")
    with pytest.raises(NotFoundError):
        import_dataset(workspace, tmp_path / "missing.jsonl")
    _nothing_left(workspace)


def test_import_job_runs_in_a_worker(workspace: Any, tmp_path: Path) -> None:
    from app.core.jobs.store import JobState
    from app.workers.supervisor import Supervisor

    src = _write_jsonl(tmp_path / "in.jsonl", ROWS)
    sup = Supervisor(workspace)
    job = sup.jobs.submit("data.import", {"path": str(src), "name": "worker-import"})
    assert sup.start(job.id)
    done = sup.wait(job.id, timeout=120)
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.result is not None and done.result["rows"] == 4
    ds = DatasetStore(workspace).get("worker-import")
    assert ds.current_version == done.result["version"]
    events = (done.run_dir / "events.jsonl").read_text().splitlines()
    assert any(json.loads(e).get("type") == "progress" for e in events)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\nnope\n', "utf-8")
    job2 = sup.jobs.submit("data.import", {"path": str(bad)})
    assert sup.start(job2.id)
    failed = sup.wait(job2.id, timeout=120)
    assert failed.state == JobState.FAILED
    assert failed.error is not None and "line 2" in failed.error
    assert [d.name for d in DatasetStore(workspace).list_datasets()] == ["worker-import"]
