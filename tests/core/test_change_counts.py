"""Change counters: writes from another process bump the topic they touch, nothing else."""

from __future__ import annotations

import sqlite3

from app.core.store.changes import TOPICS, changed_topics, read_counts
from tests.support.cli import demoai


def test_every_topic_has_a_counter_and_triggers(workspace) -> None:
    counts = read_counts(workspace.db)
    assert set(counts) == TOPICS
    triggers = {
        r["name"] for r in workspace.db.query("SELECT name FROM sqlite_master WHERE type='trigger'")
    }
    for table in ("models", "datasets", "dataset_versions", "agents", "prompts", "exports"):
        assert {f"chg_{table}_insert", f"chg_{table}_update", f"chg_{table}_delete"} <= triggers


def test_a_cli_import_in_another_process_is_seen_as_datasets_and_versions(
    workspace, tmp_path
) -> None:
    conn = sqlite3.connect(f"file:{workspace.db.path}?mode=ro", uri=True)
    version = conn.execute("PRAGMA data_version").fetchone()[0]
    before = read_counts(conn)
    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n")
    r = demoai(workspace.root, "data", "import", str(csv), "--name", "qa")
    assert r.returncode == 0, r.stderr
    assert conn.execute("PRAGMA data_version").fetchone()[0] != version
    topics = changed_topics(before, read_counts(conn))
    assert {"datasets", "versions"} <= topics
    assert "models" not in topics and "agents" not in topics
    conn.close()


def test_counters_survive_reopen_and_are_not_reinstalled(workspace) -> None:
    from app.core.workspace import Workspace

    workspace.db.execute(
        "UPDATE change_counts SET n = 41 WHERE topic = 'models'"
    )  # a value to find again
    root = workspace.root
    workspace.close()
    ws = Workspace.open(root)
    try:
        assert read_counts(ws.db)["models"] == 41
        assert ws.db.schema_versions()["changes"] == 1
    finally:
        ws.close()
