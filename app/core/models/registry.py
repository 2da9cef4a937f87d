"""The model library: registered models, their files and lineage, in the workspace database.

Imports are all-or-nothing. Files are copied (or moved) into a hidden temporary
folder under ``models/`` and renamed to ``models/<id>/`` once complete; the
database row is written only after that, and any failure removes what was made.
A referenced model (``owned = 0``) stays where it is and is never deleted by DemoAI.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.core.errors import ConfigError, DemoAIError, NotFoundError
from app.core.models.metadata import (
    ModelMetadata,
    is_gguf_file,
    read_gguf_metadata,
    read_hf_metadata,
)
from app.core.models.safety import check_folder_weights
from app.core.store.db import register_migrations

if TYPE_CHECKING:
    from app.core.jobs.context import JobContext
    from app.core.workspace.workspace import Workspace

register_migrations(
    "models",
    [
        """
        CREATE TABLE models (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            source_kind TEXT NOT NULL CHECK (source_kind IN ('hub', 'local', 'derived')),
            source_ref TEXT,
            format TEXT NOT NULL CHECK (format IN ('hf', 'gguf', 'lora')),
            architecture TEXT,
            parameters INTEGER,
            quantization TEXT,
            context_length INTEGER,
            license TEXT,
            has_chat_template INTEGER NOT NULL DEFAULT 0,
            chat_template TEXT,
            path TEXT NOT NULL,
            owned INTEGER NOT NULL,
            size_bytes INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            created_at REAL NOT NULL,
            tags TEXT NOT NULL DEFAULT '[]',
            notes TEXT NOT NULL DEFAULT '',
            extra TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX models_name ON models(name);
        CREATE TABLE model_files (
            model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
            relpath TEXT NOT NULL,
            size INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            PRIMARY KEY (model_id, relpath)
        );
        CREATE TABLE lineage (
            child_id TEXT NOT NULL,
            parent_id TEXT NOT NULL,
            relation TEXT NOT NULL CHECK (relation IN ('fine-tuned-from', 'merged-from',
                'converted-from', 'quantized-from', 'adapter-of')),
            details TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            PRIMARY KEY (child_id, parent_id, relation)
        );
        CREATE INDEX lineage_parent ON lineage(parent_id)
        """
    ],
)

Format = Literal["hf", "gguf", "lora"]
Relation = Literal[
    "fine-tuned-from", "merged-from", "converted-from", "quantized-from", "adapter-of"
]
RELATIONS: tuple[str, ...] = (
    "fine-tuned-from",
    "merged-from",
    "converted-from",
    "quantized-from",
    "adapter-of",
)
FORMATS: tuple[str, ...] = ("hf", "gguf", "lora")
#: ``progress(fraction or None, message)``, as ``JobContext.progress``.
ProgressFn = Callable[[float | None, str], None]
_Mode = Literal["copy", "reference", "move"]
_CHUNK = 4 << 20


@dataclass
class ModelFile:
    """One file of a model, relative to the model's folder (or the file's own folder)."""

    relpath: str
    size: int
    sha256: str


@dataclass
class ModelRecord:
    """A registered model. ``path`` is absolute: the GGUF file or the HF/adapter folder."""

    id: str
    name: str
    source_kind: str
    source_ref: str | None
    format: str
    architecture: str | None
    parameters: int | None
    quantization: str | None
    context_length: int | None
    license: str | None
    has_chat_template: bool
    chat_template: str | None
    path: Path
    owned: bool
    size_bytes: int
    sha256: str
    created_at: float
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, chat_template: bool = True) -> dict[str, Any]:
        """Plain dict for JSON (the chat template text can be left out)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["path"] = str(self.path)
        if not chat_template:
            d.pop("chat_template")
        return d


@dataclass
class LineageEdge:
    """One lineage edge seen from a model: the other end, the relation and its details."""

    model_id: str
    name: str | None  # None when that model has been removed
    relation: str
    details: dict[str, Any]
    created_at: float


@dataclass
class Lineage:
    """Where a model came from (parents) and what was made from it (children)."""

    parents: list[LineageEdge]
    children: list[LineageEdge]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "parents": [e.__dict__ for e in self.parents],
            "children": [e.__dict__ for e in self.children],
        }


@dataclass
class RemoveResult:
    """What :meth:`ModelRegistry.remove` did."""

    model_id: str
    bytes_freed: int
    deleted_path: str | None  # the owned folder that was deleted
    kept_path: str | None  # a referenced model's files, left on disk
    dependants: list[str]


class DependantsError(DemoAIError):
    """Other models derive from the one being removed."""


def folder_sha256(files: Iterable[ModelFile]) -> str:
    """Content hash of a folder: sha256 over ``"<sha256>  <relpath>\\n"`` lines sorted by path."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.relpath):
        h.update(f"{f.sha256}  {f.relpath}\n".encode())
    return h.hexdigest()


def slugify(text: str, limit: int = 32) -> str:
    """Lower-case ASCII slug of ``text`` for ids and folder names."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].strip("-") or "model"


def _list_folder_files(folder: Path) -> list[tuple[str, Path]]:
    """(relpath, path) of the files under ``folder``, hidden names skipped, symlinks followed."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            if p.is_file():
                out.append((p.relative_to(folder).as_posix(), p))
    return out


class _Progress:
    """Byte-based progress over a known total, throttled."""

    def __init__(self, fn: ProgressFn | None, total: int, verb: str) -> None:
        self.fn = fn
        self.total = max(total, 1)
        self.done = 0
        self.verb = verb
        self._last = 0.0

    def add(self, n: int, name: str) -> None:
        self.done += n
        now = time.monotonic()
        if self.fn is not None and (now - self._last > 0.25 or self.done >= self.total):
            self._last = now
            self.fn(min(self.done / self.total, 1.0), f"{self.verb} {name}")


def _hash_file(src: Path, dst: Path | None, progress: _Progress) -> ModelFile:
    h = hashlib.sha256()
    size = 0
    with contextlib.ExitStack() as stack:
        fin = stack.enter_context(open(src, "rb"))
        fout = stack.enter_context(open(dst, "xb")) if dst is not None else None
        while block := fin.read(_CHUNK):
            h.update(block)
            if fout is not None:
                fout.write(block)
            size += len(block)
            progress.add(len(block), src.name)
        if fout is not None:
            fout.flush()
            os.fsync(fout.fileno())
    return ModelFile(relpath=src.name, size=size, sha256=h.hexdigest())


class ModelRegistry:
    """The model library of one workspace."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.db = ws.db
        self.models_dir: Path = ws.models_dir

    # -- import ----------------------------------------------------------------------
    def import_path(
        self,
        path: str | Path,
        *,
        copy: bool = True,
        name: str | None = None,
        trust_pickle: bool = False,
        source_ref: str | None = None,
        tags: Sequence[str] = (),
        progress: ProgressFn | None = None,
    ) -> ModelRecord:
        """Import a GGUF file or an HF model/adapter folder (the kind is detected)."""
        p = Path(path).expanduser()
        if p.is_dir():
            return self.import_hf_folder(
                p,
                copy,
                name,
                trust_pickle=trust_pickle,
                source_ref=source_ref,
                tags=tags,
                progress=progress,
            )
        return self.import_gguf(p, copy, name, source_ref=source_ref, tags=tags, progress=progress)

    def import_hf_folder(
        self,
        path: str | Path,
        copy: bool,
        name: str | None = None,
        *,
        trust_pickle: bool = False,
        source_ref: str | None = None,
        tags: Sequence[str] = (),
        progress: ProgressFn | None = None,
    ) -> ModelRecord:
        """Import a Hugging Face model or LoRA adapter folder (safetensors; pickle only if trusted)."""
        src = Path(path).expanduser().absolute()
        if not src.is_dir():
            raise NotFoundError(f"There is no folder at {src}.")
        safety = check_folder_weights(src, trust_pickle=trust_pickle)
        meta = read_hf_metadata(src)
        meta.extra.update(safety)
        return self._import(
            src,
            meta,
            "copy" if copy else "reference",
            name or meta.name or src.name,
            source_kind="hub" if source_ref else "local",
            source_ref=source_ref,
            tags=tags,
            progress=progress,
        )

    def import_gguf(
        self,
        path: str | Path,
        copy: bool,
        name: str | None = None,
        *,
        source_ref: str | None = None,
        tags: Sequence[str] = (),
        progress: ProgressFn | None = None,
    ) -> ModelRecord:
        """Import one GGUF file (its header is validated first)."""
        src = Path(path).expanduser().absolute()
        if not src.is_file():
            raise NotFoundError(f"There is no file at {src}.")
        meta = read_gguf_metadata(src)
        return self._import(
            src,
            meta,
            "copy" if copy else "reference",
            name or src.stem,
            source_kind="hub" if source_ref else "local",
            source_ref=source_ref,
            tags=tags,
            progress=progress,
        )

    def adopt(
        self,
        path: Path,
        *,
        name: str | None = None,
        source_kind: str = "hub",
        source_ref: str | None = None,
        tags: Sequence[str] = (),
        progress: ProgressFn | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Register files already inside ``models/`` (a download's staging folder) by moving them."""
        src = Path(path).absolute()
        if not src.is_relative_to(self.models_dir.absolute()):
            raise ConfigError(f"{src} is not inside {self.models_dir}; import it instead.")
        if src.is_dir():
            meta = read_hf_metadata(src)
            meta.extra.update(check_folder_weights(src))
        else:
            meta = read_gguf_metadata(src)
        meta.extra.update(extra or {})
        default = src.stem if src.is_file() else (meta.name or src.name)
        return self._import(
            src,
            meta,
            "move",
            name or default,
            source_kind=source_kind,
            source_ref=source_ref,
            tags=tags,
            progress=progress,
        )

    def register_derived(
        self,
        path: str | Path,
        format: Format,
        parents: Sequence[tuple[str, str, dict[str, Any] | None]] = (),
        *,
        name: str | None = None,
        tags: Sequence[str] = (),
        notes: str = "",
        progress: ProgressFn | None = None,
    ) -> ModelRecord:
        """Register a model a job produced (fine-tune, merge, export) with its lineage.

        ``parents`` are ``(parent id, relation, details)``. Files inside ``models/`` are
        moved to ``models/<id>/`` and owned; files elsewhere are referenced in place.
        """
        src = Path(path).absolute()
        if format not in FORMATS:
            raise ConfigError(f"Unknown model format '{format}'.", f"Use one of {FORMATS}.")
        edges = [(self.get(pid).id, rel, details or {}) for pid, rel, details in parents]
        for _, rel, _ in edges:
            if rel not in RELATIONS:
                raise ConfigError(f"Unknown lineage relation '{rel}'.", f"Use one of {RELATIONS}.")
        if format == "gguf":
            meta = read_gguf_metadata(src)
        else:
            meta = read_hf_metadata(src)
            meta.extra.update(check_folder_weights(src))
            if meta.format != format:
                raise ConfigError(f"{src} looks like a '{meta.format}' model, not '{format}'.")
        inside = src.is_relative_to(self.models_dir.absolute())
        default = src.stem if src.is_file() else (meta.name or src.name)
        return self._import(
            src,
            meta,
            "move" if inside else "reference",
            name or default,
            source_kind="derived",
            source_ref=",".join(e[0] for e in edges) or None,
            tags=tags,
            notes=notes,
            progress=progress,
            lineage=edges,
        )

    def _import(
        self,
        src: Path,
        meta: ModelMetadata,
        mode: _Mode,
        name: str,
        *,
        source_kind: str,
        source_ref: str | None,
        tags: Sequence[str] = (),
        notes: str = "",
        progress: ProgressFn | None = None,
        lineage: Sequence[tuple[str, str, dict[str, Any]]] = (),
    ) -> ModelRecord:
        is_dir = src.is_dir()
        entries = _list_folder_files(src) if is_dir else [(src.name, src)]
        if not entries:
            raise DemoAIError(f"{src} is empty.")
        total = sum(p.stat().st_size for _, p in entries)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.models_dir / f".import-{uuid.uuid4().hex[:12]}"
        final: Path | None = None
        moved_back: list[tuple[Path, Path]] = []  # (now, originally) for mode "move"
        try:
            files: list[ModelFile] = []
            verb = {"copy": "Copying", "reference": "Hashing", "move": "Hashing"}[mode]
            prog = _Progress(progress, total, verb)
            if mode == "copy":
                tmp.mkdir()
            for rel, p in entries:
                dst = None
                if mode == "copy":
                    dst = tmp / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                f = _hash_file(p, dst, prog)
                f.relpath = rel
                files.append(f)
            sha = files[0].sha256 if not is_dir else folder_sha256(files)
            model_id = self._new_id(name, sha)
            if mode == "reference":
                stored_path, owned = str(src), False
            else:
                final = self.models_dir / model_id
                if mode == "copy":
                    os.rename(tmp, final)
                elif is_dir:
                    os.rename(src, final)
                    moved_back.append((final, src))
                else:
                    final.mkdir()
                    os.rename(src, final / src.name)
                    moved_back.append((final / src.name, src))
                target = final if is_dir else final / src.name
                stored_path, owned = target.relative_to(self.ws.root).as_posix(), True
            extra = dict(meta.extra)
            if mode == "copy":
                extra["imported_from"] = str(src)
            rec = ModelRecord(
                id=model_id,
                name=name,
                source_kind=source_kind,
                source_ref=source_ref or (str(src) if source_kind == "local" else None),
                format=meta.format,
                architecture=meta.architecture,
                parameters=meta.parameters,
                quantization=meta.quantization,
                context_length=meta.context_length,
                license=meta.license,
                has_chat_template=meta.has_chat_template,
                chat_template=meta.chat_template,
                path=self._abs(stored_path),
                owned=owned,
                size_bytes=sum(f.size for f in files),
                sha256=sha,
                created_at=time.time(),
                tags=builtins.list(tags),
                notes=notes,
                extra=extra,
            )
            self._insert(rec, stored_path, files, lineage)
            return rec
        except BaseException:
            for now, orig in reversed(moved_back):
                with contextlib.suppress(OSError):
                    os.rename(now, orig)
            if final is not None and final.exists() and mode != "reference":
                shutil.rmtree(final, ignore_errors=True)
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _insert(
        self,
        rec: ModelRecord,
        stored_path: str,
        files: Sequence[ModelFile],
        lineage: Sequence[tuple[str, str, dict[str, Any]]],
    ) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO models (id, name, source_kind, source_ref, format, architecture, "
                "parameters, quantization, context_length, license, has_chat_template, "
                "chat_template, path, owned, size_bytes, sha256, created_at, tags, notes, extra) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.id,
                    rec.name,
                    rec.source_kind,
                    rec.source_ref,
                    rec.format,
                    rec.architecture,
                    rec.parameters,
                    rec.quantization,
                    rec.context_length,
                    rec.license,
                    int(rec.has_chat_template),
                    rec.chat_template,
                    stored_path,
                    int(rec.owned),
                    rec.size_bytes,
                    rec.sha256,
                    rec.created_at,
                    json.dumps(rec.tags),
                    rec.notes,
                    json.dumps(rec.extra, default=str),
                ),
            )
            c.executemany(
                "INSERT INTO model_files (model_id, relpath, size, sha256) VALUES (?, ?, ?, ?)",
                [(rec.id, f.relpath, f.size, f.sha256) for f in files],
            )
            for parent_id, relation, details in lineage:
                self._insert_edge(c, rec.id, parent_id, relation, details)

    def _new_id(self, name: str, sha: str) -> str:
        base = f"{slugify(name)}-{sha[:8]}"
        candidate, n = base, 1
        while (
            self.db.query_one("SELECT 1 FROM models WHERE id = ?", (candidate,))
            or (self.models_dir / candidate).exists()
        ):
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def _abs(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.ws.root / p

    def _record(self, row: dict[str, Any]) -> ModelRecord:
        return ModelRecord(
            id=row["id"],
            name=row["name"],
            source_kind=row["source_kind"],
            source_ref=row["source_ref"],
            format=row["format"],
            architecture=row["architecture"],
            parameters=row["parameters"],
            quantization=row["quantization"],
            context_length=row["context_length"],
            license=row["license"],
            has_chat_template=bool(row["has_chat_template"]),
            chat_template=row["chat_template"],
            path=self._abs(row["path"]),
            owned=bool(row["owned"]),
            size_bytes=int(row["size_bytes"]),
            sha256=row["sha256"],
            created_at=float(row["created_at"]),
            tags=json.loads(row["tags"] or "[]"),
            notes=row["notes"] or "",
            extra=json.loads(row["extra"] or "{}"),
        )

    # -- queries -----------------------------------------------------------------------
    def get(self, id_or_name: str) -> ModelRecord:
        """A model by id, exact name, or unique id prefix; NotFoundError otherwise."""
        key = id_or_name.strip()
        row = self.db.query_one("SELECT * FROM models WHERE id = ?", (key,))
        if row:
            return self._record(row)
        rows = self.db.query("SELECT * FROM models WHERE name = ?", (key,))
        if not rows and key:
            escaped = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = self.db.query(
                "SELECT * FROM models WHERE id LIKE ? ESCAPE '\\'", (escaped + "%",)
            )
        if len(rows) == 1:
            return self._record(rows[0])
        if rows:
            ids = ", ".join(r["id"] for r in rows[:10])
            raise NotFoundError(f"'{key}' matches several models: {ids}.", "Use the full model id.")
        raise NotFoundError(
            f"No model with id or name '{key}'.", "See `demoai models list` for the ids."
        )

    def list(
        self, text: str | None = None, format: str | None = None
    ) -> builtins.list[ModelRecord]:
        """Models, newest first, optionally filtered by text (id, name, architecture, tags) and format."""
        sql = "SELECT * FROM models"
        where: list[str] = []
        params: list[Any] = []
        if format:
            where.append("format = ?")
            params.append(format)
        if text:
            like = f"%{text.lower()}%"
            where.append(
                "(lower(id) LIKE ? OR lower(name) LIKE ? OR lower(coalesce(architecture, '')) "
                "LIKE ? OR lower(tags) LIKE ? OR lower(coalesce(source_ref, '')) LIKE ?)"
            )
            params += [like] * 5
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id"
        return [self._record(r) for r in self.db.query(sql, params)]

    def files(self, model_id: str) -> builtins.list[ModelFile]:
        """The files of a model with size and sha256 as recorded at import."""
        mid = self.get(model_id).id
        rows = self.db.query(
            "SELECT relpath, size, sha256 FROM model_files WHERE model_id = ? ORDER BY relpath",
            (mid,),
        )
        return [ModelFile(r["relpath"], int(r["size"]), r["sha256"]) for r in rows]

    def update(
        self,
        model_id: str,
        *,
        name: str | None = None,
        tags: Sequence[str] | None = None,
        notes: str | None = None,
    ) -> ModelRecord:
        """Rename a model or change its tags or notes."""
        rec = self.get(model_id)
        self.db.execute(
            "UPDATE models SET name = ?, tags = ?, notes = ? WHERE id = ?",
            (
                name if name is not None else rec.name,
                json.dumps(builtins.list(tags) if tags is not None else rec.tags),
                notes if notes is not None else rec.notes,
                rec.id,
            ),
        )
        return self.get(rec.id)

    # -- lineage -----------------------------------------------------------------------
    @staticmethod
    def _insert_edge(
        c: sqlite3.Connection,
        child_id: str,
        parent_id: str,
        relation: str,
        details: dict[str, Any],
    ) -> None:
        if relation not in RELATIONS:
            raise ConfigError(f"Unknown lineage relation '{relation}'.", f"Use one of {RELATIONS}.")
        if child_id == parent_id:
            raise ConfigError("A model cannot derive from itself.")
        c.execute(
            "INSERT INTO lineage (child_id, parent_id, relation, details, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET details = excluded.details",
            (child_id, parent_id, relation, json.dumps(details, default=str), time.time()),
        )

    def add_lineage(
        self,
        child_id: str,
        parent_id: str,
        relation: Relation | str,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record that ``child`` was made from ``parent`` (e.g. 'fine-tuned-from')."""
        child, parent = self.get(child_id).id, self.get(parent_id).id
        with self.db.transaction() as c:
            self._insert_edge(c, child, parent, relation, details or {})

    def lineage(self, model_id: str) -> Lineage:
        """Parents and children of a model (an end whose model was removed has ``name`` None)."""
        mid = self.get(model_id).id
        parents = self.db.query(
            "SELECT l.parent_id AS other, m.name, l.relation, l.details, l.created_at "
            "FROM lineage l LEFT JOIN models m ON m.id = l.parent_id "
            "WHERE l.child_id = ? ORDER BY l.created_at",
            (mid,),
        )
        children = self.db.query(
            "SELECT l.child_id AS other, m.name, l.relation, l.details, l.created_at "
            "FROM lineage l LEFT JOIN models m ON m.id = l.child_id "
            "WHERE l.parent_id = ? ORDER BY l.created_at",
            (mid,),
        )

        def edge(r: dict[str, Any]) -> LineageEdge:
            return LineageEdge(
                r["other"], r["name"], r["relation"], json.loads(r["details"]), r["created_at"]
            )

        return Lineage([edge(r) for r in parents], [edge(r) for r in children])

    def dependants(self, model_id: str) -> builtins.list[str]:
        """Ids of registered models that derive from this one."""
        mid = self.get(model_id).id
        rows = self.db.query(
            "SELECT DISTINCT l.child_id FROM lineage l JOIN models m ON m.id = l.child_id "
            "WHERE l.parent_id = ? ORDER BY l.child_id",
            (mid,),
        )
        return [r["child_id"] for r in rows]

    # -- removal -----------------------------------------------------------------------
    def remove(self, model_id: str, *, force: bool = False) -> RemoveResult:
        """Unregister a model; delete its files only if the workspace owns them.

        Refuses (DependantsError) when other models derive from it, unless ``force``;
        their lineage keeps the edge, shown with the parent marked as removed.
        """
        rec = self.get(model_id)
        deps = self.dependants(rec.id)
        if deps and not force:
            raise DependantsError(
                f"{len(deps)} model(s) derive from {rec.id}: {', '.join(deps)}.",
                "Remove those first, or pass --force (force=True) to remove it anyway; "
                "their lineage will show this model as removed.",
            )
        folder: Path | None = None
        if rec.owned:
            models = self.models_dir.absolute()
            folder = self.models_dir / rec.id
            if not folder.absolute().is_relative_to(models) or folder.absolute() == models:
                raise DemoAIError(f"Refusing to delete {folder}: it is outside {models}.")
        trash: Path | None = None
        freed = 0
        if folder is not None and folder.exists():
            freed = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            trash = self.models_dir / f".trash-{rec.id}-{uuid.uuid4().hex[:8]}"
            os.rename(folder, trash)
        try:
            with self.db.transaction() as c:
                c.execute("DELETE FROM lineage WHERE child_id = ?", (rec.id,))
                c.execute("DELETE FROM model_files WHERE model_id = ?", (rec.id,))
                c.execute("DELETE FROM models WHERE id = ?", (rec.id,))
        except BaseException:
            if trash is not None and folder is not None:
                os.rename(trash, folder)
            raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return RemoveResult(
            model_id=rec.id,
            bytes_freed=freed,
            deleted_path=str(folder) if folder is not None else None,
            kept_path=None if rec.owned else str(rec.path),
            dependants=deps,
        )

    def registered_paths(self) -> dict[str, str]:
        """Resolved source paths (referenced paths and copy origins) -> model id."""
        out: dict[str, str] = {}
        for rec in self.list():
            for p in (rec.path, rec.extra.get("imported_from")):
                if p:
                    with contextlib.suppress(OSError):
                        out[str(Path(p).resolve())] = rec.id
        return out


def import_job(
    ctx: JobContext,
    path: str,
    copy: bool = True,
    name: str | None = None,
    trust_pickle: bool = False,
    source_ref: str | None = None,
) -> dict[str, Any]:
    """Job ``models.import``: import a file or folder in the background (for large copies)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise NotFoundError(f"There is nothing at {p}.")
    if p.is_file() and not is_gguf_file(p):
        raise DemoAIError(
            f"{p} is not a GGUF file.", "Import a .gguf file or a Hugging Face model folder."
        )
    rec = ModelRegistry(ctx.workspace).import_path(
        p,
        copy=copy,
        name=name,
        trust_pickle=trust_pickle,
        source_ref=source_ref,
        progress=ctx.progress,
    )
    ctx.artifact("model", rec.path)
    result = {"model_id": rec.id, "name": rec.name, "size_bytes": rec.size_bytes}
    ctx.result(result)
    return result
