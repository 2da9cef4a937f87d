"""Semantic document search for real: Gemma GGUF embeddings through the model host.

``demoai agent run`` (a real process) starts the model host for the agent's
model and its search tool's embedding model, the tool embeds the granted
folder's chunks through ``/v1/embeddings``, and a second run reuses the
on-disk index (only the query is embedded again).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from app.core.agents import AgentSpec, AgentStore, Limits, ToolGrant
from app.core.agents.docindex import OpenAIEmbedder
from app.core.models.registry import ModelRegistry
from app.core.workspace import Workspace
from app.workers.host_client import HostProcess

DOCS = {
    "refunds.md": "Refund policy: purchases can be sent back within 30 days for a full refund.",
    "printers.txt": "The printers on the third floor are out of toner until Monday.",
    "holidays.txt": "The office is closed on December 25 and January 1.",
}


def test_gguf_embeddings_through_the_host(gemma_gguf: Path) -> None:
    with HostProcess(threads=2, n_ctx=512) as host:
        host.start({"gemma": (gemma_gguf, "gguf")})
        emb = OpenAIEmbedder(host.base_url, host.token, "gemma")
        a, b, c = (np.array(v) for v in emb([DOCS["refunds.md"], DOCS["printers.txt"],
                                             DOCS["refunds.md"]]))  # fmt: skip
    assert a.shape == (640,) and np.all(np.isfinite(a))
    cos = float(a @ c / np.linalg.norm(a) / np.linalg.norm(c))
    assert cos > 0.9999  # the same text, the same vector (batching does not change it)
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) < 0.99


def _embedding_requests(ws: Path) -> int:
    log = ws / "logs" / "requests.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return sum(1 for line in lines if json.loads(line)["path"] == "/v1/embeddings")


def test_agent_searches_documents_by_meaning(tmp_path: Path, gemma_gguf: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    ws_dir = tmp_path / "ws"
    ws = Workspace.open(ws_dir)
    model = ModelRegistry(ws).import_path(gemma_gguf, copy=False).id
    AgentStore(ws.db).save(
        AgentSpec(
            name="helpdesk",
            model_id=model,
            system_prompt="You answer questions from the company documents.",
            sampling={"temperature": 0.0, "seed": 1},
            tools=(ToolGrant("search_documents", str(docs), embedding_model=model),),
            limits=Limits(max_steps=1, max_tokens=64, timeout_s=600),
        )
    )
    ws.close()

    def run() -> dict:
        r = subprocess.run(
            [sys.executable, "-m", "app", "--workspace", str(ws_dir), "agent", "run", "helpdesk",
             "--input", "Search the documents: can I return something I bought?",
             "--approve-all-read-only", "--json", "--n-ctx", "2048"],
            capture_output=True, text=True, timeout=600, env=dict(os.environ),
        )  # fmt: skip
        assert r.stdout, r.stderr
        return json.loads(r.stdout)

    first = run()
    results = [s for s in first["steps"] if s["kind"] == "tool_result"]
    assert results, [(s["kind"], s["content"][:200]) for s in first["steps"]]
    assert results[0]["tool"] == "search_documents" and not results[0]["data"]["error"]
    hits = json.loads(results[0]["content"])
    assert {h["chunk"] for h in hits} == {f"{n}#0" for n in DOCS}
    assert all(-1.0 <= h["similarity"] <= 1.0 for h in hits)
    (index,) = list((ws_dir / "agents" / "index").iterdir())
    meta = json.loads((index / "index.json").read_text())
    assert sorted(meta["files"]) == sorted(DOCS) and meta["model"] == model
    n_first = _embedding_requests(ws_dir)
    assert n_first >= 2  # the chunks, then the query

    second = run()
    assert [s["kind"] for s in second["steps"]] == [s["kind"] for s in first["steps"]]
    assert _embedding_requests(ws_dir) - n_first == 1  # the cached index: only the query
