"""The ``workspace.verify`` job: database integrity and content hashes of every stored file.

The first run records size and sha256 of each file under models/, datasets/
and exports/; later runs report files that changed, vanished or appeared.
Progress is saved after every file, so a resumed run skips what was done.
"""

from __future__ import annotations

import json
import time
from typing import Any

from app.core.jobs.context import JobContext, JobFailed
from app.core.store.db import register_migrations
from app.core.store.files import atomic_write_json, sha256_file

register_migrations(
    "files",
    [
        """
        CREATE TABLE file_hashes (
            path TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            checked_at REAL NOT NULL
        )
        """
    ],
)

_AREAS = ("models", "datasets", "exports")


def verify_workspace(
    ctx: JobContext, update: bool = True, accept_changes: bool = False
) -> dict[str, Any]:
    """Check ``PRAGMA integrity_check`` and hash every file.

    ``update`` records hashes of new files; a changed file keeps its old hash
    (and keeps failing the check) unless ``accept_changes`` is set.
    """
    ws = ctx.workspace
    ctx.progress(0.0, "Checking the database")
    integrity = ws.db.integrity_check()
    if integrity != "ok":
        raise JobFailed(
            f"The workspace database failed its integrity check: {integrity}",
            "Restore demoai.db from a backup.",
        )
    files = sorted(
        p
        for area in _AREAS
        for p in (ws.root / area).rglob("*")
        if p.is_file() and not p.is_symlink()
    )
    state_path = ctx.checkpoint_dir / "verify-state.json"
    state: dict[str, Any] = {"done": {}, "changed": [], "new": []}
    if state_path.exists():
        state = json.loads(state_path.read_text())
        ctx.log(f"Resuming: {len(state['done'])} files were checked before")
    known = {r["path"]: r for r in ws.db.query("SELECT path, size, sha256 FROM file_hashes")}
    total = len(files)
    last_save = 0.0
    for i, path in enumerate(files):
        rel = path.relative_to(ws.root).as_posix()
        if rel in state["done"]:
            continue
        ctx.check_cancelled()
        digest = sha256_file(path)
        size = path.stat().st_size
        old = known.get(rel)
        if old is None:
            state["new"].append(rel)
        elif old["sha256"] != digest:
            state["changed"].append(rel)
            ctx.log(f"changed: {rel}", "warning")
        state["done"][rel] = [size, digest]
        ctx.progress((i + 1) / max(total, 1), f"{i + 1}/{total} files")
        if time.monotonic() - last_save > 1.0:
            atomic_write_json(state_path, state)
            last_save = time.monotonic()
    missing = sorted(set(known) - {p.relative_to(ws.root).as_posix() for p in files})
    if update:
        now = time.time()
        with ws.db.transaction() as c:
            for rel, (size, digest) in state["done"].items():
                if rel in state["changed"] and not accept_changes:
                    continue
                c.execute(
                    "INSERT INTO file_hashes(path, size, sha256, checked_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(path) DO UPDATE SET size=excluded.size, sha256=excluded.sha256,"
                    " checked_at=excluded.checked_at",
                    (rel, size, digest, now),
                )
    result = {
        "database": integrity,
        "files": total,
        "new": len(state["new"]),
        "changed": state["changed"],
        "missing": missing,
    }
    ctx.result(result)
    state_path.unlink(missing_ok=True)
    if (state["changed"] and not accept_changes) or missing:
        raise JobFailed(
            f"{len(state['changed'])} file(s) changed and {len(missing)} missing since the last check.",
            "See the job log for the list; restore those files from a backup.",
        )
    ctx.progress(1.0, f"{total} files OK")
    return result
