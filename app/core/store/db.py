"""The workspace database: SQLite in WAL mode, serialized writes, versioned migrations.

Writes go through one connection, serialized by a lock. Reads outside a write
transaction use a connection of the reading thread's own (in WAL mode readers
never wait for a writer): the window's thread reading a dataset record must not
queue behind a worker thread's ``BEGIN IMMEDIATE`` (which may itself wait up to
the busy timeout for another process) or its commit's checkpoint.

Each capability registers its own ordered list of migrations under a component
name (``register_migrations("jobs", [...])``); the applied version of every
component is kept in ``schema_versions``. A database written by a newer DemoAI
(a component version or file format this code does not know) is refused
without being touched.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from app.core.errors import WorkspaceError

#: The on-disk layout of the database itself (PRAGMA user_version).
FORMAT_VERSION = 1

Migration = str | Callable[[sqlite3.Connection], None]
_MIGRATIONS: dict[str, list[Migration]] = {}


def register_migrations(component: str, steps: Sequence[Migration]) -> None:
    """Declare the ordered migrations of ``component``; step i brings it to version i+1.

    Steps are append-only: never edit a released step, add a new one. Components
    migrate in the order they were (last) registered.
    """
    _MIGRATIONS.pop(component, None)
    _MIGRATIONS[component] = list(steps)


def known_components() -> dict[str, int]:
    """Each registered component with the schema version this code brings it to."""
    return {name: len(steps) for name, steps in _MIGRATIONS.items()}


class _Reader(sqlite3.Connection):
    """A thread's read-only connection (a subclass, so the database can hold it weakly)."""


class SchemaTooNewError(WorkspaceError):
    """The database was written by a newer DemoAI."""


class Database:
    """One SQLite connection with serialized writes. Safe to share between threads."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()
        #: The thread inside ``transaction()`` (its reads must see its own uncommitted writes).
        self._writer: int | None = None
        self._local = threading.local()
        #: Every thread's reader, so ``close()`` closes them; a thread's reader goes with it.
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._wal = False
        self._closed = False

    # -- opening -------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, migrate: bool = True) -> Database:
        """Open (creating if needed) and migrate the database at ``path``."""
        p = Path(path)
        try:
            conn = sqlite3.connect(p, timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise WorkspaceError(
                f"Cannot open the workspace database {p}: {exc}.",
                "Check that the folder exists and is writable.",
            ) from exc
        conn.row_factory = sqlite3.Row
        db = cls(p, conn)
        try:
            db._check_versions()  # read-only: a refused file is left byte for byte
            db._configure()
            if migrate:
                db._migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise WorkspaceError(
                f"The workspace database {p} is damaged or not a DemoAI database ({exc}). "
                "It was left unchanged.",
                "Restore it from a backup, or choose another workspace folder.",
            ) from exc
        except BaseException:
            conn.close()
            raise
        return db

    def _configure(self) -> None:
        c = self._conn
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # e.g. a filesystem without shared memory
            c.execute("PRAGMA journal_mode = DELETE")
        else:
            self._wal = True
        # NORMAL in WAL mode: a committed transaction survives a killed process;
        # only an OS crash / power loss can lose the last commits.
        c.execute("PRAGMA synchronous = NORMAL")
        c.execute("PRAGMA foreign_keys = ON")

    def _check_versions(self) -> None:
        c = self._conn
        c.execute("PRAGMA busy_timeout = 30000")
        fmt = int(c.execute("PRAGMA user_version").fetchone()[0])
        if fmt > FORMAT_VERSION:
            raise SchemaTooNewError(
                f"The workspace database {self.path} was written by a newer DemoAI "
                f"(format {fmt}, this version reads up to {FORMAT_VERSION}). It was not changed.",
                "Update DemoAI, or choose another workspace folder.",
            )
        exists = c.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_versions'"
        ).fetchone()
        if not exists:
            return
        for row in c.execute("SELECT component, version FROM schema_versions"):
            comp, version = row["component"], int(row["version"])
            known = len(_MIGRATIONS.get(comp, []))
            if comp in _MIGRATIONS and version > known:
                raise SchemaTooNewError(
                    f"The workspace database {self.path} has '{comp}' tables from a newer "
                    f"DemoAI (schema {version}, this version knows {known}). It was not changed.",
                    "Update DemoAI, or choose another workspace folder.",
                )

    def _migrate(self) -> None:
        with self.transaction() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions ("
                "component TEXT PRIMARY KEY, version INTEGER NOT NULL, applied_at REAL NOT NULL)"
            )
            have = {
                r["component"]: int(r["version"])
                for r in c.execute("SELECT component, version FROM schema_versions")
            }
            for comp, steps in _MIGRATIONS.items():
                for i in range(have.get(comp, 0), len(steps)):
                    step = steps[i]
                    if isinstance(step, str):
                        for stmt in _split_sql(step):
                            c.execute(stmt)
                    else:
                        step(c)
                    c.execute(
                        "INSERT INTO schema_versions(component, version, applied_at) "
                        "VALUES (?, ?, ?) ON CONFLICT(component) DO UPDATE SET "
                        "version = excluded.version, applied_at = excluded.applied_at",
                        (comp, i + 1, time.time()),
                    )
            if int(c.execute("PRAGMA user_version").fetchone()[0]) < FORMAT_VERSION:
                c.execute(f"PRAGMA user_version = {FORMAT_VERSION}")

    # -- use -------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE), serialized in this process and across processes."""
        with self._lock:
            outer = self._writer
            self._writer = threading.get_ident()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                else:
                    self._conn.execute("COMMIT")
            finally:
                self._writer = outer

    def _reader(self) -> sqlite3.Connection | None:
        """This thread's read connection; None where reads must use the writer's connection.

        That is: not in WAL mode (a reader would wait for writers anyway), inside this
        thread's own write transaction, or where a reader cannot be opened.
        """
        if not self._wal or self._closed or self._writer == threading.get_ident():
            return None
        conn: _Reader | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=30.0,
                isolation_level=None,
                check_same_thread=False,
                factory=_Reader,
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error:
            return None
        self._local.conn = conn
        self._readers.add(conn)
        return conn

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one write statement in its own transaction; returns the number of rows changed."""
        with self.transaction() as c:
            return c.execute(sql, params).rowcount

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read query as dicts."""
        reader = self._reader()
        if reader is not None:
            return [dict(r) for r in reader.execute(sql, params).fetchall()]
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, params).fetchall()]

    def query_one(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = ()
    ) -> dict[str, Any] | None:
        """The first row of a read query, or None."""
        reader = self._reader()
        if reader is not None:
            cur = reader.execute(sql, params)
            try:
                row = cur.fetchone()
            finally:
                cur.close()  # ends the read transaction now, not when the cursor is collected
            return dict(row) if row is not None else None
        with self._lock:
            row = self._conn.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: 'ok' for a sound database."""
        with self._lock:
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return "; ".join(str(r[0]) for r in rows)

    def schema_versions(self) -> dict[str, int]:
        """Applied schema version of each component."""
        return {
            r["component"]: int(r["version"])
            for r in self.query("SELECT component, version FROM schema_versions")
        }

    def close(self) -> None:
        """Close the connection and every thread's reader."""
        with self._lock:
            self._closed = True
            for reader in list(self._readers):
                reader.close()
            self._conn.close()


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements (our scripts use no ';' inside literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]
