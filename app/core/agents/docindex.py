"""Semantic search of a document folder: chunk embeddings from a local model, cached on disk.

The ``search_documents`` tool ranks chunks by BM25 keywords; when the agent
grants it an embedding model, chunks are also embedded (through the model
host's ``/v1/embeddings``) and the two rankings are fused (reciprocal rank
fusion), so a question finds passages that use other words.

The index lives in ``<workspace>/agents/index/<key>/`` (key = folder + model):
``index.json`` (per file: modification time, size, chunk texts, rows) and
``vectors.npy`` (float32, loaded with ``allow_pickle=False``), both written
to a temporary name and renamed. A refresh re-embeds only changed files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.agents.tools import ToolError
from app.core.openai_client import ModelServerError, ModelServerUnreachable, OpenAIClient

Embedder = Callable[[list[str]], list[list[float]]]
INDEX_FORMAT = 1
#: Texts sent per embeddings request.
BATCH = 16
#: Reciprocal rank fusion constant (Cormack et al. 2009).
RRF_K = 60


class OpenAIEmbedder:
    """``POST {base_url}/embeddings`` for one model, through :class:`OpenAIClient`."""

    def __init__(self, base_url: str, api_key: str, model: str, timeout: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.model = model
        self.timeout = timeout

    def __call__(self, texts: list[str]) -> list[list[float]]:
        client = OpenAIClient(self.base_url, self.api_key, model=self.model, timeout=self.timeout)
        try:
            return client.embeddings(texts)
        except ModelServerUnreachable as exc:
            raise ToolError(f"Cannot reach the embedding model {self.model}: {exc}") from None
        except ModelServerError as exc:
            raise ToolError(f"The embedding model {self.model} failed: {exc}") from None


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _normalise(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    return m / np.where(norms == 0, 1.0, norms)


@dataclass
class RefreshStats:
    files: int
    embedded_files: int
    chunks: int


class DocumentIndex:
    """Chunk embeddings of the text files under ``root`` for one embedding model."""

    def __init__(
        self,
        root: Path,
        cache_root: Path,
        embed: Embedder,
        model_key: str,
        *,
        files: Callable[[Path], list[Path]],
        chunker: Callable[[str], list[str]],
    ) -> None:
        self.root = root.resolve()
        self.embed = embed
        self.model_key = model_key
        self.files = files
        self.chunker = chunker
        key = hashlib.sha256(f"{self.root}\0{model_key}".encode()).hexdigest()[:20]
        self.dir = cache_root / key
        self.labels: list[str] = []
        self.texts: list[str] = []
        self.vectors = np.zeros((0, 0), dtype=np.float32)

    # -- cache -------------------------------------------------------------------------
    def _load(self) -> tuple[dict[str, Any], np.ndarray]:
        meta_path, vec_path = self.dir / "index.json", self.dir / "vectors.npy"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            vectors = np.load(vec_path, allow_pickle=False)
        except (OSError, ValueError):
            return {}, np.zeros((0, 0), dtype=np.float32)
        ok = (
            meta.get("format") == INDEX_FORMAT
            and meta.get("model") == self.model_key
            and vectors.ndim == 2
            and vectors.shape[0] == sum(len(f["chunks"]) for f in meta.get("files", {}).values())
        )
        return (meta, vectors) if ok else ({}, np.zeros((0, 0), dtype=np.float32))

    def _save(self, files: dict[str, Any], vectors: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.dir / "vectors.npy", lambda fh: np.save(fh, vectors, allow_pickle=False))
        meta = {"format": INDEX_FORMAT, "model": self.model_key, "root": str(self.root),
                "files": files}  # fmt: skip
        _atomic_write(
            self.dir / "index.json", lambda fh: fh.write(json.dumps(meta).encode("utf-8"))
        )

    # -- building ----------------------------------------------------------------------
    def _embed_all(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for i in range(0, len(texts), BATCH):
            rows += self.embed(list(texts[i : i + BATCH]))
        return np.asarray(rows, dtype=np.float32)

    def refresh(self) -> RefreshStats:
        """Bring the index up to date with the folder (only changed files are embedded)."""
        meta, old_vectors = self._load()
        old_files: dict[str, Any] = meta.get("files", {})
        files: dict[str, Any] = {}
        parts: list[np.ndarray] = []
        labels: list[str] = []
        texts: list[str] = []
        embedded = 0
        row = 0
        for p in self.files(self.root):
            try:
                st = p.stat()
                rel = p.relative_to(self.root).as_posix()
            except (OSError, ValueError):
                continue
            prev = old_files.get(rel)
            if prev and prev["mtime_ns"] == st.st_mtime_ns and prev["size"] == st.st_size:
                chunks = prev["chunks"]
                vec = old_vectors[prev["row"] : prev["row"] + len(chunks)]
            else:
                try:
                    text = p.read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
                chunks = self.chunker(text)
                vec = self._embed_all(chunks) if chunks else np.zeros((0, 0), np.float32)
                embedded += 1
            files[rel] = {"mtime_ns": st.st_mtime_ns, "size": st.st_size,
                          "chunks": chunks, "row": row}  # fmt: skip
            if len(chunks):
                parts.append(vec)
            labels += [f"{rel}#{i}" for i in range(len(chunks))]
            texts += chunks
            row += len(chunks)
        dims = {v.shape[1] for v in parts}
        if len(dims) > 1:
            if not old_files:
                raise ToolError(
                    f"The embedding model {self.model_key} returned vectors of different sizes."
                )
            return self._rebuild()  # the model changed under the same name: start over
        vectors = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        if embedded or set(old_files) != set(files):
            self._save(files, vectors)
        self.labels, self.texts, self.vectors = labels, texts, vectors
        return RefreshStats(len(files), embedded, len(texts))

    def _rebuild(self) -> RefreshStats:
        for name in ("index.json", "vectors.npy"):
            with contextlib.suppress(OSError):
                (self.dir / name).unlink()
        return self.refresh()

    # -- searching ---------------------------------------------------------------------
    def semantic(self, query: str) -> list[tuple[float, int]]:
        """(cosine similarity, chunk number) for every chunk, best first."""
        if not self.texts:
            return []
        q = _normalise(np.asarray(self.embed([query])[0], dtype=np.float32))
        sims = _normalise(self.vectors) @ q
        order = np.argsort(-sims, kind="stable")
        return [(float(sims[i]), int(i)) for i in order]


def fuse(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[float, int]]:
    """Reciprocal rank fusion of several rankings of item numbers; best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank + 1)
    return sorted(((s, i) for i, s in scores.items()), key=lambda x: (-x[0], x[1]))
