"""Hugging Face Hub: search, list a repo's files, and the ``models.pull`` download job.

Every function here refuses to run while the workspace is offline. Downloads go
to a staging folder inside ``models/`` (``huggingface_hub`` resumes partial
files there), are checked against the repo's sizes and LFS sha256, and are then
moved into the library.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from app.core.errors import ConfigError, DemoAIError
from app.core.store.files import sha256_file

_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}/[\w.\-]{1,96}$")
_REV_RE = re.compile(r"^[\w.\-/]{1,128}$")
_WEIGHT_EXTS = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt")


class OfflineError(DemoAIError):
    """The workspace is offline, so the Hub cannot be reached."""


@dataclass
class RepoFile:
    """One file of a Hub repo."""

    path: str
    size: int | None
    sha256: str | None  # LFS sha256 when the file is stored with LFS

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def require_online(ws: Any) -> None:
    """Raise OfflineError unless the user turned network on for this workspace."""
    if getattr(ws.settings, "offline", True):
        raise OfflineError(
            "Network is off: this workspace is in offline mode, so DemoAI makes no calls to "
            "the Hugging Face Hub.",
            "Turn network on in Settings (uncheck 'offline'), or set \"offline\": false in "
            f"{Path(ws.root) / 'settings.json'}; or copy the model here and use "
            "`demoai models import`.",
        )


def validate_pull_params(
    repo_id: str, files: Sequence[str] | None = None, revision: str | None = None
) -> list[str] | None:
    """Check a pull's arguments before anything starts; returns the cleaned file list."""
    if not isinstance(repo_id, str) or not _REPO_RE.match(repo_id) or ".." in repo_id:
        raise ConfigError(
            f"'{repo_id}' is not a Hub model id.", "Use the form 'organisation/name'."
        )
    if revision is not None and (not _REV_RE.match(revision) or ".." in revision):
        raise ConfigError(f"'{revision}' is not a valid revision (branch, tag or commit).")
    if files is None:
        return None
    if isinstance(files, str) or not all(isinstance(f, str) for f in files):
        raise ConfigError("files must be a list of file paths inside the repo.")
    cleaned: list[str] = []
    for f in files:
        pp = PurePosixPath(f.replace("\\", "/"))
        if not f or pp.is_absolute() or ".." in pp.parts or str(pp) in (".", ""):
            raise ConfigError(f"'{f}' is not a file path inside the repo.")
        cleaned.append(str(pp))
    if not cleaned:
        raise ConfigError("No files were selected.", "Pick at least one file, or leave files out.")
    return sorted(set(cleaned))


def search(ws: Any, query: str, limit: int = 20) -> list[dict[str, Any]]:
    """Models on the Hub matching ``query`` (id, downloads, likes, tags)."""
    require_online(ws)
    from huggingface_hub import HfApi

    try:
        found = HfApi().list_models(search=query, limit=limit, sort="downloads")
        return [
            {
                "id": m.id,
                "downloads": getattr(m, "downloads", None),
                "likes": getattr(m, "likes", None),
                "tags": list(getattr(m, "tags", None) or []),
                "last_modified": str(getattr(m, "last_modified", "") or ""),
            }
            for m in found
        ]
    except Exception as exc:
        raise _hub_error(exc) from exc


def list_repo_files(
    ws: Any, repo_id: str, revision: str | None = None
) -> tuple[str, list[RepoFile]]:
    """The commit sha a revision resolves to, and the repo's files with sizes and LFS sha256."""
    require_online(ws)
    validate_pull_params(repo_id, None, revision)
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:
        raise _hub_error(exc) from exc
    files = []
    for s in info.siblings or []:
        lfs = getattr(s, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        if isinstance(lfs, dict):
            sha = lfs.get("sha256")
        files.append(RepoFile(s.rfilename, getattr(s, "size", None), sha))
    return str(info.sha or revision or "main"), files


def _hub_error(exc: Exception) -> DemoAIError:
    name = type(exc).__name__
    if "RepositoryNotFound" in name or "RevisionNotFound" in name or "EntryNotFound" in name:
        return DemoAIError(
            f"Not found on the Hub: {exc}", "Check the repo id, revision and file names."
        )
    if "GatedRepo" in name:
        return DemoAIError(
            f"This repo is gated: {exc}",
            "Accept its licence on huggingface.co and log in with `hf auth login`.",
        )
    return DemoAIError(f"The Hugging Face Hub could not be reached: {exc}", "Check the network.")


def _pick_files(files: list[RepoFile], wanted: list[str] | None) -> list[RepoFile]:
    by_path = {f.path: f for f in files}
    if wanted is not None:
        missing = [w for w in wanted if w not in by_path]
        if missing:
            raise ConfigError(
                f"Not in the repo: {', '.join(missing)}.", "See the file list of the repo."
            )
        chosen = [by_path[w] for w in wanted]
    else:
        ggufs = [f for f in files if f.path.endswith(".gguf")]
        if ggufs and len(ggufs) > 1:
            raise ConfigError(
                f"The repo has {len(ggufs)} GGUF files; pick one.",
                "Pass --file NAME.gguf (files=[...]), e.g. " + ggufs[0].path,
            )
        chosen = ggufs or [
            f
            for f in files
            if not f.path.endswith((".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx"))
        ]
    ggufs = [f for f in chosen if f.path.endswith(".gguf")]
    if ggufs and len(chosen) > 1:
        raise ConfigError("Pick either one GGUF file or the files of an HF folder, not both.")
    return chosen


def pull_model(
    ctx: Any,
    repo_id: str,
    files: list[str] | None = None,
    revision: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Job ``models.pull``: download files of a Hub repo, verify them and register the model."""
    from app.core.jobs.context import JobFailed
    from app.core.models.registry import ModelRegistry

    wanted = validate_pull_params(repo_id, files, revision)
    ws = ctx.workspace
    require_online(ws)
    ctx.progress(None, f"Listing {repo_id}")
    commit, repo_files = list_repo_files(ws, repo_id, revision)
    chosen = _pick_files(repo_files, wanted)
    total = sum(f.size or 0 for f in chosen)
    staging = ws.models_dir / ".staging" / f"{repo_id.replace('/', '--')}@{commit[:12]}"
    staging.mkdir(parents=True, exist_ok=True)
    from huggingface_hub import hf_hub_download

    done = 0
    tqdm_class = _progress_tqdm(ctx, lambda: done, total)
    for f in chosen:
        ctx.check_cancelled()
        ctx.log(f"downloading {f.path} ({f.size or '?'} bytes)")
        try:
            hf_hub_download(
                repo_id, f.path, revision=commit, local_dir=staging, tqdm_class=tqdm_class
            )
        except Exception as exc:
            err = _hub_error(exc)
            raise JobFailed(err.message, err.hint) from exc
        local = staging / f.path
        size = local.stat().st_size
        if f.size is not None and size != f.size:
            local.unlink(missing_ok=True)
            raise JobFailed(
                f"{f.path}: downloaded {size} bytes, the Hub lists {f.size}.", "Run the pull again."
            )
        if f.sha256:
            ctx.progress(None, f"Verifying {f.path}")
            if sha256_file(local) != f.sha256:
                local.unlink(missing_ok=True)
                raise JobFailed(
                    f"{f.path} failed its sha256 check against the Hub's LFS record.",
                    "The download was damaged; run the pull again.",
                )
        done += size
    shutil.rmtree(staging / ".cache", ignore_errors=True)
    reg = ModelRegistry(ws)
    ref = f"{repo_id}@{commit}"
    try:
        if len(chosen) == 1 and chosen[0].path.endswith(".gguf"):
            rec = reg.adopt(staging / chosen[0].path, name=name, source_ref=ref)
        else:
            rec = reg.adopt(staging, name=name or repo_id, source_ref=ref)
    except DemoAIError as exc:
        raise JobFailed(exc.message, exc.hint) from exc
    shutil.rmtree(staging, ignore_errors=True)
    ctx.artifact("model", rec.path)
    result = {"model_id": rec.id, "name": rec.name, "source_ref": ref, "size_bytes": rec.size_bytes}
    ctx.result(result)
    return result


def _progress_tqdm(ctx: Any, done_before: Any, total: int) -> Any:
    """A silent tqdm class that turns huggingface_hub's byte counts into ``ctx.progress``."""
    import time

    from tqdm.auto import tqdm

    class _Tqdm(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._bytes = 0.0
            self._last = 0.0

        def update(self, n: float | None = 1) -> bool | None:
            self._bytes += n or 0
            now = time.monotonic()
            if total and now - self._last > 0.5:
                self._last = now
                ctx.progress(min((done_before() + self._bytes) / total, 1.0), "Downloading")
            out: bool | None = super().update(n)
            return out

    return _Tqdm
