"""A local imitation of the Hugging Face Hub HTTP API, for download tests without network.

It serves, on 127.0.0.1, the endpoints that ``huggingface_hub`` 2.4 calls:

- ``GET /api/models?search=&limit=&sort=`` (``HfApi.list_models``)
- ``GET /api/models/{repo}[/revision/{rev}][?blobs=true]`` (``HfApi.model_info``; with
  ``blobs`` the siblings carry ``size``, ``blobId`` and ``lfs`` {sha256, size, pointerSize})
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``HfApi.list_repo_tree``)
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (``hf_hub_download``, ``get_hf_file_metadata``):
  ``X-Repo-Commit``, ``ETag`` (git blob sha1), and for LFS files ``X-Linked-Etag`` (sha256) and
  ``X-Linked-Size``; ``Content-Length``, ``Accept-Ranges`` and ``Range`` requests (206 with
  ``Content-Range``), so interrupted downloads can resume.

Errors use the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``) so ``huggingface_hub`` raises its usual exceptions.

A file can be served differently from what the API advertises (``served=``: damaged bytes),
slowly (``chunk_delay=``), with a connection that drops once after some bytes (``drop_after=``),
or, like the Hub's LFS files, through a redirect to a second server on another port standing
for the CDN (``cdn=True``), to test verification, resume and where the token is sent. Every
request's ``Authorization`` header is recorded by host in ``FakeHub.auth``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

_CHUNK = 64 * 1024


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub uses as ETag for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeFile:
    path: str
    data: bytes
    lfs: bool
    served: bytes | None = None  # bytes actually sent (damaged download); default: data
    chunk_delay: float = 0.0  # seconds to sleep between 64 KiB chunks
    drop_after: int | None = None  # close the connection once after sending this many bytes
    cdn: bool = False  # the Hub answers 302 to the fake CDN, as for LFS files on huggingface.co

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def body(self) -> bytes:
        return self.data if self.served is None else self.served


@dataclass
class FakeRepo:
    repo_id: str
    sha: str
    files: dict[str, FakeFile]
    tags: list[str] = field(default_factory=list)
    downloads: int = 0
    likes: int = 0

    def sibling(self, f: FakeFile, blobs: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"rfilename": f.path}
        if blobs:
            out["size"] = len(f.data)
            out["blobId"] = git_blob_sha1(f.data)
            if f.lfs:
                out["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}
        return out


class FakeHub:
    """Holds the repos and runs the HTTP server; ``url`` is the endpoint to use as HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.auth: list[tuple[str, str, str | None]] = []  # (host, path, Authorization header)
        self._lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            fake = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.cdn_server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.cdn_server.daemon_threads = True
        self.cdn_url = f"http://127.0.0.1:{self.cdn_server.server_address[1]}"
        self._threads = [
            threading.Thread(target=s.serve_forever, daemon=True)
            for s in (self.server, self.cdn_server)
        ]

    def start(self) -> FakeHub:
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        for s in (self.server, self.cdn_server):
            s.shutdown()
            s.server_close()

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | Path],
        *,
        tags: list[str] | None = None,
        downloads: int = 0,
        lfs: set[str] | None = None,
    ) -> FakeRepo:
        """Add a repo; files are bytes or paths to read. LFS: weights and anything over 10 KiB."""
        entries: dict[str, FakeFile] = {}
        for path, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            is_lfs = (
                path in lfs
                if lfs is not None
                else (
                    path.endswith((".gguf", ".safetensors", ".bin", ".model")) or len(data) > 10_240
                )
            )
            entries[path] = FakeFile(path, data, is_lfs)
        repo = FakeRepo(repo_id, secrets.token_hex(20), entries, tags or [], downloads)
        self.repos[repo_id] = repo
        return repo

    def requests_for(self, suffix: str) -> list[tuple[str, str, str | None]]:
        with self._lock:
            return [r for r in self.requests if r[1].endswith(suffix)]

    def auth_for(self, host: str) -> list[str | None]:
        """The Authorization headers sent to ``host`` (``self.url`` or ``self.cdn_url``)."""
        with self._lock:
            return [a for h, _, a in self.auth if h == host]

    def _record(self, host: str, method: str, path: str, rng: str | None, auth: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, rng))
            self.auth.append((host, path, auth))


_API_RE = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)"
    r"(?:/revision/(?P<rev>[^/]+)|/tree/(?P<tree_rev>[^/]+)(?:/(?P<tree_path>.*))?)?$"
)
_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN_RE = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<rev>[^/]+)/(?P<path>.+)$")
_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- helpers ---------------------------------------------------------------------------
    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self._send(200, {"Content-Type": "application/json", **(headers or {})}, body)

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        headers = {
            "Content-Type": "application/json",
            "X-Error-Code": code,
            "X-Error-Message": message,
        }
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, headers, json.dumps({"error": message}).encode())

    def _repo(self, repo_id: str) -> FakeRepo | None:
        repo = self.fake.repos.get(unquote(repo_id))
        if repo is None:
            self._error(
                401,
                "RepoNotFound",
                "Repository not found",
            )
        return repo

    def _rev_ok(self, repo: FakeRepo, rev: str | None) -> bool:
        rev = unquote(rev or "main")
        if rev in ("main", repo.sha):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return False

    # -- verbs -----------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        on_cdn = self.server is self.fake.cdn_server
        self.fake._record(
            self.fake.cdn_url if on_cdn else self.fake.url,
            self.command,
            parts.path,
            self.headers.get("Range"),
            self.headers.get("Authorization"),
        )
        query = parse_qs(parts.query)
        try:
            if on_cdn:
                if m := _CDN_RE.match(parts.path):
                    self._resolve(m["repo"], m["rev"], unquote(m["path"]), on_cdn=True)
                else:
                    self._error(404, "NotFound", f"no route {parts.path}")
            elif parts.path == "/api/models":
                self._list_models(query)
            elif m := _API_RE.match(parts.path):
                if m["tree_rev"] is not None:
                    self._tree(m["repo"], m["tree_rev"], m["tree_path"] or "")
                else:
                    self._model_info(m["repo"], m["rev"], query)
            elif m := _RESOLVE_RE.match(parts.path):
                self._resolve(m["repo"], m["rev"], unquote(m["path"]))
            else:
                self._error(404, "NotFound", f"no route {parts.path}")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a killed download)

    def _list_models(self, query: dict[str, list[str]]) -> None:
        search = (query.get("search") or [""])[0].lower()
        limit = int((query.get("limit") or ["1000"])[0])
        found = [r for r in self.fake.repos.values() if search in r.repo_id.lower()]
        found.sort(key=lambda r: r.downloads, reverse=True)
        self._json(
            [
                {
                    "id": r.repo_id,
                    "modelId": r.repo_id,
                    "downloads": r.downloads,
                    "likes": r.likes,
                    "tags": r.tags,
                    "private": False,
                    "createdAt": "2025-01-01T00:00:00.000Z",
                }
                for r in found[:limit]
            ]
        )

    def _model_info(self, repo_id: str, rev: str | None, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._rev_ok(repo, rev):
            return
        blobs = (query.get("blobs") or ["false"])[0].lower() == "true"
        self._json(
            {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": repo.sha,
                "private": False,
                "downloads": repo.downloads,
                "likes": repo.likes,
                "tags": repo.tags,
                "lastModified": "2025-01-01T00:00:00.000Z",
                "siblings": [repo.sibling(f, blobs) for f in repo.files.values()],
            }
        )

    def _tree(self, repo_id: str, rev: str, path: str) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._rev_ok(repo, rev):
            return
        prefix = unquote(path).strip("/")
        out: list[dict[str, Any]] = []
        for f in repo.files.values():
            if prefix and not f.path.startswith(prefix + "/"):
                continue
            entry: dict[str, Any] = {
                "type": "file",
                "path": f.path,
                "size": len(f.data),
                "oid": git_blob_sha1(f.data),
            }
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
            out.append(entry)
        self._json(out)

    def _resolve(self, repo_id: str, rev: str, path: str, on_cdn: bool = False) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._rev_ok(repo, rev):
            return
        f = repo.files.get(path)
        if f is None:
            self._error(404, "EntryNotFound", f"{path} does not exist", commit=repo.sha)
            return
        body = f.body
        linked = {}
        if f.lfs:
            linked["X-Linked-Etag"] = f'"{f.sha256}"'
            linked["X-Linked-Size"] = str(len(f.data))
        if f.cdn and not on_cdn:  # a signed URL on another host, as the Hub does for LFS files
            location = f"{self.fake.cdn_url}/cdn/{repo.repo_id}/{repo.sha}/{path}?sig=fake"
            self._send(302, {"X-Repo-Commit": repo.sha, "Location": location, **linked})
            return
        headers = {
            "X-Repo-Commit": repo.sha,
            "ETag": f'"{git_blob_sha1(f.data)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{Path(path).name}";',
            **linked,
        }
        start, end, status = 0, len(body) - 1, 200
        rng = self.headers.get("Range")
        if rng and (m := _RANGE_RE.match(rng.strip())):
            start = int(m[1])
            end = min(int(m[2]), len(body) - 1) if m[2] else len(body) - 1
            if start >= len(body):
                self._send(416, {"Content-Range": f"bytes */{len(body)}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
        headers["Content-Length"] = str(end - start + 1)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        drop_after, f.drop_after = f.drop_after, None
        sent = 0
        for chunk in _chunks(body, start, end + 1):
            if drop_after is not None and sent + len(chunk) >= drop_after:
                self.wfile.write(chunk[: drop_after - sent])
                self.wfile.flush()
                self.close_connection = True  # the rest of the promised body never comes
                return
            self.wfile.write(chunk)
            sent += len(chunk)
            if f.chunk_delay:
                self.wfile.flush()
                time.sleep(f.chunk_delay)


def _chunks(data: bytes, start: int, stop: int) -> Iterator[bytes]:
    for i in range(start, stop, _CHUNK):
        yield data[i : min(i + _CHUNK, stop)]


def tiny_gguf_bytes(
    tmp_dir: Path, *, name: str = "tiny", extra_floats: int = 64, seed: int = 0
) -> bytes:
    """A small valid GGUF (llama architecture, one F32 tensor), written with ``gguf.GGUFWriter``."""
    import gguf
    import numpy as np

    path = Path(tmp_dir) / f"{name}-{seed}-{extra_floats}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(256)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_head_count(2)
    w.add_file_type(0)  # all F32
    rng = np.random.default_rng(seed)
    w.add_tensor("token_embd.weight", rng.standard_normal(extra_floats, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@pytest.fixture(name="fake_hub")
def fake_hub_fixture(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FakeHub]:
    """A running :class:`FakeHub`; ``huggingface_hub`` here and in worker processes points at it.

    The offline variables and ``huggingface_hub.constants`` are restored afterwards, since a
    workspace that goes online removes them from ``os.environ``.
    """
    import os

    import huggingface_hub.constants as hf_constants

    hub = FakeHub().start()
    for var in _OFFLINE_ENV:  # recorded now so that teardown puts them back
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", hf_constants.HF_HUB_OFFLINE)
    try:
        yield hub
    finally:
        hub.close()


def go_online(ws: Any) -> None:
    """Turn network on for a workspace (as the Settings dialog does)."""
    import dataclasses

    ws.save_settings(dataclasses.replace(ws.settings, offline=False))
