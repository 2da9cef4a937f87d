"""Versions: content hashes, diff, revert, recipes that replay to the same hash, the sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from app.core.data.diff import diff_versions
from app.core.data.export import export_version
from app.core.data.importers import import_dataset
from app.core.data.recipes import Recipe, apply_op, apply_recipe, recipe_of
from app.core.data.samples import SAMPLE_NAME, ensure_sample_dataset
from app.core.data.store import CHUNK_ROWS, ROW_GROUP_ROWS, DatasetStore, hash_table
from app.core.errors import ConfigError, NotFoundError

ROOT = Path(__file__).resolve().parents[2]


def test_hash_depends_on_content_not_batching(workspace: Any) -> None:
    n = CHUNK_ROWS + 1234
    table = pa.table({"i": pa.array(range(n)), "t": pa.array([f"r{i}" for i in range(n)])})
    store = DatasetStore(workspace)
    one = store.create_dataset("one", table)
    many = store.create_dataset("many", table.to_batches(max_chunksize=999))
    assert one.hash == many.hash == hash_table(table)
    assert one.path != many.path
    # hash chunks are split into row groups; the hash does not depend on that
    assert store.parquet_file(one.dataset_id).num_row_groups == -(-CHUNK_ROWS // ROW_GROUP_ROWS) + 1
    changed = table.set_column(1, "t", pa.array([f"r{i}" for i in range(n - 1)] + ["x"]))
    assert hash_table(changed) != one.hash
    assert hash_table(table.rename_columns(["i", "u"])) != one.hash
    manifest = json.loads((one.path / "manifest.json").read_text())
    assert manifest["hash"] == one.hash and manifest["rows"] == n


def test_versions_diff_and_revert(workspace: Any) -> None:
    store = DatasetStore(workspace)
    rows = [{"id": i, "text": f"t{i}"} for i in range(5)]
    v1 = store.create_dataset("d", pa.Table.from_pylist(rows))
    ds = v1.dataset_id
    new_rows = [r for r in rows if r["id"] != 1]
    new_rows[0] = {"id": 0, "text": "changed"}
    new_rows.append({"id": 9, "text": "t9"})
    v2 = store.create_version(
        ds, pa.Table.from_pylist(new_rows), message="edit", operation={"name": "edit", "params": {}}
    )
    assert v2.parent_hash == v1.hash
    keyed = diff_versions(workspace, ds, v1.hash, v2.hash, key="id")
    assert (keyed.rows_added, keyed.rows_removed, keyed.rows_changed) == (1, 1, 1)
    assert keyed.entry(0) == ("changed", 1, 1) and keyed.entry(1) == ("removed", 2, None)
    plain = diff_versions(workspace, ds, v1.hash[:8], v2.hash[:8])  # rows by position
    assert (plain.rows_added, plain.rows_removed, plain.rows_changed) == (1, 1, 1)
    v3 = apply_op(
        workspace,
        ds,
        "map_template",
        {
            "format": "prompt_completion",
            "prompt_template": "{text}",
            "completion_template": "{id}",
            "keep_columns": ["id"],
        },
    )
    schema = diff_versions(workspace, ds, v2.hash, v3.hash)
    assert schema.columns_added == ["prompt", "completion"]
    assert schema.columns_removed == ["text"]
    assert [v.hash for v in store.versions(ds)] == [v1.hash, v2.hash, v3.hash]
    back = store.revert(ds, v1.hash[:10])
    assert back.hash == v1.hash
    assert store.get(ds).current_version == v1.hash
    assert store.read_table(ds).to_pylist() == rows
    assert [e["action"] for e in store.log(ds)] == ["create", "edit", "map_template", "revert"]
    assert len(store.versions(ds)) == 3  # revert moves the pointer, copies nothing
    with pytest.raises(NotFoundError):
        store.version(ds, "ffffffff")


def test_recipe_reapplied_to_a_second_import_gives_the_same_hash(
    workspace: Any, tmp_path: Path
) -> None:
    src = tmp_path / "in.jsonl"
    rows = [
        {"instruction": "Write to  Bob", "input": "bob@example.com", "output": "Hi Bob"},
        {"instruction": "Write to  Bob", "input": "bob@example.com", "output": "Hi Bob"},
        {"instruction": "", "input": "", "output": ""},
        {"instruction": "Classify", "input": "printer broken", "output": "hardware"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = import_dataset(workspace, src, name="first").version
    recipe = Recipe.from_dict(
        {
            "steps": [
                {"name": "normalize"},
                {"name": "drop_empty"},
                {"name": "dedupe"},
                {"name": "redact_pii"},
                {"name": "map_template", "params": {"system": "Be brief."}},
                {"name": "split", "params": {"seed": 3}},
            ]
        }
    )
    out1 = apply_recipe(workspace, first.dataset_id, recipe)
    assert len(out1) == 6 and out1[-1].rows == 2
    recorded = recipe_of(workspace, first.dataset_id)
    assert [s.name for s in recorded.steps] == [s.name for s in recipe.steps]
    path = tmp_path / "recipe.json"
    recorded.save(path)
    second = import_dataset(workspace, src, name="second").version
    assert second.dataset_id != first.dataset_id and second.hash == first.hash
    out2 = apply_recipe(workspace, second.dataset_id, Recipe.load(path))
    assert out2[-1].hash == out1[-1].hash
    messages = DatasetStore(workspace).read_table(second.dataset_id)["messages"].to_pylist()
    assert messages[0][1]["content"] == "Write to Bob\n\n[EMAIL]"
    with pytest.raises(ConfigError, match="Unknown operation"):
        Recipe.from_dict([{"name": "frobnicate"}])


def test_export_is_atomic_and_refuses_to_overwrite(workspace: Any, tmp_path: Path) -> None:
    v = DatasetStore(workspace).create_dataset("d", pa.table({"a": [1, 2]}))
    out = tmp_path / "exports" / "x.jsonl"
    out.parent.mkdir()
    out.write_text("keep me")
    with pytest.raises(ConfigError, match="exists"):
        export_version(workspace, v.dataset_id, "jsonl", out)
    assert out.read_text() == "keep me"
    export_version(workspace, f"{v.dataset_id}@{v.hash[:8]}", "jsonl", out, overwrite=True)
    assert out.read_text() == '{"a": 1}\n{"a": 2}\n'
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.jsonl"]


def test_sample_dataset_is_imported_once(workspace: Any) -> None:
    v = ensure_sample_dataset(workspace)
    assert v is not None and v.rows == 60
    again = ensure_sample_dataset(workspace)
    assert again is not None and again.hash == v.hash
    store = DatasetStore(workspace)
    assert [d.name for d in store.list_datasets()] == [SAMPLE_NAME]
    table = store.read_table(v.dataset_id)
    assert table.column_names == ["instruction", "input", "output", "task"]
    assert all(table["output"].to_pylist())


def _dead_owner_name(tag: str) -> str:
    """A temporary name owned by a process that has ended (a child that printed it)."""
    code = f"from app.core.store.files import owned_temp_name; print(owned_temp_name({tag!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return out.stdout.strip()


def test_leftovers_of_dead_processes_go_live_and_unknown_ones_stay(workspace: Any) -> None:
    from app.core.store.files import owned_temp_name, temp_owner

    store = DatasetStore(workspace)
    v = store.create_dataset("kept", pa.table({"a": [1]}))
    dead_import = store.root / "deadbeef0000" / _dead_owner_name("version")
    (dead_import / "data.parquet").parent.mkdir(parents=True)
    (dead_import / "data.parquet").write_bytes(b"partial")
    dead_file = workspace.models_dir / _dead_owner_name("meta.json")
    dead_file.write_text("{")
    live = store.root / v.dataset_id / owned_temp_name("version")
    live.mkdir()
    legacy = store.root / v.dataset_id / (".tmp-" + "ab" * 16)
    legacy.mkdir()
    assert temp_owner(dead_import.name) == "dead" and temp_owner(live.name) == "alive"
    assert temp_owner(legacy.name) == "unknown"

    removed = {t.path for t in workspace.remove_leftovers()}
    assert removed == {dead_import, dead_file}
    # the dataset folder the killed import made is gone with its only content
    assert not (store.root / "deadbeef0000").exists()
    assert live.exists() and legacy.exists()
    assert store.read_table(v.dataset_id).num_rows == 1

    removed = {t.path for t in workspace.remove_leftovers(include_unknown=True)}
    assert removed == {legacy} and live.exists()


def test_atomic_writes_use_owned_names_that_verify_never_hashes(
    workspace: Any, tmp_path: Path
) -> None:
    from app.core.store.files import atomic_open, is_temp_name, temp_owner

    target = workspace.models_dir / "m1" / "meta.json"
    with atomic_open(target, "w") as fh:
        fh.write("{}")
        (tmp,) = [p for p in target.parent.iterdir()]
        assert is_temp_name(tmp.name) and temp_owner(tmp.name) == "alive"
        assert [t.path for t in workspace.temporaries()] == [tmp]
    assert [p.name for p in target.parent.iterdir()] == ["meta.json"]
    assert not is_temp_name("meta.json") and not is_temp_name(".gitattributes")


def test_cleanup_orphans_spares_folders_another_process_may_be_registering(
    workspace: Any,
) -> None:
    store = DatasetStore(workspace)
    v = store.create_dataset("kept", pa.table({"a": [1]}))
    old_orphan = store.root / "deadbeef0000" / ("0" * 64)
    old_orphan.mkdir(parents=True)
    old_version = store.root / v.dataset_id / ("1" * 64)
    old_version.mkdir()
    fresh = store.root / "cafebabe0000" / ("2" * 64)
    fresh.mkdir(parents=True)
    hour_ago = time.time() - 3600
    for p in (old_orphan, old_orphan.parent, old_version):
        os.utime(p, (hour_ago, hour_ago))
    removed = store.cleanup_orphans()
    assert sorted(removed) == sorted(["deadbeef0000", f"{v.dataset_id}/{'1' * 64}"])
    assert fresh.exists() and store.read_table(v.dataset_id).num_rows == 1


def test_a_wall_clock_step_does_not_make_a_live_owner_look_dead(monkeypatch: Any) -> None:
    """Owners are told apart by their start counted from boot: a clock adjusted by an hour
    (what psutil's create_time follows) leaves our own temporary names alive, while a
    name written by an older version (start in epoch milliseconds) is still judged."""
    import time as _time

    import app.core.system.procs as procs
    from app.core.store import files

    live = files.owned_temp_name("version")
    pid, start = files._own_owner()
    assert start < files._EPOCH_MS  # since boot, on Linux
    real = procs.process_start_time
    monkeypatch.setattr(procs, "process_start_time", lambda p: (real(p) or 0) + 3600.0)
    assert files.temp_owner(live) == "alive"
    epoch_name = live.replace(f".p{pid}-{start}-", f".p{pid}-{int(_time.time() * 1000)}-")
    assert files.temp_owner(epoch_name) == "dead"  # judged by the (moved) wall clock
