"""Workspace backups: one tar file with a database snapshot, deduplicated files, a manifest.

Layout of a backup (an uncompressed POSIX tar; models and Parquet files do not compress):

``demoai.db``
    A consistent snapshot of the database taken with SQLite's online backup API
    while the app may be writing (WAL readers never block writers).
``data/000001`` ...
    One member per distinct file content (sha256), stored once however many
    workspace paths hold it. An incremental backup (``base``) stores only the
    contents its base chain does not hold.
``manifest.json``
    The format, the backup's id, its base (id and file name), every workspace
    file (path, size, sha256), the stored blobs (member, size, sha256), models
    referenced in place outside the workspace (listed, never copied).
``SHA256SUMS``
    sha256 of every other member, in the ``sha256sum`` format.

The file is written under a temporary name and renamed when complete, so a
backup is whole or absent. A backup is untrusted input when read: members must
be regular files with the expected names, sizes within the file, every hash
must match, and every path in the manifest must stay inside the target; all of
it is checked before restore writes anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from app.core.errors import ConfigError, DemoAIError, NotFoundError
from app.core.store.files import (
    atomic_open,
    atomic_write_json,
    is_temp_name,
    make_owned_temp_dir,
)

FORMAT = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
DB_MEMBER = "demoai.db"
STATE_FILE = "backup-state.json"
#: Members that are read into memory (manifest, SHA256SUMS) may not exceed this.
MAX_META_BYTES = 64 << 20
_CHUNK = 1 << 20
_BLOB_RE = re.compile(r"^data/[0-9]{6,9}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Files at the workspace root that are never copied as files (the database is snapshotted).
_ROOT_SKIP = frozenset(
    {"demoai.db", "demoai.db-wal", "demoai.db-shm", "demoai.db-journal", STATE_FILE}
)

#: ``progress(fraction or None, message)``.
ProgressFn = Callable[[float | None, str], None]


class BackupError(DemoAIError):
    """A backup cannot be read, is damaged, or does not fit what it claims to be."""

    exit_code = 4


class BaseMissingError(BackupError):
    """An incremental backup's base (or a base of it) is not found."""

    exit_code = 5


@dataclass
class ExternalModel:
    """A model the workspace references in place, outside the workspace: not in the backup."""

    id: str
    name: str
    path: str
    sha256: str
    size: int


@dataclass
class CreateResult:
    path: Path
    id: str
    files: int
    total_bytes: int
    stored_blobs: int
    stored_bytes: int
    deduplicated: int
    from_base: int
    base: str | None
    external: list[ExternalModel] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        d["external"] = [e.__dict__ for e in self.external]
        return d


@dataclass
class Verified:
    """A backup whose every member matched its hash; ``manifest`` is safe to use."""

    path: Path
    manifest: dict[str, Any]
    size: int

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def blobs(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest["blobs"])

    @property
    def base(self) -> dict[str, Any] | None:
        b = self.manifest.get("base")
        return dict(b) if b else None


# -- creating ---------------------------------------------------------------------------------
def _workspace_files(root: Path, skip: set[Path]) -> tuple[list[str], list[str]]:
    """Regular files under ``root`` as sorted POSIX relative paths; and the skipped links."""
    out: list[str] = []
    links: list[str] = []
    for base, dirs, names in os.walk(root):
        here = Path(base)
        keep = []
        for d in dirs:
            p = here / d
            if is_temp_name(d):
                continue
            if p.is_symlink():
                links.append(p.relative_to(root).as_posix())
                continue
            keep.append(d)
        dirs[:] = sorted(keep)
        for n in names:
            p = here / n
            if is_temp_name(n) or n.startswith(".write-test-") or p in skip:
                continue
            if here == root and n in _ROOT_SKIP:
                continue
            if p.is_symlink():
                links.append(p.relative_to(root).as_posix())
                continue
            if p.is_file():
                out.append(p.relative_to(root).as_posix())
    return sorted(out), sorted(links)


def _snapshot_db(db_path: Path, dest: Path) -> None:
    """Copy the live database to ``dest`` with the online backup API (one consistent read)."""
    src = sqlite3.connect(db_path, timeout=30.0)
    try:
        src.execute("PRAGMA busy_timeout = 30000")
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)  # pages=-1: the whole file in one step, under one read transaction
            dst.execute("PRAGMA journal_mode = DELETE")  # a standalone file, no -wal beside it
            dst.commit()
        finally:
            dst.close()
    finally:
        src.close()


def _db_rows(db: Path, sql: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    except sqlite3.OperationalError:  # a table this workspace never created
        return []
    finally:
        conn.close()


def _hash_fd(fh: IO[bytes], size: int, check: Callable[[], None] | None) -> str:
    h = hashlib.sha256()
    left = size
    fh.seek(0)
    while left > 0:
        if check:
            check()
        block = fh.read(min(_CHUNK, left))
        if not block:
            break
        h.update(block)
        left -= len(block)
    return h.hexdigest()


class _HashingReader(io.RawIOBase):
    """Reads at most ``size`` bytes of ``fh``, hashing them; pads with zeros if the file shrank."""

    def __init__(self, fh: IO[bytes], size: int, tick: Callable[[int], None]) -> None:
        self.fh, self.left, self.tick = fh, size, tick
        self.h = hashlib.sha256()
        self.short = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n) if n else b""
        if len(data) < n:  # the file was truncated under us: the hash records what was stored
            self.short = True
            data += b"\0" * (n - len(data))
        self.left -= len(data)
        self.h.update(data)
        self.tick(len(data))
        return data


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = 0o644
    ti.mtime = int(mtime)
    ti.type = tarfile.REGTYPE
    return ti


def create_backup(
    root: Path,
    out: Path,
    *,
    base: Path | None = None,
    progress: ProgressFn | None = None,
    check: Callable[[], None] | None = None,
) -> CreateResult:
    """Back up the workspace at ``root`` into ``out`` (incremental against ``base``).

    Runs while other processes use the workspace: the database is snapshotted
    first, then files are read; a file replaced meanwhile is read from the copy
    that was open (workspace writes are atomic renames).
    """
    root = Path(root).absolute()
    out = Path(out).absolute()
    report = progress or (lambda f, m: None)
    if not (root / "demoai.db").is_file():
        raise NotFoundError(f"There is no DemoAI workspace at {root} (no demoai.db).")
    if out.exists() and out.is_dir():
        raise ConfigError(f"{out} is a folder.", "Give the path of the backup file to write.")
    base_info: dict[str, Any] | None = None
    known: set[str] = set()
    if base is not None:
        base_v = verify_backup(Path(base), progress=None, check=check)
        base_info = {"id": base_v.id, "file": Path(base).name}
        known = {str(f["sha256"]) for f in base_v.manifest["files"]}
    backup_id = uuid.uuid4().hex
    started = time.time()
    report(None, "Snapshotting the database")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = make_owned_temp_dir(out.parent, "backup-work")
    except OSError as exc:
        raise DemoAIError(
            f"Cannot write the backup to {out.parent}: {exc.strerror or exc}.",
            "Choose a writable folder.",
        ) from exc
    try:
        db_copy = work / "demoai.db"
        _snapshot_db(root / "demoai.db", db_copy)
        external = [
            ExternalModel(r["id"], r["name"], r["path"], r["sha256"], int(r["size_bytes"]))
            for r in _db_rows(
                db_copy, "SELECT id, name, path, sha256, size_bytes FROM models WHERE owned = 0"
            )
        ]
        referenced = [
            str(r["path"])
            for r in _db_rows(db_copy, "SELECT path FROM models WHERE owned = 1")
            + _db_rows(db_copy, "SELECT path FROM dataset_versions")
        ]
        rels, links = _workspace_files(root, {out})
        sizes = {}
        for rel in rels:
            with contextlib.suppress(OSError):
                sizes[rel] = (root / rel).stat().st_size
        total = max(1, 2 * sum(sizes.values()))
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            report(min(done / total, 0.999), f"{len(files)}/{len(rels)} files")

        files: list[dict[str, Any]] = []
        blobs: dict[str, dict[str, Any]] = {}
        gone: list[str] = []
        dedup = from_base = 0
        with (
            atomic_open(out, "wb") as fh,
            tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            db_sha = _sha_file(db_copy)
            tar.add(str(db_copy), arcname=DB_MEMBER, filter=_plain)
            sums = {DB_MEMBER: db_sha}
            for rel in rels:
                path = root / rel
                try:
                    src = open(path, "rb")
                except FileNotFoundError:
                    gone.append(rel)  # removed since the walk (e.g. a pruned checkpoint)
                    continue
                with src:
                    st = os.fstat(src.fileno())
                    size = st.st_size
                    sha = _hash_fd(src, size, check)
                    tick(size)
                    if sha in blobs:
                        dedup += 1
                    elif sha in known:
                        from_base += 1
                    else:
                        member = f"data/{len(blobs) + 1:06d}"
                        src.seek(0)
                        reader = _HashingReader(src, size, lambda n: tick(n))
                        tar.addfile(_tarinfo(member, size, st.st_mtime), reader)
                        stored = reader.h.hexdigest()
                        if stored != sha:  # rewritten in place between the two reads
                            sha = stored
                        blobs.setdefault(sha, {"member": member, "size": size})
                        sums[member] = stored
                    files.append(
                        {
                            "path": rel,
                            "size": size,
                            "sha256": sha,
                            "exec": bool(st.st_mode & 0o111),
                        }
                    )
            # A folder removed while it was read (a pruned checkpoint) is left out whole,
            # so a restore never holds half of it; its stored blobs stay unreferenced.
            dropped = sorted({d for rel in gone if (d := _removed_folder(root, rel))})
            if dropped:
                files = [
                    f for f in files if not any(f["path"].startswith(d + "/") for d in dropped)
                ]
                gone = sorted(set(gone) | {d + "/" for d in dropped})
            in_backup = {f["path"] for f in files}
            missing = sorted(
                ref
                for ref in referenced
                if not Path(ref).is_absolute()
                and ref not in in_backup
                and not any(p.startswith(ref.rstrip("/") + "/") for p in in_backup)
            )
            manifest = {
                "format": FORMAT,
                "kind": "demoai-workspace-backup",
                "id": backup_id,
                "created_at": started,
                "workspace": str(root),
                "base": base_info,
                "database": {"member": DB_MEMBER, "sha256": db_sha, "size": db_copy.stat().st_size},
                "files": files,
                "blobs": blobs,
                "external_models": [e.__dict__ for e in external],
                "skipped_links": links,
                "missing": missing,
            }
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            _add_bytes(tar, MANIFEST, data)
            sums[MANIFEST] = hashlib.sha256(data).hexdigest()
            text = "".join(f"{h}  {name}\n" for name, h in sorted(sums.items()))
            _add_bytes(tar, SUMS, text.encode())
    except OSError as exc:
        raise DemoAIError(
            f"The backup {out} could not be written: {exc.strerror or exc}.",
            "Nothing was left under that name. Free some space or choose another folder.",
        ) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        atomic_write_json(
            root / STATE_FILE, {"last_backup_at": time.time(), "path": str(out), "id": backup_id}
        )
    report(1.0, f"{len(files)} files backed up")
    return CreateResult(
        path=out,
        id=backup_id,
        files=len(files),
        total_bytes=sum(int(f["size"]) for f in files),
        stored_blobs=len(blobs),
        stored_bytes=sum(int(b["size"]) for b in blobs.values()),
        deduplicated=dedup,
        from_base=from_base,
        base=str(base) if base else None,
        external=external,
        skipped=links + gone,
        missing=missing,
    )


def _removed_folder(root: Path, rel: str) -> str | None:
    """The outermost folder of ``rel`` that no longer exists (never a top-level one)."""
    parts = rel.split("/")[:-1]
    found = None
    for i in range(len(parts), 1, -1):
        if (root / "/".join(parts[:i])).is_dir():
            break
        found = "/".join(parts[:i])
    return found


def _plain(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mode = 0o644
    return ti


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data), time.time()), io.BytesIO(data))


def _sha_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return _hash_fd(fh, os.fstat(fh.fileno()).st_size, None)


# -- the last backup --------------------------------------------------------------------------
def last_backup(root: Path) -> dict[str, Any] | None:
    """What the last successful backup of this workspace was (time, file), or None."""
    try:
        data = json.loads((Path(root) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("last_backup_at"), (int, float)):
        return None
    return data


def reminder_due(
    root: Path, days: int, now: float | None = None, created_at: float | None = None
) -> bool:
    """Whether to remind: ``days`` > 0 and no backup in the last ``days`` days. A workspace
    never backed up is due once it is older than ``days`` (``created_at``; unknown: due)."""
    if days <= 0:
        return False
    now = now if now is not None else time.time()
    last = last_backup(root)
    since = float(last["last_backup_at"]) if last is not None else created_at
    return since is None or now - since > days * 86400


def workspace_created_at(db: Any) -> float | None:
    """When the workspace's database was first migrated (a ``Database``)."""
    row = db.query_one("SELECT MIN(applied_at) AS t FROM schema_versions")
    return float(row["t"]) if row and row["t"] is not None else None


# -- reading (untrusted) ----------------------------------------------------------------------
def _damaged(path: Path, why: str) -> BackupError:
    return BackupError(
        f"The backup {path} is damaged or not a DemoAI backup: {why}.",
        "Nothing was written. Use another copy of the backup.",
    )


def _safe_rel(p: Any) -> bool:
    if not isinstance(p, str) or not p or len(p) > 4096 or "\\" in p or "\0" in p:
        return False
    pp = PurePosixPath(p)
    if pp.is_absolute() or p.startswith("/"):
        return False
    parts = p.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return False
    if ":" in parts[0]:  # a drive letter on Windows
        return False
    return not (len(parts) == 1 and parts[0] in _ROOT_SKIP)


def _check_manifest(path: Path, m: Any, members: dict[str, tuple[int, str]]) -> dict[str, Any]:
    if not isinstance(m, dict) or m.get("kind") != "demoai-workspace-backup":
        raise _damaged(path, "its manifest is not a DemoAI backup manifest")
    fmt = m.get("format")
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise BackupError(
            f"The backup {path} was written by a newer DemoAI (format {fmt!r}).",
            "Update DemoAI to restore it. Nothing was written.",
        )
    if not isinstance(m.get("id"), str) or not re.fullmatch(r"[0-9a-f]{32}", m["id"]):
        raise _damaged(path, "the manifest has no valid id")
    base = m.get("base")
    if base is not None and not (
        isinstance(base, dict)
        and isinstance(base.get("id"), str)
        and isinstance(base.get("file"), str)
        and "/" not in base["file"]
        and "\\" not in base["file"]
        and base["file"] not in ("", ".", "..")
    ):
        raise _damaged(path, "the manifest's base entry is invalid")
    db = m.get("database")
    if not isinstance(db, dict) or db.get("member") != DB_MEMBER:
        raise _damaged(path, "the manifest names no database")
    if members.get(DB_MEMBER, (None, None)) != (db.get("size"), db.get("sha256")):
        raise _damaged(path, "the database snapshot does not match the manifest")
    blobs = m.get("blobs")
    if not isinstance(blobs, dict):
        raise _damaged(path, "the manifest has no blob table")
    for sha, b in blobs.items():
        if not (isinstance(sha, str) and _HEX64.match(sha) and isinstance(b, dict)):
            raise _damaged(path, "the manifest's blob table is invalid")
        member = b.get("member")
        if not isinstance(member, str) or member not in members:
            raise _damaged(path, f"blob {member!r} is missing")
        size, digest = members[member]
        if digest != sha or size != b.get("size"):
            raise _damaged(path, f"{member} does not match its hash in the manifest")
    stored = {b["member"] for b in blobs.values()}
    extra = [n for n in members if _BLOB_RE.match(n) and n not in stored]
    if extra:
        raise _damaged(path, f"{extra[0]} is not listed in the manifest")
    files = m.get("files")
    if not isinstance(files, list):
        raise _damaged(path, "the manifest has no file list")
    seen: set[str] = set()
    parents: set[str] = set()
    for f in files:
        if not isinstance(f, dict) or not _safe_rel(f.get("path")):
            raise _damaged(
                path, f"unsafe or invalid path {f.get('path') if isinstance(f, dict) else f!r}"
            )
        rel = f["path"]
        if rel in seen or rel in parents:
            raise _damaged(path, f"the path {rel} is listed twice")
        seen.add(rel)
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parents.add("/".join(parts[:i]))
        sha, fsize = f.get("sha256"), f.get("size")
        if not (isinstance(sha, str) and _HEX64.match(sha)):
            raise _damaged(path, f"{rel} has no valid hash")
        if not isinstance(fsize, int) or isinstance(fsize, bool) or fsize < 0:
            raise _damaged(path, f"{rel} has no valid size")
        if sha in blobs and blobs[sha]["size"] != fsize:
            raise _damaged(path, f"{rel} does not match the size of its content")
        if sha not in blobs and base is None:
            raise _damaged(path, f"the content of {rel} is missing")
    if seen & parents:
        raise _damaged(path, "a path is listed both as a file and as a folder")
    for key in ("external_models", "skipped_links", "missing"):
        if not isinstance(m.get(key, []), list):
            raise _damaged(path, f"the manifest's {key} is invalid")
    return m


#: Tar header types whose content tarfile reads into memory (pax and GNU long names).
_META_TYPES = frozenset(b"xgLK")
MAX_TAR_META = 1 << 20


def _prescan(path: Path, fh: IO[bytes], size: int) -> None:
    """Walk the raw 512-byte headers before tarfile does: tarfile reads pax headers and
    GNU long names whole into memory, so a hostile one could be as large as the file."""
    pos = 0
    while pos + 512 <= size:
        fh.seek(pos)
        block = fh.read(512)
        if len(block) < 512:
            break
        if block == b"\0" * 512:
            break
        field_ = block[124:136]
        if field_[0] & 0x80:
            n = int.from_bytes(field_[1:], "big")
        else:
            digits = field_.replace(b"\0", b" ").strip()
            try:
                n = int(digits, 8) if digits else 0
            except ValueError as exc:
                raise _damaged(path, "a tar header has an invalid size") from exc
        if block[156] in _META_TYPES and n > MAX_TAR_META:
            raise _damaged(path, "a tar extension header is too large")
        pos += 512 + (n + 511) // 512 * 512
    fh.seek(0)


def _iter_members(
    path: Path, fh: IO[bytes], size: int
) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    _prescan(path, fh, size)
    try:
        tar = tarfile.open(fileobj=fh, mode="r:")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _damaged(path, f"not a readable tar file ({exc})") from exc
    names: set[str] = set()
    try:
        while True:
            try:
                ti = tar.next()
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise _damaged(path, f"the tar structure is broken ({exc})") from exc
            if ti is None:
                break
            name = ti.name
            if not ti.isreg():
                raise _damaged(
                    path, f"member {name!r} is not a regular file (links and devices are refused)"
                )
            if name.startswith("/") or ".." in name.split("/") or "\\" in name:
                raise _damaged(path, f"member {name!r} has an unsafe path")
            if name not in (DB_MEMBER, MANIFEST, SUMS) and not _BLOB_RE.match(name):
                raise _damaged(path, f"unexpected member {name!r}")
            if name in names:
                raise _damaged(path, f"member {name!r} appears twice")
            names.add(name)
            if ti.size < 0 or ti.offset_data + ti.size > size:
                raise _damaged(path, f"member {name!r} is larger than the file (truncated?)")
            yield ti, tar
    finally:
        tar.close()


def _read_member(tar: tarfile.TarFile, ti: tarfile.TarInfo, path: Path) -> Iterator[bytes]:
    fobj = tar.extractfile(ti)
    if fobj is None:
        raise _damaged(path, f"member {ti.name!r} cannot be read")
    left = ti.size
    with fobj:
        while left > 0:
            try:
                block = fobj.read(min(_CHUNK, left))
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise _damaged(path, f"member {ti.name!r} is truncated ({exc})") from exc
            if not block:
                raise _damaged(path, f"member {ti.name!r} is truncated")
            left -= len(block)
            yield block


def verify_backup(
    path: Path, *, progress: ProgressFn | None = None, check: Callable[[], None] | None = None
) -> Verified:
    """Read the whole backup, check every member against SHA256SUMS and the manifest.

    Writes nothing. Raises :class:`BackupError` naming the first problem found.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"There is no backup file at {path}.")
    size = path.stat().st_size
    report = progress or (lambda f, m: None)
    members: dict[str, tuple[int, str]] = {}
    meta: dict[str, bytes] = {}
    done = 0
    with open(path, "rb") as fh:
        for ti, tar in _iter_members(path, fh, size):
            if ti.name in (MANIFEST, SUMS) and ti.size > MAX_META_BYTES:
                raise _damaged(path, f"{ti.name} is too large")
            h = hashlib.sha256()
            keep = ti.name in (MANIFEST, SUMS)
            buf = bytearray()
            for block in _read_member(tar, ti, path):
                if check:
                    check()
                h.update(block)
                if keep:
                    buf += block
                done += len(block)
                report(min(done / max(size, 1), 0.999), f"Checking {ti.name}")
            members[ti.name] = (ti.size, h.hexdigest())
            if keep:
                meta[ti.name] = bytes(buf)
    if SUMS not in meta or MANIFEST not in meta:
        raise _damaged(path, f"{SUMS if SUMS not in meta else MANIFEST} is missing")
    listed: dict[str, str] = {}
    try:
        for line in meta[SUMS].decode("utf-8").splitlines():
            digest, _, name = line.partition("  ")
            if not _HEX64.match(digest) or not name:
                raise ValueError(line)
            listed[name] = digest
    except (UnicodeDecodeError, ValueError) as exc:
        raise _damaged(path, f"{SUMS} is not a valid checksum list") from exc
    for name, (_, digest) in members.items():
        if name == SUMS:
            continue
        if name not in listed:
            raise _damaged(path, f"{name} is not listed in {SUMS}")
        if listed[name] != digest:
            raise _damaged(path, f"{name} does not match its checksum")
    for name in listed:
        if name not in members:
            raise _damaged(path, f"{name} is listed in {SUMS} but missing")
    try:
        manifest = json.loads(meta[MANIFEST].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _damaged(path, "its manifest is not valid JSON") from exc
    report(1.0, "Backup verified")
    return Verified(path, _check_manifest(path, manifest, members), size)


def resolve_chain(
    top: Verified,
    *,
    bases: list[Path] | None = None,
    progress: ProgressFn | None = None,
    check: Callable[[], None] | None = None,
) -> list[Verified]:
    """``top`` and its verified bases, newest first. A base is looked for among ``bases``
    and beside the backup that names it, and must carry the id recorded there."""
    chain = [top]
    candidates = [Path(b) for b in bases or []]
    while (want := chain[-1].base) is not None:
        if len(chain) > 256:
            raise _damaged(top.path, "its base chain is too long (a loop?)")
        look = [*candidates, chain[-1].path.parent / want["file"]]
        found: Verified | None = None
        for cand in look:
            if not cand.is_file():
                continue
            try:
                v = verify_backup(cand, progress=progress, check=check)
            except BackupError:
                if cand.name == want["file"]:
                    raise
                continue
            if v.id == want["id"]:
                found = v
                break
        if found is None:
            raise BaseMissingError(
                f"The backup {chain[-1].path.name} is incremental: it needs its base "
                f"{want['file']} (id {want['id'][:12]}), which was not found "
                f"beside it{' or among the given bases' if candidates else ''}.",
                "Put the base backup (and its own bases) in the same folder, or name it with "
                "--base. Nothing was written.",
            )
        chain.append(found)
    # Every file's content must be stored somewhere in the chain.
    held: dict[str, int] = {}
    for v in chain:
        held.update({sha: int(b["size"]) for sha, b in v.blobs.items()})
    for f in top.manifest["files"]:
        if f["sha256"] not in held:
            raise _damaged(top.path, f"the content of {f['path']} is in none of its bases")
        if held[f["sha256"]] != f["size"]:
            raise _damaged(top.path, f"{f['path']} does not match the size of its content")
    return chain


# -- restoring --------------------------------------------------------------------------------
@dataclass
class RestoreResult:
    workspace: Path
    files: int
    total_bytes: int
    backups_read: int
    interrupted_jobs: list[str]
    external: list[dict[str, Any]]
    external_missing: list[str]


def restore_backup(
    path: Path,
    target: Path,
    *,
    bases: list[Path] | None = None,
    progress: ProgressFn | None = None,
    check: Callable[[], None] | None = None,
) -> RestoreResult:
    """Verify the backup and its base chain completely, then write a new workspace at ``target``.

    ``target`` must not exist or be an empty folder. The workspace is assembled
    in a temporary folder beside it and renamed into place, so a failure leaves
    nothing behind.
    """
    target = Path(target).absolute()
    report = progress or (lambda f, m: None)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(
            f"The restore target {target} is not an empty folder.",
            "Restore into a new or empty folder; nothing was written.",
        )
    report(None, "Verifying the backup")
    top = verify_backup(Path(path), progress=progress, check=check)
    chain = resolve_chain(top, bases=bases, progress=progress, check=check)
    files = top.manifest["files"]
    need: dict[str, list[dict[str, Any]]] = {}
    for f in files:
        need.setdefault(f["sha256"], []).append(f)
    total = sum(int(f["size"]) for f in files) + int(top.manifest["database"]["size"])
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if total > free:
        raise DemoAIError(
            f"Restoring needs {total} bytes but {target.parent} has {free} free.",
            "Free some space or restore elsewhere; nothing was written.",
        )
    stage = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.restore-", suffix=".tmp", dir=target.parent)
    )
    done = 0
    try:
        for v in chain:
            wanted = {b["member"]: sha for sha, b in v.blobs.items() if sha in need}
            if v is not top and not wanted:
                continue
            with open(v.path, "rb") as fh:
                for ti, tar in _iter_members(v.path, fh, v.size):
                    if v is top and ti.name == DB_MEMBER:
                        dest, sha = stage / DB_MEMBER, top.manifest["database"]["sha256"]
                    elif ti.name in wanted:
                        sha = wanted[ti.name]
                        if sha not in need:
                            continue
                        dest = stage / need[sha][0]["path"]
                    else:
                        continue
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    h = hashlib.sha256()
                    with open(dest, "wb") as out:
                        for block in _read_member(tar, ti, v.path):
                            if check:
                                check()
                            h.update(block)
                            out.write(block)
                            done += len(block)
                            report(min(done / max(total, 1), 0.999), f"Restoring {dest.name}")
                    if h.hexdigest() != sha:
                        raise _damaged(v.path, f"{ti.name} changed while it was restored")
                    if ti.name == DB_MEMBER:
                        continue
                    group = need.pop(sha)
                    for f in group[1:]:
                        other = stage / f["path"]
                        other.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(dest, other)
                        done += int(f["size"])
                    for f in group:
                        if f.get("exec"):
                            os.chmod(stage / f["path"], 0o755)
        if need:
            raise _damaged(top.path, f"{len(need)} file content(s) were not found while restoring")
        interrupted = _settle_jobs(stage / DB_MEMBER)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(stage, 0o777 & ~mask)  # mkdtemp made it private; a workspace is not
        if target.exists():
            target.rmdir()
        os.replace(stage, target)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise DemoAIError(
            f"Restoring into {target} failed: {exc.strerror or exc}.",
            "Nothing was left there. Free some space or fix the folder's permissions.",
        ) from exc
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    external = list(top.manifest.get("external_models", []))
    missing_ext = [
        str(e.get("path"))
        for e in external
        if isinstance(e, dict) and not Path(str(e.get("path"))).exists()
    ]
    report(1.0, f"{len(files)} files restored")
    return RestoreResult(
        workspace=target,
        files=len(files),
        total_bytes=total,
        backups_read=len(chain),
        interrupted_jobs=interrupted,
        external=external,
        external_missing=missing_ext,
    )


def _settle_jobs(db: Path) -> list[str]:
    """Jobs that were running when the backup was taken did not finish in the restored
    workspace: mark them interrupted (they can be resumed from their checkpoints)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        try:
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            ok = str(exc)
        if ok != "ok":
            raise BackupError(
                f"The database in the backup is not a sound SQLite database ({ok}).",
                "Nothing was written. Use another backup.",
            )
        try:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE state IN ('running', 'cancelling')"
            ).fetchall()
        except sqlite3.OperationalError:
            return []
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE jobs SET state = 'interrupted', pid = NULL, pid_started = NULL, "
            "error = 'The backup was taken while this job ran.', "
            "hint = 'Resume it if its kind supports resuming, or start it again.', "
            "finished_at = ?, updated_at = ? WHERE state IN ('running', 'cancelling')",
            (now, now),
        )
        conn.execute("COMMIT")
        return [str(r[0]) for r in rows]
    finally:
        conn.close()
