"""Hugging Face Hub: search, list a repo's files, and the ``models.pull`` download job.

Every function here refuses to run while the workspace is offline. Downloads go
to a staging folder inside ``models/``; partial files are kept next to it (``*.parts``)
and resumed with HTTP range requests when the job runs again (``huggingface_hub``'s own
``hf_hub_download`` restarts from zero in a new process). Files are checked against the
repo's sizes and LFS sha256, and are then moved into the library.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError, DemoAIError
from app.core.store.files import sha256_file

if TYPE_CHECKING:
    from app.core.jobs.context import JobContext
    from app.core.workspace.workspace import Workspace

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


def require_online(ws: Workspace) -> None:
    """Raise OfflineError unless the user turned network on for this workspace."""
    if getattr(ws.settings, "offline", True):
        raise OfflineError(
            "Network is off: this workspace is in offline mode, so DemoAI makes no calls to "
            "the Hugging Face Hub.",
            "Turn network on in Settings (uncheck 'offline'), or set \"offline\": false in "
            f"{Path(ws.root) / 'settings.json'}; or copy the model here and use "
            "`demoai models import`.",
        )


def _hub_online(ws: Workspace) -> None:
    """Refuse when offline; otherwise let ``huggingface_hub`` make calls in this process.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import. When it was imported while
    the workspace was offline (the app started offline, then the user turned network on in
    Settings), it would keep refusing every request, so the flag follows the workspace here.
    """
    require_online(ws)
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = False


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


def search(ws: Workspace, query: str, limit: int = 20) -> list[dict[str, Any]]:
    """Models on the Hub matching ``query`` (id, downloads, likes, tags)."""
    _hub_online(ws)
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
    ws: Workspace, repo_id: str, revision: str | None = None
) -> tuple[str, list[RepoFile]]:
    """The commit sha a revision resolves to, and the repo's files with sizes and LFS sha256."""
    _hub_online(ws)
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
    if isinstance(exc, DemoAIError):
        return exc
    name = type(exc).__name__
    if "OfflineModeIsEnabled" in name:
        return OfflineError(
            "Network is off for the Hugging Face libraries (HF_HUB_OFFLINE is set).",
            "Turn network on in Settings and unset HF_HUB_OFFLINE.",
        )
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
    ctx: JobContext,
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
    _hub_online(ws)
    ctx.progress(None, f"Listing {repo_id}")
    commit, repo_files = list_repo_files(ws, repo_id, revision)
    chosen = _pick_files(repo_files, wanted)
    total = sum(f.size or 0 for f in chosen)
    key = f"{repo_id.replace('/', '--')}@{commit[:12]}"
    staging = ws.models_dir / ".staging" / key
    parts = ws.models_dir / ".staging" / f"{key}.parts"
    staging.mkdir(parents=True, exist_ok=True)

    done = 0
    for f in chosen:
        ctx.check_cancelled()
        local = staging / f.path
        if local.is_file() and _matches(local, f):
            ctx.log(f"{f.path}: already downloaded and verified")
        else:
            local.unlink(missing_ok=True)
            ctx.log(f"downloading {f.path} ({f.size if f.size is not None else '?'} bytes)")
            _download_file(ctx, repo_id, commit, f, parts / (f.path + ".part"), local, done, total)
        done += local.stat().st_size
    shutil.rmtree(parts, ignore_errors=True)
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


def _matches(local: Path, f: RepoFile) -> bool:
    """Whether a file from an earlier attempt is complete and intact."""
    if f.size is not None and local.stat().st_size != f.size:
        return False
    return f.sha256 is None or sha256_file(local) == f.sha256


def _download_file(
    ctx: JobContext,
    repo_id: str,
    commit: str,
    f: RepoFile,
    part: Path,
    dest: Path,
    done: int,
    total: int,
) -> None:
    """Download one file into ``part`` (resuming what is there), verify it, move it to ``dest``.

    Uses ``huggingface_hub``'s public pieces (URL, metadata, its shared HTTP session and error
    mapping) but streams the body itself: ``hf_hub_download`` writes to a temporary file unique
    to each call and deletes it on failure, so it could never resume a killed job.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants, get_hf_file_metadata, get_token, hf_hub_url

    from app.core.jobs.context import Cancelled, JobFailed

    url = hf_hub_url(repo_id, f.path, revision=commit)
    try:
        meta = get_hf_file_metadata(url)
    except Exception as exc:
        err = _hub_error(exc)
        raise JobFailed(err.message, err.hint) from exc
    expected = f.size if f.size is not None else meta.size
    location = meta.location or url
    headers: dict[str, str] = {}
    token = None if constants.HF_HUB_DISABLE_IMPLICIT_TOKEN else get_token()
    # A signed CDN URL needs no token, and the token stays on the Hub; on a redirect from
    # the Hub to another host the HTTP client drops it as well.
    if token and urlsplit(location).netloc == urlsplit(url).netloc:
        headers["authorization"] = f"Bearer {token}"
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if expected is not None and have > expected:
        part.unlink()
        have = 0
    if have:
        ctx.log(f"resuming {f.path} at {have} of {expected} bytes")
    progress = _ByteProgress(ctx, done, total)
    try:
        _stream_to_part(ctx, location, headers, part, expected, progress)
    except (Cancelled, JobFailed):
        raise
    except Exception as exc:
        err = _hub_error(exc)
        raise JobFailed(
            err.message, (err.hint or "") + " Resume the job to continue the download."
        ) from exc
    size = part.stat().st_size
    if expected is not None and size != expected:
        part.unlink(missing_ok=True)
        raise JobFailed(
            f"{f.path}: downloaded {size} bytes, the Hub lists {expected}.", "Run the pull again."
        )
    if f.sha256:
        ctx.progress(None, f"Verifying {f.path}")
        if sha256_file(part) != f.sha256:
            part.unlink(missing_ok=True)
            raise JobFailed(
                f"{f.path} failed its sha256 check against the Hub's LFS record.",
                "The download was damaged; run the pull again.",
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    part.replace(dest)


_CHUNK = 1024 * 1024  # written and checked for cancel one at a time
_RETRIES = 5  # dropped connections in a row (no new bytes) before the job fails


def _stream_to_part(
    ctx: JobContext,
    url: str,
    headers: dict[str, str],
    part: Path,
    expected: int | None,
    progress: _ByteProgress,
) -> None:
    """Append the rest of ``url`` to ``part`` with range requests, retrying dropped connections.

    Bytes already in ``part`` are asked for no more; a server that ignores the range (200
    instead of 206) starts the file over. Every chunk is on disk before the next is read, so
    a killed or cancelled job keeps what it had.
    """
    import time

    import httpx2
    from huggingface_hub import constants, get_session, hf_raise_for_status

    retries = _RETRIES
    while True:
        have = part.stat().st_size if part.exists() else 0
        if expected is not None and have == expected:
            return
        req = dict(headers)
        if have:
            req["Range"] = f"bytes={have}-"
        got = 0
        try:
            with get_session().stream(
                "GET", url, headers=req, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
            ) as resp:
                if resp.status_code == 416 and have:
                    total = resp.headers.get("Content-Range", "").rpartition("/")[2]
                    if total == str(have):  # the size was unknown and the file is complete
                        return
                    part.unlink()  # the file changed under us: start over
                    continue
                hf_raise_for_status(resp)
                mode = "ab"
                if have and resp.status_code != 206:
                    mode, have = "wb", 0  # range ignored: the body is the whole file
                elif have and not resp.headers.get("Content-Range", "").startswith(
                    f"bytes {have}-"
                ):
                    raise httpx2.RemoteProtocolError(
                        "the server answered a different range than asked"
                    )
                progress.start(have)
                with open(part, mode) as fh:
                    for chunk in resp.iter_bytes(chunk_size=_CHUNK):
                        fh.write(chunk)
                        got += len(chunk)
                        progress.advance(len(chunk))
                        if expected is not None and have + got > expected:
                            return  # more than the Hub lists: the size check rejects it
        except (httpx2.ConnectError, httpx2.TimeoutException, httpx2.RemoteProtocolError) as exc:
            retries = _RETRIES if got else retries - 1
            if retries <= 0:
                raise
            ctx.log(f"connection dropped ({exc}); resuming", "warning")
            time.sleep(1)
            continue
        if expected is None or have + got >= expected:
            return
        retries -= 1  # the body ended early without an error
        if retries <= 0:
            return  # the size check reports the short file


class _ByteProgress:
    """Turns bytes written into ``ctx.progress`` (at most twice a second) and checks for cancel."""

    def __init__(self, ctx: JobContext, done_before: int, total: int) -> None:
        self._ctx = ctx
        self._done_before = done_before
        self._total = total
        self._bytes = 0
        self._last = 0.0

    def start(self, kept: int) -> None:
        """A (re)started request: ``kept`` bytes of this file are already on disk."""
        self._bytes = kept

    def advance(self, n: int) -> None:
        """``n`` more bytes are on disk; stops the download here if the job was cancelled."""
        import time

        self._ctx.check_cancelled()  # the part file stays for a resume
        self._bytes += n
        now = time.monotonic()
        if self._total and now - self._last > 0.5:
            self._last = now
            fraction = min((self._done_before + self._bytes) / self._total, 1.0)
            self._ctx.progress(fraction, "Downloading")
