"""SQLite store: migrations, schema guard, damaged files, atomic writes."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from app.core.errors import WorkspaceError
from app.core.store.db import FORMAT_VERSION, Database, SchemaTooNewError, register_migrations
from app.core.store.files import atomic_write_bytes, atomic_write_json, sha256_file


def test_migrations_apply_once_and_record_versions(tmp_path: Path) -> None:
    register_migrations(
        "zz_test", ["CREATE TABLE zz(a INTEGER)", "ALTER TABLE zz ADD COLUMN b TEXT"]
    )
    db = Database.open(tmp_path / "a.db")
    assert db.schema_versions()["zz_test"] == 2
    db.execute("INSERT INTO zz(a, b) VALUES (1, 'x')")
    db.close()
    db = Database.open(tmp_path / "a.db")  # re-open: nothing re-applied, data kept
    assert db.query("SELECT a, b FROM zz") == [{"a": 1, "b": "x"}]
    assert db.query_one("PRAGMA journal_mode")["journal_mode"] == "wal"
    assert db.integrity_check() == "ok"
    db.close()


def test_newer_format_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE keep(x)")
    conn.execute("INSERT INTO keep VALUES (42)")
    conn.execute(f"PRAGMA user_version = {FORMAT_VERSION + 1}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNewError, match="newer DemoAI"):
        Database.open(path)
    assert path.read_bytes() == before


def test_newer_component_schema_is_refused(tmp_path: Path) -> None:
    register_migrations("zz_comp", ["CREATE TABLE zc(a)"])
    db = Database.open(tmp_path / "c.db")
    db.execute("UPDATE schema_versions SET version = 7 WHERE component = 'zz_comp'")
    db.close()
    with pytest.raises(SchemaTooNewError, match="zz_comp"):
        Database.open(tmp_path / "c.db")


def test_damaged_database_gives_clear_error_and_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(b"this is not sqlite" * 500)
    before = path.read_bytes()
    with pytest.raises(WorkspaceError, match="damaged") as info:
        Database.open(path)
    assert "backup" in (info.value.hint or "")
    assert path.read_bytes() == before


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    register_migrations("zz_tx", ["CREATE TABLE tx(a INTEGER)"])
    db = Database.open(tmp_path / "t.db")
    with pytest.raises(RuntimeError):
        with db.transaction() as c:
            c.execute("INSERT INTO tx VALUES (1)")
            raise RuntimeError("boom")
    assert db.query("SELECT * FROM tx") == []


def test_reads_do_not_wait_for_another_threads_write_transaction(tmp_path: Path) -> None:
    """The window's thread reads while a worker thread holds a write transaction open."""
    register_migrations("zz_read", ["CREATE TABLE rd(a INTEGER)"])
    db = Database.open(tmp_path / "r.db")
    db.execute("INSERT INTO rd(a) VALUES (1)")
    inside, release, done = threading.Event(), threading.Event(), threading.Event()
    seen_inside: list[list[dict[str, int]]] = []

    def writer() -> None:
        with db.transaction() as c:
            c.execute("INSERT INTO rd(a) VALUES (2)")
            seen_inside.append(db.query("SELECT a FROM rd ORDER BY a"))  # its own writes
            inside.set()
            release.wait(30)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert inside.wait(30)
        got: list[object] = []
        reader = threading.Thread(
            target=lambda: got.append(db.query_one("SELECT max(a) AS m FROM rd"))
        )
        reader.start()
        reader.join(10)
        # the reader finished while the write transaction was still open (the old shared
        # connection made it wait for the lock), and saw the last committed state
        assert not reader.is_alive() and not done.is_set()
        assert got == [{"m": 1}]
        assert seen_inside == [[{"a": 1}, {"a": 2}]]
    finally:
        release.set()
        t.join(30)
    assert db.query("SELECT a FROM rd ORDER BY a") == [{"a": 1}, {"a": 2}]  # after the commit
    db.close()
    with pytest.raises(sqlite3.ProgrammingError):
        db.query("SELECT 1")


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write_json(target, {"v": 1})

    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})
    assert target.read_text().strip().startswith("{")
    assert '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp files left


def test_sha256_file(tmp_path: Path) -> None:
    import hashlib

    data = b"abc" * 1_000_000
    atomic_write_bytes(tmp_path / "x", data)
    assert sha256_file(tmp_path / "x") == hashlib.sha256(data).hexdigest()
