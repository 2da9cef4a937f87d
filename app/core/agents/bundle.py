"""Bundles: an agent, a prompt or a run as a folder of JSON files with ``SHA256SUMS``.

``bundle.json`` declares the kind and what the bundle needs on the importing
machine: the model identity (id + sha256), the tools and the MCP servers.
A folder is git-friendly; ``.tar.gz`` packs the same folder. Import verifies
every checksum first (a changed, missing or extra file refuses the whole
bundle and nothing is imported), then reports required models the local
library lacks.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from app.core.agents.prompts import PromptStore
from app.core.agents.runs import RunStore
from app.core.agents.spec import AgentSpec, AgentStore
from app.core.errors import ConfigError, DemoAIError
from app.core.export.checksums import SUMS_NAME, verify_sums, write_sums
from app.core.store.db import Database
from app.core.store.files import atomic_write_text

BUNDLE_FORMAT = 1
KINDS = ("agent", "prompt", "run")


class BundleError(DemoAIError):
    """A bundle is damaged, tampered with, or not a DemoAI bundle; nothing was imported."""


@dataclass
class ImportReport:
    kind: str
    name: str
    imported: list[str] = field(default_factory=list)
    missing_models: list[dict[str, Any]] = field(default_factory=list)
    requires: dict[str, Any] = field(default_factory=dict)

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
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                    raise BundleError(f"{archive.name}: unsafe entry {m.name!r}; nothing imported.")
            tar.extractall(into, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{archive} is not a readable .tar.gz bundle: {exc}") from None
    tops = [p for p in into.iterdir()]
    if len(tops) == 1 and tops[0].is_dir():
        return tops[0]
    return into


def _load(root: Path, rel: str) -> Any:
    try:
        return json.loads((root / rel).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"Bundle file {rel} is unreadable: {exc}") from None


def read_bundle(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify and read a bundle folder or archive: (bundle.json, {file: data})."""
    with tempfile.TemporaryDirectory(prefix="demoai-import-") as tmp:
        root = _safe_extract(path, Path(tmp)) if path.is_file() else path
        if not (root / SUMS_NAME).is_file() or not (root / "bundle.json").is_file():
            raise BundleError(f"{path} is not a DemoAI bundle (no bundle.json / {SUMS_NAME}).")
        report = verify_sums(root)
        if not report.ok:
            raise BundleError(
                f"The bundle {path} failed its checksums ({report.describe()}). "
                "Nothing was imported.",
                "It was modified or damaged after export: get a fresh copy from its author.",
            )
        meta = _load(root, "bundle.json")
        if not isinstance(meta, dict) or meta.get("kind") not in KINDS:
            raise BundleError(f"{path}: bundle.json has no known kind.")
        if int(meta.get("format", 0)) > BUNDLE_FORMAT:
            raise BundleError(f"{path} was written by a newer DemoAI.", "Update DemoAI.")
        files = {rel: _load(root, rel) for rel in meta.get("files") or []}
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


def import_bundle(db: Database, path: Path) -> ImportReport:
    """Verify and import a bundle; the imported agent/prompt becomes a new local version."""
    meta, files = read_bundle(path)
    kind, name = str(meta["kind"]), str(meta.get("name", ""))
    requires = meta.get("requires") or {}
    report = ImportReport(kind, name, requires=requires)
    if kind == "agent":
        spec = AgentSpec.from_dict(files["agent.json"])
        saved = AgentStore(db).save(spec)
        report.imported.append(f"agent {saved.name} v{saved.version}")
    elif kind == "prompt":
        store = PromptStore(db)
        for v in files["prompt.json"]["versions"]:
            p = store.save(v["name"], v["text"], description=v.get("description", ""),
                           test_inputs=v.get("test_inputs") or [])  # fmt: skip
            report.imported.append(f"prompt {p.name} v{p.version}")
    else:
        run = RunStore(db).import_run(files["run.json"], files["steps.json"])
        report.imported.append(f"run {run.id}")
    report.missing_models = missing_models(db, requires)
    return report
