"""The analyst's core loop in one window session, with no JSON typed and no restart.

Sample question/answer data from Home -> map its columns in the Fine-tune form ->
train a tiny model -> the adapter appears in Models without a refresh -> evaluate
it against its base -> two arena votes -> export GGUF Q8_0 -> chat with the export.

Every step is screenshotted (``DEMOAI_TEST_ARTIFACTS``/journey, else the test's
temporary folder) so a person can look at what a user would see; a watchdog on
the UI thread fails the test if any call into app code holds it over 100 ms while
the steps are driven.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.jobs.store import FINAL_STATES, JobState
from app.core.models.registry import ModelRegistry
from tests.support.ci import needs_converter
from tests.support.training import one_train_thread  # noqa: F401  (autouse fixture)


class Shots:
    """Numbered screenshots of the whole window."""

    def __init__(self, window: Any, folder: Path) -> None:
        self.window, self.folder, self.n = window, folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> Path:
        from PySide6.QtWidgets import QApplication

        QApplication.processEvents()
        self.n += 1
        path = self.folder / f"{self.n:02d}-{name}.png"
        assert self.window.grab().save(str(path)), path
        return path


@pytest.fixture
def shots(main_window: Any, tmp_path: Path) -> Shots:
    base = os.environ.get("DEMOAI_TEST_ARTIFACTS")
    return Shots(main_window, (Path(base) if base else tmp_path) / "journey")


@needs_converter
def test_core_loop_in_one_window_session(
    qtbot: Any, main_window: Any, tiny_llama_dir: Path, shots: Shots, ui_watchdog: Any
) -> None:
    services = main_window.services
    ws = services.workspace
    jobs = services.jobs
    reg = ModelRegistry(ws)
    main_window.resize(1366, 768)
    # The panes' modules load on a thread after the first paint (seconds on this machine);
    # a user who clicks before that waits for an import, so the journey starts after it.
    qtbot.waitUntil(main_window.panes_ready.is_set, timeout=60_000)
    # Each pane is built once, as a user who looks around first would. Building is UI work
    # (widgets, pyqtgraph plots: 25-340 ms a pane on this 2-core machine, measured in
    # bench/startup.py's pane figures); the watchdog below is about what the panes *do*.
    from app.ui.panes import PANES

    for spec in PANES:
        main_window.pane(spec.key)

    with ui_watchdog.watch(), _report_stalls(ui_watchdog, shots.folder):
        # -- 1. Home: the sample question/answer data, one click ------------------------
        home = main_window.pane("home")
        assert "0 of" in home.summary.text()
        shots("home-first-run")
        home.sample_data_btn.click()
        qtbot.waitUntil(lambda: home.cards["data"].step.done, timeout=20_000)
        shots("home-sample-data-added")

        # A small Hugging Face model to train (the sample GGUF cannot be fine-tuned),
        # imported through the Models pane as a user would.
        models = main_window.pane("models")
        models.start_import(str(tiny_llama_dir), copy=False, name="tiny")
        qtbot.waitUntil(lambda: models.model.rowCount() == 1, timeout=60_000)
        base = reg.get("tiny")
        shots("models-tiny-imported")

        # -- 2. Fine-tune: the question/answer columns are mapped in the form ------------
        ft = main_window.pane("finetune")
        qtbot.waitUntil(lambda: ft.base.select(base.id), timeout=5000)
        sample = next(d for d in _datasets(ws) if d.name == "sample-questions")
        qtbot.waitUntil(lambda: ft.dataset.select(sample.id), timeout=5000)
        qtbot.waitUntil(lambda: ft.mapping_box.isVisible(), timeout=5000)
        proposed = ft.mapping.mapping()
        assert (proposed.user, proposed.assistant) == ("question", "answer"), proposed
        ft.preset.setCurrentIndex(ft.preset.findData("quick_test"))
        ft._set_field("max_steps", 6)
        ft._set_field("device", "cpu")
        ft.name.setText("tiny-faq")
        shots("finetune-mapped")
        ft.start_btn.click()  # checks and submits off the UI thread
        qtbot.waitUntil(lambda: bool(ft._train_jobs()), timeout=20_000)
        job = ft._train_jobs()[0]
        shots("finetune-started")
        qtbot.waitUntil(lambda: jobs.get(job.id).state in FINAL_STATES, timeout=300_000)
        assert jobs.get(job.id).state == JobState.SUCCEEDED, jobs.log_tail(job.id)
        adapter = reg.get("tiny-faq")
        assert adapter.format == "lora"
        recorded = json.dumps(jobs.get(job.id).params.get("data_mapping"))
        assert "{question}" in recorded and "{answer}" in recorded  # recorded with the run
        shots("finetune-done")

        # -- 3. The adapter is in Models, without any refresh ----------------------------
        main_window.pane("models")
        qtbot.waitUntil(lambda: models.model.row_of(adapter.id) is not None, timeout=3000)
        shots("models-adapter-listed")

        # -- 4. Evaluate the adapter against its base ----------------------------------------
        evaluate = main_window.pane("evaluate")
        tab = evaluate.eval_tab
        qtbot.waitUntil(lambda: _has_models(tab, {adapter.id, base.id}), timeout=3000)
        tab.select_models([adapter.id, base.id])
        tab.select_dataset(sample.id)
        assert tab.input_col.currentText() == "question"
        assert tab.ref_col.currentText() == "answer"
        tab.select_metrics(["exact_match", "f1"])
        tab.limit.setValue(3)
        tab.max_tokens.setValue(4)
        eval_job = tab.start_run()
        assert eval_job is not None, tab.error.text()
        qtbot.waitUntil(lambda: tab.job_id is None, timeout=300_000)
        assert jobs.get(eval_job.id).state == JobState.SUCCEEDED, jobs.log_tail(eval_job.id)
        shown = {tab.aggregates.item(r, 0).text() for r in range(tab.aggregates.rowCount())}
        assert shown == {"tiny-faq", "tiny"}  # names, both models
        assert tab.version.currentText() == "v1 · 40 rows · current"  # no hash
        assert tab.runs.item(0, 2).text() == "sample-questions v1"
        assert tab.runs.item(0, 3).text() == "tiny-faq, tiny"
        shots("evaluate-adapter-vs-base")

        # -- 5. Two blind arena votes ------------------------------------------------------
        evaluate.tabs.setCurrentWidget(evaluate.arena_tab)
        arena = evaluate.arena_tab
        arena.select_models([adapter.id, base.id])
        arena.prompts.setPlainText("How many days of annual leave?\nWho approves leave?")
        arena.max_tokens.setValue(4)
        assert arena.get_answers() is not None
        qtbot.waitUntil(lambda: arena.fetcher is None, timeout=300_000)
        assert arena.match is not None, arena.status.text()
        shots("arena-blind")
        arena.vote_btns["a"].click()
        arena.next_btn.click()
        arena.vote_btns["b"].click()
        board = {arena.board.item(r, 1).text() for r in range(arena.board.rowCount())}
        assert board == {"tiny-faq", "tiny"}
        runs = {
            arena.metrics_table.item(r, 4).text() for r in range(arena.metrics_table.rowCount())
        }
        assert runs and not any(eval_job.id[:8] in r for r in runs), runs  # a time, not an id
        shots("arena-two-votes")

        # -- 6. Export the adapter as GGUF Q8_0 ----------------------------------------------
        export = main_window.pane("export")
        export.set_target("gguf")
        qtbot.waitUntil(lambda: export.select_model(adapter.id), timeout=3000)
        export.set_quants(["Q8_0"])
        exp_job = export.start_export()
        assert exp_job is not None
        shots("export-running")
        qtbot.waitUntil(lambda: export.job.state in FINAL_STATES, timeout=300_000)
        assert export.job.state == JobState.SUCCEEDED, (export.job.error, export.job.hint)
        rec = next(r for r in export.records() if r.job_id == exp_job.id and r.quant == "Q8_0")
        gguf = reg.get(rec.result_model_id or "")
        assert gguf.format == "gguf"
        shots("export-done")

        # -- 7. Chat with the export -----------------------------------------------------------
        chat = main_window.pane("chat")
        qtbot.waitUntil(lambda: chat.model_combo.findData(gguf.id) >= 0, timeout=3000)
        chat.model_combo.setCurrentIndex(chat.model_combo.findData(gguf.id))
        chat.max_tokens.setValue(8)
        chat.input.setPlainText("How many days of annual leave do full-time staff get?")
        chat.send()
        qtbot.waitUntil(lambda: chat.stream is None, timeout=120_000)
        from app.core.chat import ConversationStore

        path = ConversationStore(ws.db).path(chat.conv.id)
        assert [m.role for m in path] == ["user", "assistant"]
        assert not getattr(path[1], "error", None), path[1]
        shots("chat-with-export")

        # -- Home ticks every step ------------------------------------------------------------
        main_window.pane("home")
        qtbot.waitUntil(lambda: _done(home) >= {"data", "finetune", "evaluate", "export", "chat"},
                        timeout=3000)  # fmt: skip
        shots("home-loop-done")

    ui_watchdog.assert_no_stall()


@contextlib.contextmanager
def _report_stalls(watchdog: Any, folder: Path) -> Iterator[None]:
    """Whatever happens, the watchdog's findings go beside the screenshots."""
    try:
        yield
    finally:
        (folder / "ui-stalls.txt").write_text(watchdog.report() or "no stall\n")


def _datasets(ws: Any) -> list[Any]:
    from app.core.data.store import DatasetStore

    return DatasetStore(ws).list_datasets()


def _mapped(mapping: Any) -> dict[str, str]:
    """column -> role of a proposed mapping, whatever its shape."""
    d = mapping.to_dict() if hasattr(mapping, "to_dict") else dict(mapping)
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, str) and k in ("user", "assistant", "system"):
            out[v] = k
        elif isinstance(v, str):
            out[k] = v
    return out


def _has_models(tab: Any, ids: set[str]) -> bool:
    from app.ui.panes.evaluate.qt_eval_tab import checked_data  # noqa: F401

    have = {tab.models.item(i).data(256) for i in range(tab.models.count())}
    return ids <= have


def _done(home: Any) -> set[str]:
    return {k for k, card in home.cards.items() if card.step.done}
