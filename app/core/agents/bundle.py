"""Bundles: an agent, a prompt or a run as a folder of JSON files with ``SHA256SUMS``.

``bundle.json`` declares the kind and a summary of what the bundle needs (the
model identity, the tools and the MCP servers). A folder is git-friendly;
``.tar.gz`` packs the same folder.

A bundle is untrusted input. Import verifies every checksum first (a changed,
missing or extra file refuses the whole bundle and nothing is imported); every
file it reads must be a regular file inside the bundle (no absolute path, no
``..``, no link or device) of bounded size, and an archive is bounded in
members and bytes before anything is extracted. What an imported agent can do
is computed from its spec, never taken from the bundle's own summary (which
may leave out an MCP server); its MCP servers and side-effecting grants stay
inactive until the user approves each one (:mod:`app.core.agents.approvals`).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from app.core.agents.approvals import ApprovalStore, capabilities
from app.core.agents.prompts import PromptStore, render
from app.core.agents.runs import RunStore
from app.core.agents.spec import AgentSpec, AgentStore, check_name
from app.core.errors import ConfigError, DemoAIError
from app.core.export.checksums import SUMS_NAME, verify_sums, write_sums
from app.core.store.db import Database
from app.core.store.files import atomic_write_text

BUNDLE_FORMAT = 1
KINDS = ("agent", "prompt", "run")
#: The files each kind of bundle holds (``bundle.json`` lists them).
KIND_FILES = {
    "agent": ("agent.json",),
    "prompt": ("prompt.json",),
    "run": ("agent.json", "run.json", "steps.json"),
}
#: Bounds on what an import reads: one JSON file, a whole archive, archive members.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
MAX_MEMBERS = 64


class BundleError(DemoAIError):
    """A bundle is damaged, tampered with, or not a DemoAI bundle; nothing was imported."""


@dataclass
class ImportReport:
    """What an import added and what the imported agent can do.

    ``requires`` and ``capabilities`` are computed from the spec in the bundle;
    ``pending`` lists its grants (MCP servers with argv and env, side-effecting
    tools with their folder) that stay inactive until approved; ``undeclared``
    names what the bundle's own summary left out.
    """

    kind: str
    name: str
    imported: list[str] = field(default_factory=list)
    missing_models: list[dict[str, Any]] = field(default_factory=list)
    requires: dict[str, Any] = field(default_factory=dict)
    capabilities: dict[str, Any] | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)
    undeclared: list[str] = field(default_factory=list)
    agent_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _requires(spec: AgentSpec, db: Database) -> dict[str, Any]:
    models = []
    if spec.model_id or spec.model_sha256:
        models.append({"id": spec.model_id, "sha256": spec.model_sha256})
    for mid in sorted({t.embedding_model for t in spec.tools if t.embedding_model}):
        row = db.query_one("SELECT sha256 FROM models WHERE id = ?", (mid,))
        models.append({"id": mid, "sha256": row["sha256"] if row else None, "role": "embedding"})
    return {
        "models": models,
        "tools": [t.name for t in spec.tools],
        "mcp_servers": [s.to_dict() for s in spec.mcp_servers],
    }


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _write_bundle(dest: Path, kind: str, name: str, requires: dict[str, Any],
                  files: dict[str, Any]) -> Path:  # fmt: skip
    """Write the bundle files into ``dest`` (a folder, or a ``.tar.gz`` path)."""
    archive = dest.name.endswith(".tar.gz") or dest.suffix == ".tgz"
    if dest.exists() and (archive or any(dest.iterdir())):
        raise ConfigError(f"{dest} already exists.", "Choose a new name or remove it first.")
    with tempfile.TemporaryDirectory(prefix="demoai-bundle-") as tmp:
        root = Path(tmp) / (name if archive else "b")
        root.mkdir()
        meta = {
            "format": BUNDLE_FORMAT,
            "kind": kind,
            "name": name,
            "created_at": time.time(),
            "requires": requires,
            "files": sorted(files),
        }
        _write_json(root / "bundle.json", meta)
        for rel, obj in files.items():
            _write_json(root / rel, obj)
        write_sums(root)
        if archive:
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            with tarfile.open(part, "w:gz") as tar:
                tar.add(root, arcname=name)
            part.replace(dest)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            for p in root.iterdir():
                shutil.copy2(p, dest / p.name)
    return dest


def export_agent(db: Database, name: str, dest: Path, *, version: int | None = None) -> Path:
    """An agent version (default: the latest) as a bundle at ``dest``."""
    spec = AgentStore(db).get(name, version)
    return _write_bundle(
        dest, "agent", spec.name, _requires(spec, db), {"agent.json": spec.to_dict()}
    )


def export_prompt(db: Database, name: str, dest: Path) -> Path:
    """A prompt with all its versions as a bundle."""
    store = PromptStore(db)
    versions = [store.get(name, v).to_dict() for v in store.versions(name)]
    if not versions:
        store.get(name)  # NotFoundError
    req: dict[str, Any] = {"models": [], "tools": [], "mcp_servers": []}
    return _write_bundle(dest, "prompt", name, req, {"prompt.json": {"versions": versions}})


def export_run(db: Database, run_id: str, dest: Path) -> Path:
    """A run with every step (all branches) and its agent spec."""
    runs = RunStore(db)
    run = runs.get(run_id)
    steps = [s.to_dict() for s in runs.steps(run_id)]
    req = _requires(run.agent_spec(), db)
    files = {"run.json": run.to_dict(), "steps.json": steps, "agent.json": run.spec}
    return _write_bundle(dest, "run", run.id, req, files)


# --------------------------------------------------------------------------- import


def _safe_extract(archive: Path, into: Path) -> Path:
    """Extract a bundle archive after checking every member: plain files and folders
    inside it, at most :data:`MAX_MEMBERS` of them, :data:`MAX_ARCHIVE_BYTES` in all."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members: list[tarfile.TarInfo] = []
            total = 0
            for m in tar:  # read the index lazily: a huge member list stops early
                members.append(m)
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                    raise BundleError(f"{archive.name}: unsafe entry {m.name!r}; nothing imported.")
                total += m.size
                if len(members) > MAX_MEMBERS or total > MAX_ARCHIVE_BYTES:
                    raise BundleError(
                        f"{archive.name} is larger than a bundle can be (more than {MAX_MEMBERS} "
                        f"files or {MAX_ARCHIVE_BYTES >> 20} MiB); nothing imported."
                    )
            tar.extractall(into, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{archive} is not a readable .tar.gz bundle: {exc}") from None
    tops = [p for p in into.iterdir()]
    if len(tops) == 1 and tops[0].is_dir():
        return tops[0]
    return into


def _check_entry(rel: Any) -> str:
    """A ``files`` entry of bundle.json: a plain file name inside the bundle."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise BundleError(f"bundle.json lists a bad file entry {rel!r}; nothing imported.")
    p = PurePosixPath(rel)
    if str(p) == "." or p.is_absolute() or ".." in p.parts or rel.startswith("~") or ":" in rel:
        raise BundleError(
            f"bundle.json lists {rel!r}, which is outside the bundle; nothing imported.",
            "A bundle's files must be inside its folder. Do not use this bundle.",
        )
    return rel


def _read_bounded(root: Path, rel: str) -> bytes:
    """The bytes of ``root/rel``: a regular file inside ``root`` (not a link, device or
    pipe) of at most :data:`MAX_FILE_BYTES`."""
    path = root / rel
    try:
        real_root = root.resolve()
        if not path.resolve().is_relative_to(real_root):
            raise BundleError(f"Bundle file {rel} points outside the bundle; nothing imported.")
        for parent in [path, *path.parents]:
            if parent == root:
                break
            if parent.is_symlink():
                raise BundleError(f"Bundle file {rel} is a link; nothing imported.")
        st = os.lstat(path)
    except FileNotFoundError:
        raise BundleError(f"The bundle has no {rel}; nothing imported.") from None
    except OSError as exc:
        raise BundleError(f"Bundle file {rel} is unreadable: {exc.strerror}.") from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"Bundle file {rel} is not a regular file; nothing imported.")
    if st.st_size > MAX_FILE_BYTES:
        raise BundleError(
            f"Bundle file {rel} is {st.st_size >> 20} MiB, more than the "
            f"{MAX_FILE_BYTES >> 20} MiB a bundle file may have; nothing imported."
        )
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BundleError(f"Bundle file {rel} is unreadable: {exc.strerror}.") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # swapped after the check
            raise BundleError(f"Bundle file {rel} is not a regular file; nothing imported.")
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise BundleError(f"Bundle file {rel} is too large; nothing imported.")
    return data


def _load(root: Path, rel: str) -> Any:
    data = _read_bounded(root, rel)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"Bundle file {rel} is not valid JSON: {exc}") from None


def read_bundle(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify and read a bundle folder or archive: (bundle.json, {file: data})."""
    with tempfile.TemporaryDirectory(prefix="demoai-import-") as tmp:
        root = _safe_extract(path, Path(tmp)) if path.is_file() else path
        if not (root / SUMS_NAME).is_file() or not (root / "bundle.json").is_file():
            raise BundleError(f"{path} is not a DemoAI bundle (no bundle.json / {SUMS_NAME}).")
        _read_bounded(root, SUMS_NAME)  # a regular file of bounded size before it is parsed
        try:
            report = verify_sums(root)
        except (DemoAIError, OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"The bundle {path} has an unreadable {SUMS_NAME}: {exc}") from None
        if not report.ok:
            raise BundleError(
                f"The bundle {path} failed its checksums ({report.describe()}). "
                "Nothing was imported.",
                "It was modified or damaged after export: get a fresh copy from its author.",
            )
        meta = _load(root, "bundle.json")
        if not isinstance(meta, dict) or meta.get("kind") not in KINDS:
            raise BundleError(f"{path}: bundle.json has no known kind.")
        fmt = meta.get("format", 0)
        if not isinstance(fmt, int) or fmt > BUNDLE_FORMAT:
            raise BundleError(f"{path} was written by a newer DemoAI.", "Update DemoAI.")
        listed = meta.get("files") or []
        if not isinstance(listed, list):
            raise BundleError(f"{path}: bundle.json 'files' must be a list; nothing imported.")
        entries = [_check_entry(rel) for rel in listed]
        wanted = KIND_FILES[str(meta["kind"])]
        unknown = sorted(set(entries) - set(wanted))
        missing = sorted(set(wanted) - set(entries))
        if unknown or missing:
            raise BundleError(
                f"{path}: a bundle of kind {meta['kind']!r} holds {', '.join(wanted)}; bundle.json "
                + (f"lists {', '.join(map(repr, unknown))}" if unknown else "")
                + (" and " if unknown and missing else "")
                + (f"lacks {', '.join(missing)}" if missing else "")
                + ". Nothing imported."
            )
        files = {rel: _load(root, rel) for rel in entries}
    return meta, files


def missing_models(db: Database, requires: dict[str, Any]) -> list[dict[str, Any]]:
    """Required models (id + sha256) that the local library does not have (matched by sha256)."""
    out = []
    for m in requires.get("models") or []:
        sha, mid = m.get("sha256"), m.get("id")
        if sha:
            row = db.query_one("SELECT id FROM models WHERE sha256 = ?", (sha,))
        else:
            row = db.query_one("SELECT id FROM models WHERE id = ? OR name = ?", (mid, mid))
        if row is None:
            out.append({"id": mid, "sha256": sha})
    return out


def _undeclared(declared: Any, computed: dict[str, Any]) -> list[str]:
    """What the spec grants but the bundle's own summary (bundle.json ``requires``) omits."""
    declared = declared if isinstance(declared, dict) else {}
    servers = {
        json.dumps(s, sort_keys=True)
        for s in declared.get("mcp_servers") or []
        if isinstance(s, dict)
    }
    tools = {t for t in declared.get("tools") or [] if isinstance(t, str)}
    out = [
        f"MCP server {s['name']!r}"
        for s in computed["mcp_servers"]
        if json.dumps(s, sort_keys=True) not in servers
    ]
    out += [f"tool {t!r}" for t in computed["tools"] if t not in tools]
    return out


def _spec_of(obj: Any, what: str) -> AgentSpec:
    try:
        return AgentSpec.from_dict(obj)
    except DemoAIError as exc:
        raise BundleError(
            f"The {what} in the bundle is not valid: {exc}; nothing imported."
        ) from None


def _prompt_versions(obj: Any) -> list[dict[str, Any]]:
    """The prompt versions of a prompt bundle, all validated before any is saved."""
    versions = obj.get("versions") if isinstance(obj, dict) else None
    if not isinstance(versions, list) or not versions:
        raise BundleError("prompt.json has no versions; nothing imported.")
    out = []
    for v in versions:
        if not isinstance(v, dict) or not isinstance(v.get("text"), str):
            raise BundleError("A prompt version in the bundle has no text; nothing imported.")
        tests = v.get("test_inputs") or []
        try:
            check_name("prompt", v.get("name", ""))
            if not isinstance(tests, list) or not all(isinstance(t, dict) for t in tests):
                raise ConfigError("test_inputs must be a list of objects.")
            for t in tests:
                render(v["text"], t)
        except DemoAIError as exc:
            raise BundleError(f"A prompt version in the bundle is not valid: {exc}") from None
        desc = v.get("description", "")
        out.append({"name": v["name"], "text": v["text"], "test_inputs": tests,
                    "description": desc if isinstance(desc, str) else ""})  # fmt: skip
    return out


def import_bundle(db: Database, path: Path) -> ImportReport:
    """Verify and import a bundle; the imported agent/prompt becomes a new local version.

    Everything is read and validated before anything is written. An imported
    agent's MCP servers and side-effecting grants are listed in
    ``report.pending``: they stay inactive until the user approves them.
    """
    meta, files = read_bundle(path)
    kind, name = str(meta["kind"]), str(meta.get("name", ""))
    report = ImportReport(kind, name)
    spec: AgentSpec | None = None
    if kind in ("agent", "run"):
        spec = _spec_of(files["agent.json"], "agent spec")
        report.requires = _requires(spec, db)
        report.capabilities = capabilities(spec, db)
        report.undeclared = _undeclared(meta.get("requires"), report.requires)
    if kind == "agent":
        assert spec is not None
        saved = AgentStore(db).save(spec, by_user=False)
        report.name = saved.name
        report.agent_version = saved.version
        report.imported.append(f"agent {saved.name} v{saved.version}")
        report.pending = [g.to_dict() for g in ApprovalStore(db).pending(saved)]
    elif kind == "prompt":
        versions = _prompt_versions(files["prompt.json"])
        store = PromptStore(db)
        for v in versions:
            p = store.save(v["name"], v["text"], description=v["description"],
                           test_inputs=v["test_inputs"])  # fmt: skip
            report.imported.append(f"prompt {p.name} v{p.version}")
    else:
        assert spec is not None
        run_obj, steps = files["run.json"], files["steps.json"]
        if not isinstance(run_obj, dict) or not isinstance(steps, list):
            raise BundleError("run.json / steps.json have the wrong shape; nothing imported.")
        try:
            run = RunStore(db).import_run({**run_obj, "spec": spec.to_dict()}, steps)
        except (KeyError, TypeError, ValueError, sqlite3.Error) as exc:
            raise BundleError(
                f"The run in the bundle is incomplete ({exc}); nothing imported."
            ) from None
        report.imported.append(f"run {run.id}")
        # A fork of this run uses its spec: those grants wait for approval too.
        report.pending = [g.to_dict() for g in ApprovalStore(db).pending(spec)]
    report.missing_models = missing_models(db, report.requires)
    return report
