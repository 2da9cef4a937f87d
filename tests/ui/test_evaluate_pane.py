"""The Evaluate & Arena pane on the real window, with the real Gemma 3 270M GGUF.

Eval runs go through real ``eval.run`` worker jobs; arena answers through the
real model host.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from PySide6.QtCore import Qt

from app.core.data.store import DatasetStore
from app.core.eval.arena import ArenaService
from app.core.jobs.store import JobState
from app.core.models.registry import ModelRegistry

HEAVY = ("torch", "transformers", "llama_cpp", "peft")


def _dataset(ws, name: str, *, with_reference: bool = True) -> str:
    cols = {"question": ["Say yes", "Say no", "Two plus two?", "Capital of France?", "Hi"]}
    if with_reference:
        cols["answer"] = ["yes", "no", "4", "Paris", "Hello"]
    return DatasetStore(ws).create_dataset(name, pa.table(cols)).dataset_id


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


def _run(qtbot, tab, services, **setup) -> str:
    job = tab.start_run()
    assert job is not None, tab.error.text()
    assert tab.cancel_btn.isEnabled() and not tab.run_btn.isEnabled()
    qtbot.waitUntil(lambda: tab.job_id is None, timeout=180_000)
    done = services.jobs.get(job.id)
    assert done.state == JobState.SUCCEEDED, (done.error, services.jobs.log_tail(job.id))
    return job.id


def test_eval_run_from_the_pane(qtbot, main_window, pane, gemma_gguf, tmp_path: Path) -> None:
    services = main_window.services
    ws = services.workspace
    rec = ModelRegistry(ws).import_gguf(gemma_gguf, copy=False, name="gemma")
    ds = _dataset(ws, "qa")
    tab = pane.eval_tab
    tab.refresh_models()
    tab.select_models([rec.id])
    tab.select_dataset(ds)
    assert tab.input_col.currentText() == "question"
    assert tab.ref_col.currentText() == "answer"
    tab.select_metrics(["exact_match", "f1"])
    tab.max_tokens.setValue(6)
    assert tab.temperature.value() == 0.0
    run_id = _run(qtbot, tab, services)
    assert tab.progress.value() == 1000 and tab.status.text() == "Done."

    # aggregates with CIs, one row per (model, metric), and the bar chart
    agg = tab.aggregates
    cells = {(agg.item(r, 0).text(), agg.item(r, 1).text()) for r in range(agg.rowCount())}
    assert cells == {("gemma", "exact_match"), ("gemma", "f1")}
    assert all(agg.item(r, 3).text().startswith("[") for r in range(agg.rowCount()))
    assert len(tab.chart.items) == 1  # one series (model) over two metric groups

    # per-sample results, worst first by the chosen metric
    tab.sort_by.setCurrentIndex(tab.sort_by.findData("f1"))
    assert tab.samples.rowCount() == 5
    f1_col = [tab.samples.horizontalHeaderItem(c).text() for c in range(8)].index("f1")
    f1 = [float(tab.samples.item(r, f1_col).text()) for r in range(5)]
    assert f1 == sorted(f1)
    assert {tab.samples.item(r, 0).text() for r in range(5)} == {"gemma"}  # a name, not the id

    # export CSV and JSON
    assert tab.export("csv", str(tmp_path / "r.csv"))
    assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith("model_id,idx,input")
    assert tab.export("json", str(tmp_path / "r.json"))
    assert len(json.loads((tmp_path / "r.json").read_text())["samples"]) == 5

    # a second, shorter run; then compare the two side by side
    tab.limit.setValue(2)
    tab.name.setText("short")
    run2 = _run(qtbot, tab, services)
    assert {r.id for r in tab.store.list_runs()} == {run_id, run2}
    tab.runs.selectAll()
    assert tab.compare.rowCount() == 2  # (gemma, exact_match), (gemma, f1)
    assert "short" in tab.compare_info.text()
    assert len(tab.chart.items) == 2


def test_missing_reference_column_starts_no_job(qtbot, main_window, pane, gemma_gguf) -> None:
    services = main_window.services
    ws = services.workspace
    rec = ModelRegistry(ws).import_gguf(gemma_gguf, copy=False, name="gemma")
    ds = _dataset(ws, "noref", with_reference=False)
    tab = pane.eval_tab
    tab.refresh_models()
    tab.select_models([rec.id])
    tab.select_dataset(ds)
    assert tab.ref_col.currentText() == "(none)"
    tab.select_metrics(["exact_match", "f1"])
    assert tab.start_run() is None
    assert tab.error.isVisible() and "reference column" in tab.error.text()
    # a prompt field naming a column the dataset lacks: caught by validate_eval
    tab.select_metrics(["latency_ms"])
    tab.prompt.setText("Q: {input} ({answer})")
    assert tab.start_run() is None
    assert "no prompt field {answer}" in tab.error.text() and "question" in tab.error.text()
    assert services.jobs.list_jobs() == []
    assert tab.store.list_runs() == []


def test_arena_blind_votes_and_leaderboard(qtbot, main_window, pane, gemma_gguf) -> None:
    services = main_window.services
    ws = services.workspace
    reg = ModelRegistry(ws)
    a = reg.import_gguf(gemma_gguf, copy=False, name="gemma-left")
    b = reg.import_gguf(gemma_gguf, copy=False, name="gemma-right")
    arena = pane.arena_tab
    arena.refresh_models()
    arena.select_models([a.id, b.id])
    arena.prompts.setPlainText("Name a colour.\nName a fruit.")
    arena.max_tokens.setValue(8)
    arena.temperature.setValue(0.0)
    assert arena.get_answers() is not None
    qtbot.waitUntil(lambda: arena.fetcher is None, timeout=180_000)
    assert arena.match is not None, arena.status.text()
    assert len(arena.queue) == 1
    # blind: the answers are shown, the names are not
    assert arena.answer_a.toPlainText() == arena.match.answer_a
    assert arena.answer_b.toPlainText() == arena.match.answer_b
    assert arena.match.answer_a.strip() and arena.match.answer_b.strip()
    shown = arena.title_a.text() + arena.title_b.text() + arena.reveal.text()
    assert "gemma" not in shown

    arena.vote_btns["a"].click()
    first = ArenaService(ws).get(arena.match.id)
    assert first.vote == "a"
    assert reg.get(first.model_a).name in arena.title_a.text()
    assert reg.get(first.model_b).name in arena.title_b.text()
    assert "A was" in arena.reveal.text()
    assert not arena.vote_btns["b"].isEnabled()
    board = _board(arena)
    assert set(board) == {"gemma-left", "gemma-right"}
    winner = reg.get(first.model_a).name
    assert board[winner]["W"] == "1" and board[winner]["#"] == "1"

    assert arena.next_btn.isEnabled()
    arena.next_btn.click()
    assert "gemma" not in arena.title_a.text() + arena.title_b.text()
    arena.vote_btns["tie"].click()
    board = _board(arena)
    assert all(row["T"] == "1" and row["Matches"] == "2" for row in board.values())
    assert sum(int(row["W"]) for row in board.values()) == 1
    assert not arena.next_btn.isEnabled()


def _board(arena) -> dict[str, dict[str, str]]:
    t = arena.board
    heads = [t.horizontalHeaderItem(c).text() for c in range(t.columnCount())]
    rows = {}
    for r in range(t.rowCount()):
        row = {h: t.item(r, c).text() for c, h in enumerate(heads)}
        rows[row["Model"]] = row
    return rows


def test_cancel_keeps_the_samples_done(qtbot, main_window, pane, gemma_gguf) -> None:
    services = main_window.services
    ws = services.workspace
    rec = ModelRegistry(ws).import_gguf(gemma_gguf, copy=False, name="gemma")
    topics = [f"a city number {i}" for i in range(20)]
    ds = (
        DatasetStore(ws)
        .create_dataset("stories", pa.table({"input": topics, "reference": topics}))
        .dataset_id
    )
    tab = pane.eval_tab
    tab.refresh_models()
    tab.select_models([rec.id])
    tab.select_dataset(ds)
    tab.prompt.setText("Write a long story about {input}.")
    tab.max_tokens.setValue(64)
    job = tab.start_run()
    assert job is not None
    qtbot.waitUntil(lambda: "sample" in tab.status.text(), timeout=120_000)
    assert tab.progress.value() > 0
    tab.cancel_btn.click()
    qtbot.waitUntil(lambda: tab.job_id is None, timeout=120_000)
    assert services.jobs.get(job.id).state == JobState.CANCELLED
    assert tab.run_btn.isEnabled() and not tab.cancel_btn.isEnabled()
    run = tab.store.get_run(job.id)
    assert run.state == "interrupted"
    assert 1 <= len(tab.store.samples(run.id)) < 20


def test_setup_error_is_shown_in_view_next_to_run(qtbot, main_window, pane) -> None:
    """A setup error is drawn where it is seen: fully inside the visible part of the window,
    next to Run, even when the form scrolls (it once sat at y=703 in a 691 px viewport)."""
    from PySide6.QtWidgets import QScrollArea

    from app.ui.panes.evaluate.qt_eval_tab import checkable

    ws = main_window.services.workspace
    ds = DatasetStore(ws).create_dataset("q-only", pa.table({"question": ["Hi"]})).dataset_id
    tab = pane.eval_tab
    checkable(tab.models, "some model", "model-id", True)  # config() checks the id later
    tab.select_dataset(ds)
    tab.select_metrics(["exact_match", "f1"])
    pane.resize(1100, 600)  # shorter than the form: the form scrolls
    qtbot.wait(50)
    scroll = tab.findChild(QScrollArea)
    assert scroll.verticalScrollBar().maximum() > 0
    assert tab.start_run() is None
    qtbot.wait(50)
    assert "need a reference column" in tab.error.text()
    for w in (tab.error, tab.run_btn):
        assert w.isVisible()
        assert w.visibleRegion().boundingRect() == w.rect(), w.objectName()  # not clipped
        top_left = w.mapTo(pane, w.rect().topLeft())
        bottom = w.mapTo(pane, w.rect().bottomLeft()).y()
        assert top_left.y() >= 0 and bottom < pane.height()
    # right by Run: the error sits directly above the button
    gap = tab.run_btn.mapTo(pane, tab.run_btn.rect().topLeft()).y() - (
        tab.error.mapTo(pane, tab.error.rect().bottomLeft()).y()
    )
    assert 0 <= gap < 40
    pane.grab().save("/tmp/I-eval-error.png")


@pytest.mark.parametrize(
    ("columns", "reference"),
    [
        (["prompt", "completion"], "completion"),
        (["question", "Answer"], "Answer"),
        (["input", "expected_output"], "expected_output"),
        (["instruction", "output"], "output"),
        (["text", "target"], "target"),
        (["question"], "(none)"),
    ],
)
def test_reference_column_is_proposed_from_the_dataset(
    qtbot, main_window, pane, columns, reference
) -> None:
    ws = main_window.services.workspace
    table = pa.table({c: ["x"] for c in columns})
    ds = DatasetStore(ws).create_dataset("guess", table).dataset_id
    tab = pane.eval_tab
    tab.select_dataset(ds)
    assert tab.input_col.currentText() == columns[0]
    assert tab.ref_col.currentText() == reference


def test_leaderboard_lists_rank_1_first_numerically(qtbot, main_window, pane) -> None:
    """The leaderboard opens sorted by rank ascending, as numbers (rank 2 was listed above
    rank 1 under a "#▲" header), and keeps that order when it refreshes."""
    import random

    arena = ArenaService(main_window.services.workspace)
    models = [f"model-{i:02d}" for i in range(11)]
    rng = random.Random(3)
    for i, a in enumerate(models):  # a stronger model (lower i) beats the weaker ones
        for b in models[i + 1 :]:
            m = arena.create_match("p", {a: "x", b: "y"}, rng=rng)
            full = arena.get(m.id)
            arena.vote(m.id, "a" if full.model_a == a else "b")
    tab = pane.arena_tab
    pane.tabs.setCurrentWidget(tab)
    tab.refresh_leaderboard()

    def ranks() -> list[str]:
        return [tab.board.item(r, 0).text() for r in range(tab.board.rowCount())]

    assert ranks() == [str(i) for i in range(1, 12)]
    assert [tab.board.item(r, 1).text() for r in range(3)] == models[:3]
    header = tab.board.horizontalHeader()
    assert header.sortIndicatorSection() == 0
    assert header.sortIndicatorOrder() == Qt.SortOrder.AscendingOrder
    tab.refresh_leaderboard()
    assert ranks() == [str(i) for i in range(1, 12)]
    # the user's own sort is kept across refreshes
    tab.board.sortByColumn(5, Qt.SortOrder.AscendingOrder)  # W, fewest wins first
    tab.refresh_leaderboard()
    assert ranks()[0] == "11"
    tab.board.sortByColumn(0, Qt.SortOrder.AscendingOrder)
    tab.grab().save("/tmp/I-arena-leaderboard.png")


def test_result_tables_keep_their_fill_order_until_a_header_is_clicked(qtbot) -> None:
    """Enabling sorting used to re-sort every fill by column 0, Z-A (Qt's default indicator),
    so 'worst first' samples of two models came out grouped by model name, reversed."""
    from PySide6.QtWidgets import QTableWidgetItem

    from app.ui.panes.evaluate.qt_eval_tab import table

    t = table(["Model", "Score"], "t")
    qtbot.addWidget(t)

    def fill(rows: list[tuple[str, str]]) -> list[str]:
        t.setSortingEnabled(False)
        t.setRowCount(len(rows))
        for r, (m, v) in enumerate(rows):
            t.setItem(r, 0, QTableWidgetItem(m))
            t.setItem(r, 1, QTableWidgetItem(v))
        t.setSortingEnabled(True)
        return [t.item(r, 1).text() for r in range(t.rowCount())]

    worst_first = [("alpha", "0.1"), ("beta", "0.2"), ("alpha", "0.3")]
    assert fill(worst_first) == ["0.1", "0.2", "0.3"]
    t.sortByColumn(0, Qt.SortOrder.AscendingOrder)  # the user clicks "Model"
    assert fill(worst_first) == ["0.1", "0.3", "0.2"]  # their choice now holds across fills


def test_datasets_made_elsewhere_appear_and_the_setup_is_kept(qtbot, main_window, pane, tmp_path):
    """A dataset imported by the CLI shows in the open tab; what the user chose stays."""
    from tests.support.cli import demoai

    ws = main_window.services.workspace
    ds = _dataset(ws, "qa")
    tab = pane.eval_tab
    tab.refresh_datasets()
    tab.select_dataset(ds)
    tab.ref_col.setCurrentText("(none)")  # the user's choice, not the proposal
    csv = tmp_path / "more.csv"
    csv.write_text("prompt,completion\nhi,hello\n")
    assert demoai(ws.root, "data", "import", str(csv), "--name", "more").returncode == 0
    qtbot.waitUntil(lambda: tab.dataset.count() == 2, timeout=5000)
    assert tab.dataset.currentData() == ds
    assert tab.input_col.currentText() == "question" and tab.ref_col.currentText() == "(none)"
