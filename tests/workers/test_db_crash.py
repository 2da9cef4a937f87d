"""kill -9 in the middle of database writes, repeated: no damage, no committed row lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.core.store.db import Database

WRITER = r"""
import sys, os
from app.core.store.db import Database, register_migrations
register_migrations("crashtest", ["CREATE TABLE rows(id INTEGER PRIMARY KEY, writer INTEGER, payload BLOB)"])
db = Database.open(sys.argv[1])
writer = int(sys.argv[2])
i = 0
while True:
    with db.transaction() as c:
        # several statements per transaction, with a large payload, so kills land mid-write
        for _ in range(5):
            cur = c.execute("INSERT INTO rows(writer, payload) VALUES (?, ?)", (writer, os.urandom(20000)))
        last = cur.lastrowid
    print(last, flush=True)
    i += 1
"""


def test_repeated_kill_9_during_writes_keeps_db_sound(tmp_path: Path) -> None:
    db_path = tmp_path / "crash.db"
    committed: set[int] = set()
    rng = random.Random(1234)
    for round_ in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db_path), str(round_)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        # let it commit a few transactions, then kill it at a random moment
        first = proc.stdout.readline()
        assert first.strip(), "writer did not start"
        committed.add(int(first))
        time.sleep(rng.uniform(0.01, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate()
        committed.update(int(x) for x in rest.split())
        assert proc.returncode == -signal.SIGKILL
    from app.core.store.db import register_migrations

    register_migrations(
        "crashtest",
        ["CREATE TABLE rows(id INTEGER PRIMARY KEY, writer INTEGER, payload BLOB)"],
    )
    db = Database.open(db_path)
    assert db.integrity_check() == "ok"
    present = {r["id"] for r in db.query("SELECT id FROM rows")}
    assert len(committed) >= 12
    assert committed <= present, f"lost committed rows: {sorted(committed - present)[:10]}"
    # transactions are all-or-nothing: rows come in whole groups of 5
    counts = db.query("SELECT writer, COUNT(*) AS n FROM rows GROUP BY writer")
    assert all(r["n"] % 5 == 0 for r in counts)
    db.close()
