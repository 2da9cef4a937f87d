"""The exports table: every export (GGUF, Docker bundle, model package) with its outcome.

A row is written when an export starts (``running``) and updated when it ends
(``succeeded`` or ``failed``, with the verification numbers for GGUF exports),
so the history survives a crash and the UI and CLI can show it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.core.errors import NotFoundError
from app.core.models.registry import slugify
from app.core.store.db import register_migrations

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

register_migrations(
    "export",
    [
        """
        CREATE TABLE exports (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('gguf', 'docker', 'package')),
            model_id TEXT NOT NULL,
            quant TEXT,
            state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
            path TEXT,
            size_bytes INTEGER,
            verification TEXT,
            result_model_id TEXT,
            job_id TEXT,
            error TEXT,
            params TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            finished_at REAL
        );
        CREATE INDEX exports_model ON exports(model_id);
        CREATE INDEX exports_created ON exports(created_at)
        """
    ],
)

ExportKind = Literal["gguf", "docker", "package"]


@dataclass
class ExportRecord:
    """One export and how it ended."""

    id: str
    kind: str
    model_id: str
    quant: str | None
    state: str
    path: str | None
    size_bytes: int | None
    verification: dict[str, Any] | None
    result_model_id: str | None
    job_id: str | None
    error: str | None
    params: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dict(self.__dict__)


def new_export_id(model_name: str, suffix: str) -> str:
    """A sortable, readable id: ``<time>-<model slug>-<suffix>-<random>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{slugify(model_name, 24)}-{slugify(suffix, 12)}-{uuid.uuid4().hex[:6]}"


class ExportStore:
    """Reads and writes the exports table of one workspace."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.db = ws.db

    @property
    def exports_dir(self) -> Path:
        """``<workspace>/exports``."""
        return Path(self.ws.root) / "exports"

    def start(
        self,
        export_id: str,
        kind: ExportKind,
        model_id: str,
        *,
        quant: str | None = None,
        path: Path | None = None,
        job_id: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> ExportRecord:
        """Record an export that has started."""
        self.db.execute(
            "INSERT INTO exports (id, kind, model_id, quant, state, path, job_id, params, "
            "created_at) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
            (
                export_id,
                kind,
                model_id,
                quant,
                str(path) if path else None,
                job_id,
                json.dumps(params or {}, default=str),
                time.time(),
            ),
        )
        return self.get(export_id)

    def finish(
        self,
        export_id: str,
        *,
        ok: bool,
        path: Path | None = None,
        size_bytes: int | None = None,
        verification: dict[str, Any] | None = None,
        result_model_id: str | None = None,
        error: str | None = None,
    ) -> ExportRecord:
        """Mark an export succeeded or failed, with what it produced."""
        cur = self.get(export_id)
        self.db.execute(
            "UPDATE exports SET state = ?, path = ?, size_bytes = ?, verification = ?, "
            "result_model_id = ?, error = ?, finished_at = ? WHERE id = ?",
            (
                "succeeded" if ok else "failed",
                str(path) if path else cur.path,
                size_bytes,
                json.dumps(verification) if verification is not None else None,
                result_model_id,
                error,
                time.time(),
                export_id,
            ),
        )
        return self.get(export_id)

    def get(self, export_id: str) -> ExportRecord:
        """The export with this id (or unique prefix)."""
        row = self.db.query_one("SELECT * FROM exports WHERE id = ?", (export_id,))
        if row is None:
            rows = self.db.query(
                "SELECT * FROM exports WHERE id LIKE ? LIMIT 2", (export_id + "%",)
            )
            row = rows[0] if len(rows) == 1 else None
        if row is None:
            raise NotFoundError(
                f"No export with id '{export_id}'.", "See `demoai export list` for the ids."
            )
        return self._record(row)

    def list(self, model_id: str | None = None, kind: str | None = None) -> list[ExportRecord]:
        """Exports, newest first."""
        sql, params, where = "SELECT * FROM exports", [], []
        if model_id:
            where.append("model_id = ?")
            params.append(model_id)
        if kind:
            where.append("kind = ?")
            params.append(kind)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id"
        return [self._record(r) for r in self.db.query(sql, params)]

    @staticmethod
    def _record(r: dict[str, Any]) -> ExportRecord:
        return ExportRecord(
            id=r["id"],
            kind=r["kind"],
            model_id=r["model_id"],
            quant=r["quant"],
            state=r["state"],
            path=r["path"],
            size_bytes=r["size_bytes"],
            verification=json.loads(r["verification"]) if r["verification"] else None,
            result_model_id=r["result_model_id"],
            job_id=r["job_id"],
            error=r["error"],
            params=json.loads(r["params"] or "{}"),
            created_at=float(r["created_at"]),
            finished_at=r["finished_at"],
        )
