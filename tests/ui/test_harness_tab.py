"""The Evaluate pane's Harness task tab: a task whose data is not in the library is refused
with the dataset to import (no job); a local task runs as an eval.harness job from the tab,
its aggregates and the harness's own results shown; a second run is cancelled from the tab;
nothing slow on the UI thread."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtWidgets import QMessageBox

from app.core.jobs.store import JobState
from app.core.models.registry import ModelRegistry
from tests.support.ci import needs

TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED)
MC = [
    ("The capital of France is", ["Paris", "Berlin", "Rome"], 0),
    ("Two plus two equals", ["three", "four", "five"], 1),
    ("A cat says", ["woof", "meow", "moo"], 1),
]
YAML = """task: demoai_mc_tab
dataset_path: json
dataset_kwargs:
  data_files:
    test: mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
target_delimiter: " "
"""


@pytest.fixture
def pane(qtbot: Any, main_window: Any) -> Any:
    from app.ui.panes.evaluate.qt_evaluate_pane import EvaluatePane

    p = EvaluatePane(main_window.services)
    qtbot.addWidget(p)
    p.show()
    yield p
    p.shutdown()


@needs(importlib.util.find_spec("lm_eval") is not None, "lm-eval is not installed")
def test_harness_tab(
    qtbot: Any,
    main_window: Any,
    pane: Any,
    ui_watchdog: Any,
    tiny_llama_dir: Path,
    tmp_path: Path,
    no_modal_dialogs: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = main_window.services
    ws = services.workspace
    model = ModelRegistry(ws).import_path(tiny_llama_dir, copy=False).id
    (tmp_path / "mc.jsonl").write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in MC)
    )
    (tmp_path / "mc.yaml").write_text(YAML)
    tab = pane.harness_tab
    pane.tabs.setCurrentWidget(tab)
    tab.refresh()
    tab.model.setCurrentIndex(tab.model.findData(model))

    # A named task whose data is not in the library: the hint, and no job.
    before = [j.id for j in services.jobs.list_jobs()]
    tab.task.setText("arc_easy")
    with ui_watchdog.watch():
        tab.run_btn.click()
        qtbot.waitUntil(lambda: tab.error.isVisible(), timeout=30_000)
    ui_watchdog.assert_no_stall()
    assert "allenai/ai2_arc/ARC-Easy:test" in tab.error.text()
    assert "demoai data import" in tab.error.text()
    assert [j.id for j in services.jobs.list_jobs()] == before
    assert tab.run_btn.isEnabled()

    # A task file is code (lm-eval renders its templates unsandboxed, imports its helpers):
    # the tab asks, naming the file; a No starts nothing.
    tab.task.setText(str(tmp_path / "mc.yaml"))
    tab.name.setText("tab run")
    with ui_watchdog.watch():
        tab.run_btn.click()
        qtbot.waitUntil(lambda: tab.error.isVisible(), timeout=30_000)
    assert any("mc.yaml" in seen for seen in no_modal_dialogs)
    assert "runs code in the job" in tab.error.text()
    assert [j.id for j in services.jobs.list_jobs()] == before
    # A yes runs it; the run's aggregates and the harness's results show.
    monkeypatch.setattr(
        QMessageBox, "question", staticmethod(lambda *a, **k: QMessageBox.StandardButton.Yes)
    )
    with ui_watchdog.watch():
        tab.run_btn.click()
        qtbot.waitUntil(lambda: tab.job_id is not None, timeout=30_000)
        job_id = tab.job_id
        assert tab.cancel_btn.isEnabled() and not tab.error.isVisible()
        qtbot.waitUntil(lambda: tab.job_id is None, timeout=300_000)
    ui_watchdog.assert_no_stall()
    job = services.jobs.get(job_id)
    assert job.state == JobState.SUCCEEDED, services.jobs.log_tail(job_id)
    assert tab.status.text() == "Done."
    tab.refresh_runs(select=job_id)
    names = [tab.runs.item(r, 0).text() for r in range(tab.runs.rowCount())]
    assert "tab run" in names
    metrics = {tab.aggregates.item(r, 0).text() for r in range(tab.aggregates.rowCount())}
    assert metrics == {"mc_accuracy", "lm_eval:acc_norm"}  # the harness's defaults: acc, acc_norm
    assert "acc,none" in tab.results.text() and "lm-eval 0.4.13" in tab.results.text()
    # The Evaluate tab shows the same run (its metric names are known there too).
    pane.eval_tab.refresh_runs(select=job_id)

    # A second run (the yes is asked again: it was for one start), cancelled from the tab.
    with ui_watchdog.watch():
        tab.run_btn.click()
        qtbot.waitUntil(lambda: tab.job_id is not None, timeout=30_000)
        started = tab.job_id
        tab.cancel_btn.click()
        qtbot.waitUntil(lambda: tab.job_id is None, timeout=180_000)
    ui_watchdog.assert_no_stall()
    final = services.jobs.get(started)
    assert final.state in (JobState.CANCELLED, JobState.SUCCEEDED)
    assert tab.run_btn.isEnabled()
