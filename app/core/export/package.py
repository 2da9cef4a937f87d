"""Model packages: a portable ``.tar.gz`` of one library model for another workstation.

Layout inside the archive::

    manifest.json   the registry entry, file list (size, sha256), lineage, eval results
    MODEL_CARD.md   the same for people: metadata, lineage, evaluation, license
    SHA256SUMS      every other file
    model/...       the model's files (a GGUF file, or an HF/adapter folder)

:func:`import_package` extracts into a hidden folder of the workspace, checks
every checksum (and the manifest against them) *before* anything is
registered, then registers the model and restores its lineage. Parents are
recorded by id (with their sha256 and name in the edge details) even when
they are not in the receiving library.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import app
from app.core.errors import ConfigError, DemoAIError, NotFoundError
from app.core.export.checksums import SUMS_NAME, ChecksumError, check_sums, write_sums
from app.core.export.records import ExportStore, new_export_id
from app.core.models.registry import ModelRecord, ModelRegistry, folder_sha256
from app.core.store.files import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from app.core.jobs.context import JobContext
    from app.core.workspace.workspace import Workspace

PACKAGE_KIND = "demoai-model-package"
PACKAGE_VERSION = 1
ProgressFn = Any


@dataclass
class PackageResult:
    """What :func:`export_package` wrote."""

    export_id: str
    path: Path
    size_bytes: int
    model_id: str
    files: int


def _eval_results(ws: Workspace, model_id: str) -> list[dict[str, Any]]:
    """Rows about this model from any evaluation table that exists (none yet is fine)."""
    out: list[dict[str, Any]] = []
    tables = ws.db.query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'eval%'"
    )
    for t in tables:
        name = str(t["name"])
        cols = {c["name"] for c in ws.db.query(f'PRAGMA table_info("{name}")')}
        if "model_id" in cols:
            for row in ws.db.query(f'SELECT * FROM "{name}" WHERE model_id = ?', (model_id,)):
                out.append({"table": name, **row})
    return out


def _model_card(manifest: dict[str, Any]) -> str:
    m = manifest["model"]
    lines = [
        f"# {m['name']}",
        "",
        f"- id: `{m['id']}`",
        f"- format: {m['format']}",
        f"- architecture: {m.get('architecture') or 'unknown'}",
        f"- parameters: {m.get('parameters') or 'unknown'}",
        f"- quantization: {m.get('quantization') or 'none'}",
        f"- context length: {m.get('context_length') or 'unknown'}",
        f"- size: {m['size_bytes']} bytes, sha256 `{m['sha256']}`",
        f"- license: {m.get('license') or 'not stated: check with the model owner'}",
        "",
        "## Lineage",
        "",
    ]
    if manifest["lineage"]:
        for e in manifest["lineage"]:
            lines.append(
                f"- {e['relation']} `{e['parent_id']}` ({e.get('parent_name') or 'unknown'}"
                f", sha256 {e.get('parent_sha256') or 'unknown'})"
            )
    else:
        lines.append("- none recorded")
    lines += ["", "## Evaluation", ""]
    if manifest["evaluations"]:
        for ev in manifest["evaluations"]:
            lines.append("- " + ", ".join(f"{k}: {v}" for k, v in ev.items()))
    else:
        lines.append("- no evaluation results recorded")
    lines += [
        "",
        "## Files",
        "",
        *[f"- `model/{f['relpath']}` ({f['size']} bytes)" for f in manifest["files"]],
        "",
        f"Packaged by DemoAI {manifest['demoai_version']} on "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(manifest['created_at']))}.",
        "",
    ]
    return "\n".join(lines)


def build_manifest(ws: Workspace, rec: ModelRecord) -> dict[str, Any]:
    """The manifest of a package of ``rec``."""
    reg = ModelRegistry(ws)
    lineage = []
    for e in reg.lineage(rec.id).parents:
        parent_sha = None
        with contextlib.suppress(NotFoundError):
            parent_sha = reg.get(e.model_id).sha256
        lineage.append(
            {
                "parent_id": e.model_id,
                "parent_name": e.name,
                "parent_sha256": parent_sha or e.details.get("parent_sha256"),
                "relation": e.relation,
                "details": e.details,
            }
        )
    model = rec.to_dict()
    model.pop("path")
    return {
        "kind": PACKAGE_KIND,
        "format_version": PACKAGE_VERSION,
        "demoai_version": app.__version__,
        "created_at": time.time(),
        "model": model,
        "layout": "file" if rec.path.is_file() else "folder",
        "files": [f.__dict__ for f in reg.files(rec.id)],
        "lineage": lineage,
        "evaluations": _eval_results(ws, rec.id),
    }


def export_package(
    ws: Workspace, model: str, out_file: str | Path, *, progress: ProgressFn | None = None
) -> PackageResult:
    """Write a package of library model ``model`` to ``out_file`` (``.tar.gz``)."""
    reg = ModelRegistry(ws)
    store = ExportStore(ws)
    rec = reg.get(model)
    out = Path(out_file).expanduser().absolute()
    if out.exists():
        raise ConfigError(f"{out} already exists.", "Choose a new file name.")
    if not rec.path.exists():
        raise NotFoundError(f"The files of {rec.id} are missing ({rec.path}).")
    out.parent.mkdir(parents=True, exist_ok=True)
    export_id = new_export_id(rec.name, "package")
    store.start(export_id, "package", rec.id, path=out)
    stage = Path(tempfile.mkdtemp(prefix=".pkg-", dir=out.parent))
    tmp_tar = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        manifest = build_manifest(ws, rec)
        (stage / "model").mkdir()
        files = manifest["files"]
        for i, f in enumerate(files):
            src = rec.path if rec.path.is_file() else rec.path / f["relpath"]
            dst = stage / "model" / f["relpath"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            if progress is not None:
                progress((i + 1) / (len(files) + 1), f"copying {f['relpath']}")
        atomic_write_json(stage / "manifest.json", manifest)
        atomic_write_text(stage / "MODEL_CARD.md", _model_card(manifest))
        sums = write_sums(stage)
        for f in files:  # the files must still be what the registry recorded
            if sums[f"model/{f['relpath']}"] != f["sha256"]:
                raise DemoAIError(
                    f"{f['relpath']} of {rec.id} changed since it was imported.",
                    "Run `demoai jobs verify` (workspace verify) and re-import the model.",
                )
        with tarfile.open(tmp_tar, "w:gz") as tf:
            for rel in [SUMS_NAME, "manifest.json", "MODEL_CARD.md"]:
                tf.add(stage / rel, arcname=rel)
            tf.add(stage / "model", arcname="model")
        os.replace(tmp_tar, out)
        size = out.stat().st_size
        store.finish(export_id, ok=True, path=out, size_bytes=size)
        if progress is not None:
            progress(1.0, "package written")
        return PackageResult(export_id, out, size, rec.id, len(files))
    except BaseException as exc:
        store.finish(export_id, ok=False, error=str(exc) or type(exc).__name__)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        tmp_tar.unlink(missing_ok=True)


def is_package(path: str | Path) -> bool:
    """True when ``path`` is a tar archive with a DemoAI package manifest."""
    p = Path(path)
    if not p.is_file() or not tarfile.is_tarfile(p):
        return False
    try:
        with tarfile.open(p, "r:*") as tf:
            member = tf.getmember("manifest.json")
            fh = tf.extractfile(member)
            if fh is None:
                return False
            data = json.loads(fh.read(1 << 22))
    except (KeyError, OSError, ValueError, tarfile.TarError):
        return False
    return isinstance(data, dict) and data.get("kind") == PACKAGE_KIND


def _check_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """The manifest's file list must agree with the verified SHA256SUMS."""
    from app.core.export.checksums import read_sums
    from app.core.models.registry import ModelFile

    if manifest.get("kind") != PACKAGE_KIND:
        raise ChecksumError("This archive is not a DemoAI model package.")
    if int(manifest.get("format_version", 0)) > PACKAGE_VERSION:
        raise ConfigError("This package was made by a newer DemoAI.", "Update DemoAI to import it.")
    sums = read_sums(root / SUMS_NAME)
    listed = {f"model/{f['relpath']}": f["sha256"] for f in manifest["files"]}
    model_files = {k: v for k, v in sums.items() if k.startswith("model/")}
    if listed != model_files:
        raise ChecksumError(
            "The package's manifest does not match its SHA256SUMS.", "The package was altered."
        )
    files = [ModelFile(f["relpath"], int(f["size"]), f["sha256"]) for f in manifest["files"]]
    want = manifest["model"]["sha256"]
    got = files[0].sha256 if manifest["layout"] == "file" else folder_sha256(files)
    if got != want:
        raise ChecksumError("The package's model hash does not match its files.")


def import_package(ws: Workspace, file: str | Path, *, name: str | None = None) -> ModelRecord:
    """Verify a package completely, then register its model and restore its lineage.

    Raises :class:`ChecksumError` (nothing registered, nothing left behind) when
    any file was modified, added or removed.
    """
    src = Path(file).expanduser()
    if not is_package(src):
        raise ConfigError(f"{src} is not a DemoAI model package.")
    reg = ModelRegistry(ws)
    reg.models_dir.mkdir(parents=True, exist_ok=True)
    stage = reg.models_dir / f".package-{uuid.uuid4().hex[:12]}"
    stage.mkdir()
    try:
        with tarfile.open(src, "r:*") as tf:
            tf.extractall(stage, filter="data")
        check_sums(stage)
        manifest = json.loads((stage / "manifest.json").read_text(encoding="utf-8"))
        _check_manifest(stage, manifest)
        m = manifest["model"]
        target = stage / "model"
        if manifest["layout"] == "file":
            target = target / manifest["files"][0]["relpath"]
        extra = {"package": {"file": str(src.absolute()), "original_id": m["id"]}}
        rec = reg.adopt(
            target,
            name=name or m["name"],
            source_kind="local",
            source_ref=f"package:{src.name}",
            tags=m.get("tags") or [],
            extra=extra,
        )
        if m.get("notes"):
            rec = reg.update(rec.id, notes=m["notes"])
        with reg.db.transaction() as c:
            for e in manifest["lineage"]:
                details = dict(e.get("details") or {})
                details.setdefault("parent_sha256", e.get("parent_sha256"))
                details.setdefault("parent_name", e.get("parent_name"))
                if e["parent_id"] != rec.id:
                    # Parents may be absent from this library: record the edge by id anyway.
                    reg._insert_edge(c, rec.id, e["parent_id"], e["relation"], details)
        return reg.get(rec.id)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def export_package_job(ctx: JobContext, model: str, out_file: str) -> dict[str, Any]:
    """Job ``export.package``."""
    res = export_package(ctx.workspace, model, out_file, progress=ctx.progress)
    ctx.artifact("package", res.path)
    result = {"export_id": res.export_id, "path": str(res.path), "size_bytes": res.size_bytes}
    ctx.result(result)
    return result
