"""The document index behind semantic search: incremental embedding, safe cache, fused ranking.

The embedder here is a real, deterministic function (hashed character trigrams):
it lets the tests count exactly which texts were embedded. The real model path
(Gemma through the model host) is in tests/workers/test_agents_semantic.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from app.core.agents.builtin_tools import ToolContext, _walk_text_files, builtin_tool, chunk_text
from app.core.agents.docindex import DocumentIndex, fuse
from app.core.agents.spec import AgentSpec, ToolGrant
from app.core.errors import ConfigError


class TrigramEmbedder:
    """Bag of hashed character trigrams (64 dims); records every text it embeds."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> list[list[float]]:
        self.seen += texts
        out = []
        for t in texts:
            v = np.zeros(64)
            s = f"  {t.lower()}  "
            for i in range(len(s) - 2):
                v[int(hashlib.md5(s[i : i + 3].encode()).hexdigest(), 16) % 64] += 1
            out.append(v.tolist())
        return out


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "refunds.md").write_text("Refunds are paid within 30 days.\n\nKeep the receipt.")
    (d / "printers.txt").write_text("Printer toner is in room 3.")
    (d / "image.png").write_bytes(b"\x89PNG")  # not text: never embedded
    return d


def index_for(docs: Path, cache: Path, emb: TrigramEmbedder, model: str = "m1") -> DocumentIndex:
    return DocumentIndex(docs, cache, emb, model, files=_walk_text_files, chunker=chunk_text)


def test_refresh_embeds_only_what_changed(docs: Path, tmp_path: Path) -> None:
    cache, emb = tmp_path / "cache", TrigramEmbedder()
    idx = index_for(docs, cache, emb)
    stats = idx.refresh()
    assert (stats.files, stats.embedded_files, stats.chunks) == (2, 2, 2)
    assert sorted(emb.seen) == sorted(
        ["Refunds are paid within 30 days.\n\nKeep the receipt.", "Printer toner is in room 3."]
    )
    # A new process (new index object) reuses the cache: nothing embedded again.
    emb2 = TrigramEmbedder()
    again = index_for(docs, cache, emb2)
    assert again.refresh().embedded_files == 0 and emb2.seen == []
    assert again.labels == idx.labels and np.array_equal(again.vectors, idx.vectors)
    # Change one file, delete another: only the changed file is embedded.
    p = docs / "printers.txt"
    p.write_text("Printer toner is now in room 5.")
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    (docs / "refunds.md").unlink()
    stats = again.refresh()
    assert stats.embedded_files == 1 and emb2.seen == ["Printer toner is now in room 5."]
    assert again.labels == ["printers.txt#0"]
    # The cache is JSON + a plain .npy (no pickle anywhere).
    (folder,) = list(cache.iterdir())
    meta = json.loads((folder / "index.json").read_text())
    assert list(meta["files"]) == ["printers.txt"] and meta["model"] == "m1"
    assert np.load(folder / "vectors.npy", allow_pickle=False).shape == (1, 64)


def test_damaged_or_foreign_cache_is_rebuilt(docs: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    index_for(docs, cache, TrigramEmbedder()).refresh()
    (folder,) = list(cache.iterdir())
    (folder / "vectors.npy").write_bytes(b"garbage")
    emb = TrigramEmbedder()
    assert index_for(docs, cache, emb).refresh().embedded_files == 2
    # Another model gets its own index (never mixes vectors of two models).
    other = TrigramEmbedder()
    assert index_for(docs, cache, other, model="m2").refresh().embedded_files == 2
    assert len(list(cache.iterdir())) == 2


def test_fuse_rewards_agreement() -> None:
    # item 2 is found by both rankings, 1 and 3 by one each: 2 comes first
    fused = fuse([[1, 2], [2, 3]])
    assert [i for _, i in fused] == [2, 1, 3]
    assert fused[0][0] == pytest.approx(1 / 62 + 1 / 61)
    assert [i for _, i in fuse([[5, 6], []])] == [5, 6]


def test_search_documents_tool_with_embeddings(docs: Path, tmp_path: Path) -> None:
    emb = TrigramEmbedder()
    ctx = ToolContext(folder=docs, embed=emb, embedding_model="m1", index_dir=tmp_path / "ix")
    tool = builtin_tool("search_documents", ctx)
    assert "meaning" in tool.description and "m1" in tool.description
    hits = json.loads(tool.fn({"query": "refunds paid within days", "k": 2}))
    assert hits[0]["chunk"] == "refunds.md#0" and hits[0]["similarity"] > 0.5
    assert len(hits) == 2 and all({"chunk", "score", "similarity", "text"} <= set(h) for h in hits)
    n = len(emb.seen)
    json.loads(tool.fn({"query": "toner"}))
    assert len(emb.seen) == n + 1  # only the query was embedded the second time
    plain = builtin_tool("search_documents", ToolContext(folder=docs))
    assert "BM25" in plain.description and "meaning" not in plain.description


def test_embedding_model_grant() -> None:
    g = ToolGrant.from_obj({"name": "search_documents", "folder": "/d", "embedding_model": "e1"})
    spec = AgentSpec(name="a", tools=(g,))
    assert AgentSpec.from_dict(spec.to_dict()).tools[0].embedding_model == "e1"
    assert (
        "embedding_model"
        not in AgentSpec(name="b", tools=(ToolGrant("calculator"),)).to_dict()["tools"][0]
    )
    with pytest.raises(ConfigError, match="only search_documents"):
        ToolGrant("read_file", "/d", "e1")
    from app.core.agents.loop import agent_tools

    with pytest.raises(ConfigError, match="no model host"), agent_tools(spec):
        pass


def test_bundle_declares_the_embedding_model(workspace, tmp_path: Path) -> None:
    from app.core.agents import AgentStore, export_agent, import_bundle

    spec = AgentSpec(
        name="finder",
        model_id="chat-model",
        tools=(ToolGrant("search_documents", "/docs", embedding_model="embedder"),),
    )
    AgentStore(workspace.db).save(spec)
    out = export_agent(workspace.db, "finder", tmp_path / "b")
    meta = json.loads((out / "bundle.json").read_text())
    models = meta["requires"]["models"]
    assert {"id": "embedder", "sha256": None, "role": "embedding"} in models
    report = import_bundle(workspace.db, out)
    assert {m["id"] for m in report.missing_models} == {"chat-model", "embedder"}


def test_an_embedder_with_mixed_sizes_is_an_error_not_a_loop(docs: Path, tmp_path: Path) -> None:
    from app.core.agents.tools import ToolError

    sizes = iter(range(3, 100))

    def ragged(texts: list[str]) -> list[list[float]]:  # a new size on every call
        n = next(sizes)
        return [[1.0] * n for _ in texts]

    idx = DocumentIndex(
        docs, tmp_path / "c", ragged, "bad", files=_walk_text_files, chunker=chunk_text
    )
    with pytest.raises(ToolError, match="different sizes"):
        idx.refresh()
