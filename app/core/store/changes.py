"""Change counters: one per topic, bumped by SQLite triggers on the tables behind it.

Any process that writes the workspace database (the window, the CLI, a job)
bumps the counters in the same transaction, so a reader that sees
``PRAGMA data_version`` move can tell *what* changed by comparing counters,
without scanning tables. The window polls this (``app/ui/qt_changes.py``).

High-volume child tables (eval samples, agent steps, chat messages, the jobs
table) have no triggers: their parent rows or the jobs hub say enough.
"""

from __future__ import annotations

import sqlite3

from app.core.store.db import Database, register_migrations

#: topic -> tables whose inserts, updates and deletes count as a change of it.
TOPIC_TABLES: dict[str, tuple[str, ...]] = {
    "models": ("models", "model_files", "lineage"),
    "datasets": ("datasets",),
    "versions": ("dataset_versions",),
    "runs": ("eval_runs", "agent_runs"),
    "arena": ("arena_matches",),
    "prompts": ("prompts",),
    "agents": ("agents",),
    "approvals": ("agent_approvals",),
    "conversations": ("conversations",),
    "exports": ("exports",),
}

TOPICS = frozenset(TOPIC_TABLES)


def _install(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS change_counts (topic TEXT PRIMARY KEY, n INTEGER NOT NULL)"
    )
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for topic, names in TOPIC_TABLES.items():
        conn.execute(
            "INSERT INTO change_counts(topic, n) VALUES (?, 0) ON CONFLICT(topic) DO NOTHING",
            (topic,),
        )
        for table in names:
            if table not in tables:
                continue
            for event in ("INSERT", "UPDATE", "DELETE"):
                conn.execute(
                    f"CREATE TRIGGER IF NOT EXISTS chg_{table}_{event.lower()} "
                    f"AFTER {event} ON {table} BEGIN "
                    f"UPDATE change_counts SET n = n + 1 WHERE topic = '{topic}'; END"
                )


def register() -> None:
    """Register the migration; called after every other component so its tables exist."""
    register_migrations("changes", [_install])


def read_counts(conn: sqlite3.Connection | Database) -> dict[str, int]:
    """Every topic's counter (empty when the table does not exist yet)."""
    sql = "SELECT topic, n FROM change_counts"
    try:
        if isinstance(conn, Database):
            return {r["topic"]: int(r["n"]) for r in conn.query(sql)}
        return {str(r[0]): int(r[1]) for r in conn.execute(sql).fetchall()}
    except sqlite3.OperationalError:
        return {}


def changed_topics(before: dict[str, int], after: dict[str, int]) -> frozenset[str]:
    """Topics whose counters differ between two readings."""
    return frozenset(t for t in after.keys() | before.keys() if before.get(t) != after.get(t))
