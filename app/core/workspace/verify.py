"""The ``workspace.verify`` job: database integrity and content hashes of every stored file.

The first run records size and sha256 of each file under models/, datasets/
and exports/; later runs report files that changed, vanished or appeared.
Progress is saved after every file, so a resumed run skips what was done.

Temporary files and folders (:func:`app.core.store.files.is_temp_name`) are
never hashed: they belong to work in progress or are leftovers of killed work,
not stored content. Leftovers are counted and reported with their size, never
as corruption; ``repair`` removes them, and the folders of datasets or versions
the database does not know.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from app.core.format import human_size
from app.core.jobs.context import JobContext, JobFailed
from app.core.store.db import register_migrations
from app.core.store.files import atomic_write_json, is_temp_name, sha256_file

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


def _stored_files(root: Path) -> list[Path]:
    """Regular files under ``root``, not entering temporary folders."""
    out: list[Path] = []
    for base, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not is_temp_name(d)]
        for n in names:
            p = Path(base, n)
            if not is_temp_name(n) and p.is_file() and not p.is_symlink():
                out.append(p)
    return out


def _other_jobs_live(ctx: JobContext) -> bool:
    from app.core.jobs.store import ACTIVE_STATES

    states = sorted(str(s) for s in ACTIVE_STATES)
    rows = ctx.workspace.db.query(
        f"SELECT id FROM jobs WHERE state IN ({', '.join('?' * len(states))})", tuple(states)
    )
    return any(r["id"] != ctx.job_id for r in rows)


def leftover_message(count: int, size: int) -> str:
    """The line that reports leftovers (the CLI and the job log say the same)."""
    return (
        f"{count} leftover temporary file(s) ({human_size(size)}) from interrupted work; "
        "`demoai check --repair` removes them."
    )


def verify_workspace(
    ctx: JobContext, update: bool = True, accept_changes: bool = False, repair: bool = False
) -> dict[str, Any]:
    """Check ``PRAGMA integrity_check`` and hash every file.

    ``update`` records hashes of new files; a changed file keeps its old hash
    (and keeps failing the check) unless ``accept_changes`` is set. ``repair``
    removes leftovers of interrupted work first (those without a recorded owner
    only when no other job is queued or running).
    """
    ws = ctx.workspace
    removed_n = removed_bytes = 0
    if repair:
        from app.core.data.store import DatasetStore

        ctx.progress(None, "Removing leftovers of interrupted work")
        gone = ws.remove_leftovers(include_unknown=not _other_jobs_live(ctx))
        removed_n, removed_bytes = len(gone), sum(t.bytes for t in gone)
        orphans = DatasetStore(ws).cleanup_orphans()
        for name in orphans:
            ctx.log(f"removed dataset folder unknown to the database: datasets/{name}")
        removed_n += len(orphans)
        if removed_n:
            ctx.log(f"removed {removed_n} leftover(s), {human_size(removed_bytes)}")
    ctx.progress(0.0, "Checking the database")
    integrity = ws.db.integrity_check()
    if integrity != "ok":
        raise JobFailed(
            f"The workspace database failed its integrity check: {integrity}",
            "Restore demoai.db from a backup.",
        )
    files = sorted(p for area in _AREAS for p in _stored_files(ws.root / area))
    leftovers = [t for t in ws.temporaries() if t.owner != "alive"]
    if leftovers and _other_jobs_live(ctx):
        # Without a recorded owner, a temporary may belong to a job running now.
        leftovers = [t for t in leftovers if t.owner == "dead"]
    left_bytes = sum(t.bytes for t in leftovers)
    if leftovers:
        ctx.log(leftover_message(len(leftovers), left_bytes), "warning")
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
    # Hashes recorded for temporaries by older versions are not stored content.
    stale = [rel for rel in known if any(is_temp_name(part) for part in rel.split("/"))]
    missing = sorted(set(known) - set(stale) - {p.relative_to(ws.root).as_posix() for p in files})
    if update:
        now = time.time()
        with ws.db.transaction() as c:
            for rel in stale:
                c.execute("DELETE FROM file_hashes WHERE path = ?", (rel,))
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
        "leftovers": len(leftovers),
        "leftover_bytes": left_bytes,
        "removed": removed_n,
        "removed_bytes": removed_bytes,
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
