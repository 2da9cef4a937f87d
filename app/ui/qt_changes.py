"""The window's change broadcast: what changed in the workspace, whoever changed it.

A timer reads ``PRAGMA data_version`` on a connection of its own (a cheap
call that moves whenever another connection commits: this window's workers,
the CLI, a job process). When it moves, the per-topic counters kept by triggers
(``app/core/store/changes.py``) say which topics changed, and
``services.bus.changed`` fires once with all of them. The action runner calls
:meth:`ChangeWatcher.poll` right after an action finishes, so the window's
own changes show at once and are not announced twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from PySide6.QtCore import QObject, QTimer

from app.core.store.changes import changed_topics, read_counts


class ChangeWatcher(QObject):
    def __init__(self, db_path: Path, emit: object, interval_ms: int = 300) -> None:
        super().__init__()
        self._path = db_path
        self._emit = emit  # callable(frozenset[str])
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._counts: dict[str, int] = {}
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.poll)

    def start(self) -> None:
        self._open()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(self) -> None:
        if self._conn is not None:
            return
        try:
            conn = sqlite3.connect(
                f"file:{self._path}?mode=ro", uri=True, timeout=0.05, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout = 50")
            self._version = int(conn.execute("PRAGMA data_version").fetchone()[0])
            self._counts = read_counts(conn)
        except sqlite3.Error:
            return  # tried again at the next tick
        self._conn = conn

    def poll(self, extra: Iterable[str] = ()) -> frozenset[str]:
        """Read what changed since the last poll; emit it with ``extra`` (if anything)."""
        topics = set(extra)
        self._open()
        conn = self._conn
        if conn is not None:
            try:
                version = int(conn.execute("PRAGMA data_version").fetchone()[0])
                if version != self._version:
                    self._version = version
                    counts = read_counts(conn)
                    topics |= changed_topics(self._counts, counts)
                    self._counts = counts
            except sqlite3.Error:
                pass  # busy or locked for a moment: the next tick reads it
        out = frozenset(topics)
        if out:
            self._emit(out)  # type: ignore[operator]
        return out
