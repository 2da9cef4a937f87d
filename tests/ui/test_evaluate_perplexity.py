"""Corpus perplexity from the Evaluate pane: two models (Gemma GGUF, tiny HF), one bar each
with its CI; the values equal the library's reference computation; a short text is refused
before any job; nothing slow on the UI thread."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pytest

from app.core.data.store import DatasetStore
from app.core.eval.runner import KIND
from app.core.jobs.store import JobState
from app.core.models.registry import ModelRegistry

HEAVY = ("torch", "transformers", "llama_cpp", "peft")

ROWS = [
    "The history of the printing press begins in the fifteenth century, when movable type "
    "made books cheaper and faster to produce.",
    "Within a few decades, presses spread across Europe, and the number of printed works "
    "grew from a handful to many thousands.",
    "Rivers carry sediment from the mountains to the sea, building deltas where they slow.",
    "Farmers learned long ago that these plains are fertile, and cities grew beside them.",
] * 4


@pytest.fixture
def pane(qtbot, main_window):
    from app.ui.panes.evaluate.qt_evaluate_pane import EvaluatePane

    heavy_before = {m for m in HEAVY if m in sys.modules}
    p = EvaluatePane(main_window.services)
    qtbot.addWidget(p)
    p.show()
    assert {m for m in HEAVY if m in sys.modules} <= heavy_before
    yield p
    p.shutdown()


def _references(gemma: Path, tiny: Path, text: str, ctx: int) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.core.eval.perplexity import GGUFScorer, HFScorer, llama_cpp_style_perplexity

    g = GGUFScorer(gemma, n_ctx=ctx, threads=2)
    try:
        ref_g = llama_cpp_style_perplexity(g, g.tokenize(text), n_ctx=ctx).perplexity
    finally:
        g.close()
    tok = AutoTokenizer.from_pretrained(str(tiny))
    h = HFScorer(AutoModelForCausalLM.from_pretrained(str(tiny)).eval(), tok)
    return ref_g, llama_cpp_style_perplexity(h, h.tokenize(text), n_ctx=ctx).perplexity


def test_corpus_perplexity_from_the_pane(
    qtbot, main_window, pane, gemma_gguf, tiny_llama_dir, ui_watchdog, tmp_path: Path
) -> None:
    services = main_window.services
    ws = services.workspace
    reg = ModelRegistry(ws)
    gemma = reg.import_gguf(gemma_gguf, copy=False, name="gemma")
    tiny = reg.import_path(tiny_llama_dir, copy=False)
    ds = DatasetStore(ws).create_dataset("corpus", pa.table({"text": ROWS})).dataset_id
    tab = pane.eval_tab
    tab.refresh_models()
    tab.select_models([gemma.id, tiny.id])
    tab.select_dataset(ds)
    assert tab.input_col.currentText() == "text"
    assert tab.ppl_btn.isVisible() and tab.ppl_btn.isEnabled()

    # too short for two windows: a clear message, no job
    tab.ppl_ctx.setValue(2048)
    with ui_watchdog.watch():
        tab.ppl_btn.click()
        qtbot.waitUntil(lambda: tab.error.isVisible(), timeout=120_000)
    assert "too short" in tab.error.text() and "two contexts" in tab.error.text()
    assert not [j for j in services.jobs.list_jobs() if j.kind == KIND]
    assert tab.ppl_btn.isEnabled()

    tab.ppl_ctx.setValue(64)
    with ui_watchdog.watch():
        tab.ppl_btn.click()
        qtbot.waitUntil(lambda: tab.job_id is not None, timeout=120_000)
        job_id = tab.job_id
        assert not tab.ppl_btn.isEnabled() and tab.cancel_btn.isEnabled()
        qtbot.waitUntil(lambda: tab.job_id is None, timeout=300_000)
    ui_watchdog.assert_no_stall()
    done = services.jobs.get(job_id)
    assert done.state == JobState.SUCCEEDED, (done.error, services.jobs.log_tail(job_id))
    assert tab.status.text() == "Done."

    tab.show_run(job_id)
    agg = tab.aggregates
    rows = {agg.item(r, 0).text(): r for r in range(agg.rowCount())}
    assert set(rows) == {"gemma", tiny.name}
    assert {agg.item(r, 1).text() for r in rows.values()} == {"corpus_perplexity"}
    assert all(agg.item(r, 3).text().startswith("[") for r in rows.values())
    assert len(tab.chart.items) == 2 and len(tab.chart.whiskers) == 2  # a bar + CI per model
    assert "corpus perplexity (llama_cpp, window 64)" in tab.run_info.text()

    values = tab.store.aggregates(job_id)
    ref_gemma, ref_tiny = _references(gemma_gguf, tiny_llama_dir, "\n\n".join(ROWS), 64)
    got_gemma = values[gemma.id]["corpus_perplexity"]
    got_tiny = values[tiny.id]["corpus_perplexity"]
    assert got_gemma["value"] == pytest.approx(ref_gemma, rel=1e-6)
    assert got_tiny["value"] == pytest.approx(ref_tiny, rel=1e-5)
    assert got_gemma["ci_low"] < got_gemma["value"] < got_gemma["ci_high"]

    shot = tmp_path / "evaluate-perplexity.png"
    pane.grab().save(str(shot))
    assert shot.stat().st_size > 0
