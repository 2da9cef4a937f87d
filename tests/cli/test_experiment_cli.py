"""``demoai experiment``: a control and two variants (LoRA ranks 4, 8, 16) as pipeline runs;
the comparison shows only the rank, and every figure of the HTML report equals the
stored metrics and loss curves of its runs."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import yaml

from app.core.eval.runner import EvalStore
from app.core.workspace import Workspace
from tests.support.cli import demoai
from tests.support.training import add_tiny_model_and_echo_data, one_train_thread  # noqa: F401


def _spec(rank: int) -> dict[str, Any]:
    return {
        "name": "ranks",
        "inputs": {"data": {"dataset": "echo"}, "base": {"model": "tiny"}},
        "steps": [
            {"id": "prep", "kind": "recipe", "data": "data", "recipe": [{"name": "dedupe"}]},
            {
                "id": "train",
                "kind": "train",
                "base": "base",
                "data": "prep",
                "config": {
                    "preset": "quick_test",
                    "max_steps": 8,
                    "batch_size": 2,
                    "max_seq_len": 64,
                    "device": "cpu",
                    "seed": 3,
                    "lora_rank": rank,
                },
            },
            {
                "id": "eval",
                "kind": "eval",
                "model": "train",
                "data": "prep",
                "config": {
                    "input_column": "prompt",
                    "reference_column": "completion",
                    "metrics": ["perplexity"],
                    "max_tokens": 2,
                    "threads": 1,
                    "bootstrap": 200,
                },
            },
        ],
    }


class _Figures(HTMLParser):
    """Every element with data-value / data-values in the page."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.bars: list[dict[str, str]] = []
        self.whiskers: list[dict[str, str]] = []
        self.lines: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "td" and "data-value" in a:
            self.cells.append(a)
        elif tag == "rect" and "data-value" in a:
            self.bars.append(a)
        elif tag == "line" and "data-ci-low" in a:
            self.whiskers.append(a)
        elif tag == "polyline":
            self.lines.append(a)


def test_control_and_two_ranks_compared_and_reported(tiny_llama_dir: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    w = Workspace.open(ws)
    add_tiny_model_and_echo_data(w, tiny_llama_dir, repeats=3)
    w.close()
    runs: dict[int, str] = {}
    for rank in (4, 8, 16):
        f = tmp_path / f"r{rank}.yaml"
        f.write_text(yaml.safe_dump(_spec(rank)))
        assert demoai(ws, "pipeline", "create", str(f)).returncode == 0
        res = demoai(ws, "pipeline", "run", "ranks", "--json", timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[rank] = json.loads(res.stdout)["run"]["id"]
    assert demoai(ws, "experiment", "create", "ranks", "--description", "LoRA rank").returncode == 0
    assert (
        demoai(ws, "experiment", "add", "ranks", runs[4], "--control", "--label", "r4").returncode
        == 0
    )
    for rank in (8, 16):
        assert (
            demoai(ws, "experiment", "add", "ranks", runs[rank], "--label", f"r{rank}").returncode
            == 0
        )
    bad = demoai(ws, "experiment", "add", "ranks", "no-such-run")
    assert bad.returncode == 2 and "is not a pipeline run" in bad.stderr

    cmp = json.loads(demoai(ws, "experiment", "compare", "ranks", "--json").stdout)
    assert cmp["control"] == "r4" and [m["label"] for m in cmp["members"]] == ["r4", "r8", "r16"]
    assert cmp["differing_config"] == {"lora_rank": [4, 8, 16]}  # only what differs
    text = demoai(ws, "experiment", "compare", "ranks").stdout
    assert "lora_rank" in text and "seed" not in text and "perplexity" in text

    # The stored figures: eval aggregates per run, final losses and curves per training job.
    w = Workspace.open(ws)
    stored: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[list[float]]] = {}
    try:
        from app.core.runs.store import PipelineStore

        for rank, rid in runs.items():
            run = PipelineStore(w).get_run(rid)
            ev = run.snapshot["steps"]["eval"]["output"]
            stored[f"r{rank}"] = EvalStore(w).aggregates(ev["run_id"])[ev["model_id"]]
            manifest = Path(run.snapshot["steps"]["train"]["output"]["manifest"])
            hist = json.loads((manifest.parent / "history.json").read_text())
            curves[f"r{rank}"] = [[h["step"], h["train_loss"]] for h in hist]
            final = json.loads(manifest.read_text())["metrics"]["train_loss"]
            stored[f"r{rank}"]["train_loss"] = {"value": final, "ci_low": None, "ci_high": None}
    finally:
        w.close()
    ppl = {r["label"]: r for r in cmp["metrics"]["perplexity"]}
    assert (
        ppl["r8"]["delta"]
        == stored["r8"]["perplexity"]["value"] - stored["r4"]["perplexity"]["value"]
    )
    assert len({ppl[k]["value"] for k in ppl}) == 3  # the ranks really trained differently

    out = tmp_path / "report.html"
    assert demoai(ws, "experiment", "report", "ranks", "--out", str(out)).returncode == 0
    page = out.read_text(encoding="utf-8")
    assert "<link" not in page and "src=" not in page  # self-contained
    figs = _Figures()
    figs.feed(page)
    # Every table cell and every bar carries a stored value, exactly.
    assert len(figs.cells) == 3 * 2 and len(figs.bars) == 3 * 2
    for el in figs.cells + figs.bars:
        want = stored[el["data-label"]][el["data-metric"]]["value"]
        assert float(el["data-value"]) == want, el
    assert len(figs.whiskers) == 3  # CIs: perplexity only (final losses have none)
    for el, label in zip(figs.whiskers, ("r4", "r8", "r16"), strict=True):
        assert float(el["data-ci-low"]) == stored[label]["perplexity"]["ci_low"]
        assert float(el["data-ci-high"]) == stored[label]["perplexity"]["ci_high"]
    assert {el["data-label"]: json.loads(el["data-values"]) for el in figs.lines} == curves
    # The numbers a person reads are the stored ones, rounded to 4 significant digits.
    for per in stored.values():
        assert f"{per['perplexity']['value']:.4g}" in page
    data = json.loads(re.search(r'id="experiment-data">(.*?)</script>', page, re.S)[1])
    assert data["metrics"] == cmp["metrics"]
