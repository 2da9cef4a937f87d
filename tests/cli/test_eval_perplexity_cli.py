"""``demoai eval perplexity`` end to end: a job in a worker, stored as an eval run.

The values equal the library's reference computation (every position's logits,
log-softmax in float64: :class:`GGUFScorer` / :class:`HFScorer`), and the run reads
like any other in ``eval show / compare / export / gate``.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import pyarrow as pa
import pytest

from app.core.eval.perplexity import (
    GGUFScorer,
    HFScorer,
    llama_cpp_style_perplexity,
    sliding_window_perplexity,
)
from tests.support.cli import demoai
from tests.support.models import SAMPLE_TEXTS

_demoai = partial(demoai, timeout=600)

GEMMA_TEXT = (
    "The history of the printing press begins in the fifteenth century, when movable type "
    "made books cheaper and faster to produce. Within a few decades, presses spread across "
    "Europe, and the number of printed works grew from a handful to many thousands. "
    "Scholars, merchants and ordinary readers gained access to texts that had been rare. "
    "Rivers carry sediment from the mountains to the sea, building deltas where they slow. "
    "Farmers learned long ago that these plains are fertile, and cities grew beside them. "
) * 8


def _ws_with(tmp_path: Path, model: Path, rows: list[str] | None = None) -> tuple[Path, str, str]:
    """A workspace with ``model`` in its library (and a dataset of ``rows``): (dir, id, ds)."""
    from app.core.data.store import DatasetStore
    from app.core.models.registry import ModelRegistry
    from app.core.workspace import Workspace

    wsdir = tmp_path / "ws"
    ws = Workspace.open(wsdir)
    try:
        model_id = ModelRegistry(ws).import_path(model, copy=False).id
        ds = ""
        if rows is not None:
            ver = DatasetStore(ws).create_dataset(
                "corpus", pa.table({"text": rows, "n": [1] * len(rows)})
            )
            ds = f"{ver.dataset_id}@{ver.hash}"
    finally:
        ws.close()
    return wsdir, model_id, ds


def test_gguf_corpus_perplexity_cli(tmp_path: Path, gemma_gguf: Path) -> None:
    wsdir, model, _ = _ws_with(tmp_path, gemma_gguf)
    text = tmp_path / "corpus.txt"
    text.write_text(GEMMA_TEXT, encoding="utf-8")
    r = _demoai(
        wsdir, "eval", "perplexity", "--model", model, "--text", str(text),
        "--n-ctx", "128", "--threads", "2", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    run_id = out["run_id"]
    agg = out["aggregates"][model]["corpus_perplexity"]

    ref_scorer = GGUFScorer(gemma_gguf, n_ctx=128, threads=2)
    try:
        ref = llama_cpp_style_perplexity(ref_scorer, ref_scorer.tokenize(GEMMA_TEXT), n_ctx=128)
    finally:
        ref_scorer.close()
    assert agg["n"] == ref.windows == out["windows"][model]
    assert agg["value"] == pytest.approx(ref.perplexity, rel=1e-6)
    assert agg["ci_low"] < agg["value"] < agg["ci_high"]

    show = _demoai(wsdir, "eval", "show", run_id, "--samples", "--json")
    assert show.returncode == 0, show.stderr
    data = json.loads(show.stdout)
    assert data["run"]["state"] == "succeeded"
    assert data["run"]["metrics"] == ["corpus_perplexity"]
    assert data["run"]["dataset_ref"].startswith("text:corpus.txt@")
    samples = data["samples"]
    assert len(samples) == ref.windows
    assert sum(s["extra"]["n_tokens"] for s in samples) == ref.n_tokens
    nll = sum(s["extra"]["nll"] for s in samples)
    assert math.exp(nll / ref.n_tokens) == pytest.approx(agg["value"], rel=1e-12)
    shown = _demoai(wsdir, "eval", "show", run_id)
    assert "corpus_perplexity" in shown.stdout and "95% CI" in shown.stdout

    cmp_ = _demoai(wsdir, "eval", "compare", run_id, run_id, "--json")
    assert cmp_.returncode == 0, cmp_.stderr
    rows = json.loads(cmp_.stdout)
    assert len(rows) == 2 and rows[0]["metric"] == "corpus_perplexity"
    assert rows[0]["value"] == pytest.approx(agg["value"])

    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps({"corpus_perplexity": {"max": agg["value"] * 2}}))
    assert _demoai(wsdir, "eval", "gate", run_id, "--gate", str(gate)).returncode == 0
    gate.write_text(json.dumps({"corpus_perplexity": {"max": agg["value"] / 2}}))
    assert _demoai(wsdir, "eval", "gate", run_id, "--gate", str(gate)).returncode == 4

    csv_out = tmp_path / "ppl.csv"
    ex = _demoai(wsdir, "eval", "export", run_id, "--out", str(csv_out))
    assert ex.returncode == 0, ex.stderr
    assert len(csv_out.read_text().splitlines()) == ref.windows + 1

    short = tmp_path / "short.txt"
    short.write_text(GEMMA_TEXT[:300], encoding="utf-8")
    bad = _demoai(wsdir, "eval", "perplexity", "--model", model, "--text", str(short),
                  "--n-ctx", "128")  # fmt: skip
    assert bad.returncode == 2
    assert "too short" in bad.stderr and "needs at least 256" in bad.stderr
    ls = _demoai(wsdir, "eval", "list", "--json")
    assert len(json.loads(ls.stdout)) == 1  # no run (and no job) for the short text


def test_hf_corpus_perplexity_cli_on_a_dataset_column(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = list(SAMPLE_TEXTS) * 5
    wsdir, model, ds = _ws_with(tmp_path, tiny_llama_dir, rows)
    corpus = "\n\n".join(rows)
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    ref_scorer = HFScorer(hf, tok)
    tokens = ref_scorer.tokenize(corpus)
    for method, ref in (
        ("llama_cpp", llama_cpp_style_perplexity(ref_scorer, tokens, n_ctx=64)),
        ("sliding", sliding_window_perplexity(ref_scorer, tokens, context=64, stride=32)),
    ):
        args = ["--method", method] + (["--stride", "32"] if method == "sliding" else [])
        r = _demoai(
            wsdir, "eval", "perplexity", "--model", model, "--dataset", ds, "--column", "text",
            "--n-ctx", "64", "--threads", "2", *args, "--json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        agg = json.loads(r.stdout)["aggregates"][model]["corpus_perplexity"]
        assert agg["value"] == pytest.approx(ref.perplexity, rel=1e-5), method

    bad = _demoai(wsdir, "eval", "perplexity", "--model", model, "--dataset", ds,
                  "--column", "nope")  # fmt: skip
    assert bad.returncode == 2 and "columns are: text, n" in bad.stderr
    short = _demoai(wsdir, "eval", "perplexity", "--model", model, "--dataset", ds,
                    "--column", "text", "--n-ctx", "2048")  # fmt: skip
    assert short.returncode == 2 and "too short" in short.stderr
