"""The Fine-tune pane: start a real run, watch curves, cancel, resume, get the adapter."""

from __future__ import annotations

import html
import re

import pyarrow as pa
import pytest
from PySide6.QtCore import Qt

from app.core.data.store import DatasetStore
from app.core.jobs.store import JobState
from app.core.models.registry import ModelRegistry
from tests.support.training import add_tiny_model_and_echo_data


@pytest.fixture
def pane(qtbot, main_window, tiny_llama_dir):
    add_tiny_model_and_echo_data(main_window.services.workspace, tiny_llama_dir, repeats=4)
    p = main_window.pane("finetune")
    p.refresh_inputs()
    return p


def test_bad_config_is_reported_before_start(qtbot, pane) -> None:
    pane._set_field("max_seq_len", 100_000)
    assert pane.start() is None
    assert "context" in pane.report.text()
    assert [j for j in pane.services.jobs.list_jobs() if j.kind == "train.lora"] == []


def test_run_curves_cancel_resume_and_outputs(qtbot, pane) -> None:
    pane.preset.setCurrentIndex(pane.preset.findData("quick_test"))
    pane._set_field("max_steps", 150)
    pane._set_field("save_every", 5)
    pane._set_field("device", "cpu")
    pane.name.setText("echo-lora")
    job = pane.start()
    assert job is not None and "Ready" in pane.report.text()
    jobs = pane.services.jobs
    qtbot.waitUntil(lambda: len(pane.curves.series(job.id, "train_loss")) >= 8, timeout=120_000)
    assert pane.curves.lines[(job.id, "train_loss")].getData()[0] is not None
    pane.runs.setCurrentRow(0)
    pane.cancel_btn.click()
    qtbot.waitUntil(lambda: jobs.get(job.id).state == JobState.CANCELLED, timeout=60_000)
    seen_before = set(pane.curves.series(job.id, "train_loss"))
    assert len(seen_before) < 150
    qtbot.waitUntil(lambda: pane.resume_btn.isEnabled(), timeout=5000)
    pane.resume_btn.click()
    qtbot.waitUntil(lambda: jobs.get(job.id).state == JobState.SUCCEEDED, timeout=300_000)
    qtbot.waitUntil(lambda: len(pane.curves.series(job.id, "train_loss")) == 150, timeout=10_000)
    # one continuous curve: every step once, no gap at the resume
    assert sorted(pane.curves.series(job.id, "train_loss")) == list(range(1, 151))
    final = jobs.get(job.id)
    assert final.attempt == 2
    rec = ModelRegistry(pane.services.workspace).get("echo-lora")
    assert rec.format == "lora" and final.result["model_id"] == rec.id
    qtbot.waitUntil(lambda: pane.chat_btn.isEnabled(), timeout=5000)
    with qtbot.waitSignal(pane.services.bus.chat_with_model, timeout=2000) as sig:
        pane.chat_btn.click()
    assert sig.args == [rec.id]
    merge = pane.merge_selected()
    qtbot.waitUntil(
        lambda: jobs.get(merge.id).state in (JobState.SUCCEEDED, JobState.FAILED), timeout=120_000
    )
    assert jobs.get(merge.id).state == JobState.SUCCEEDED, jobs.get(merge.id).error
    merged = ModelRegistry(pane.services.workspace).get("echo-lora-merged")
    assert merged.format == "hf"
    rels = {
        (e.model_id, e.relation)
        for e in ModelRegistry(pane.services.workspace).lineage(merged.id).parents
    }
    assert (rec.id, "merged-from") in rels


def test_auto_reduce_batch_option_and_run_warnings(qtbot, pane) -> None:
    box = pane._fields["auto_reduce_batch"]
    assert box.isChecked() and "out-of-memory" in box.toolTip()
    box.setChecked(False)
    assert pane.build_config().auto_reduce_batch is False
    box.setChecked(True)
    assert pane.build_config().auto_reduce_batch is True
    # A run's warnings are shown with the run (here a real one: records whose prompt
    # fills max_seq_len have nothing to learn; an out-of-memory reduction is shown the same way).
    rows = [{"prompt": f"Say {w}:", "completion": f" {w}"} for w in ("red", "blue") * 4]
    rows += [{"prompt": "word " * 200, "completion": " cut"}] * 2
    ds = DatasetStore(pane.services.workspace).create_dataset("long", pa.Table.from_pylist(rows))
    pane.refresh_inputs()
    pane.dataset.setCurrentIndex(pane.dataset.findData(ds.dataset_id))
    for name, value in {
        "max_steps": 2,
        "max_seq_len": 32,
        "batch_size": 2,
        "device": "cpu",
    }.items():
        pane._set_field(name, value)
    job = pane.start()
    assert job is not None, pane.report.text()
    jobs = pane.services.jobs
    qtbot.waitUntil(lambda: jobs.get(job.id).state == JobState.SUCCEEDED, timeout=120_000)
    pane.refresh_runs(select=job.id)
    qtbot.waitUntil(lambda: "Warnings" in pane.run_info.text(), timeout=5000)
    assert "2 record(s) had nothing to learn after cutting; skipped" in pane.run_info.text()


def test_check_result_is_in_view_and_names_the_fitted_default(qtbot, pane) -> None:
    """Check scrolls its result into view, wrapped; a default beyond the context is fitted."""
    main = pane.window()
    main.resize(1200, 700)
    scroll = pane.form_scroll
    scroll.verticalScrollBar().setValue(0)
    # the default (1024) is beyond the tiny model's context: fitted, with a one-line note
    assert pane._fields["max_seq_len"].value() == 512
    assert pane.seq_note.text() == "Fitted to the model's context: 512."
    assert not pane.seq_note.isHidden()
    assert pane.check() is not None
    view = scroll.viewport()

    def report_in_view() -> bool:
        top_left = pane.report.mapTo(view, pane.report.rect().topLeft())
        bottom_right = pane.report.mapTo(view, pane.report.rect().bottomRight())
        return view.rect().contains(top_left) and view.rect().contains(bottom_right)

    qtbot.waitUntil(report_in_view, timeout=2000)
    assert pane.report.isVisible() and pane.report.height() > 40
    assert scroll.verticalScrollBar().value() > 0  # it was below the fold: scrolled down
    assert pane.report.wordWrap()
    text = html.unescape(pane.report.text())
    assert "Ready" in text and "max_seq_len fitted to the model's context: 512" in text
    # a short run's time reads in seconds, not "about 0 min"
    assert "0 min" not in text and re.search(r"memory, about [\d.]+ s\.", text), text
    pane.window().grab().save("/tmp/h-finetune-check.png")


def _lr_events(values: list[float]) -> list[dict[str, object]]:
    return [
        {"type": "metric", "name": "learning_rate", "step": i + 1, "value": v}
        for i, v in enumerate(values)
    ]


def test_learning_rate_axis_fits_a_constant_and_a_schedule(qtbot) -> None:
    """A constant lr of 3e-4 is drawn inside a y range near 3e-4, not on a -0.5..0.5 axis."""
    import math

    from app.ui.panes.finetune.qt_curves import CurvesWidget

    curves = CurvesWidget()
    qtbot.addWidget(curves)
    curves.resize(900, 500)
    curves.show()
    qtbot.waitExposed(curves)
    curves.set_runs({"a": "run a"})
    curves.add_events("a", _lr_events([3e-4] * 30))
    vb = curves.plots["learning_rate"].getViewBox()

    def y_range() -> tuple[float, float]:
        lo, hi = vb.viewRange()[1]
        return float(lo), float(hi)

    qtbot.waitUntil(lambda: y_range()[0] < 3e-4 < y_range()[1], timeout=2000)
    lo, hi = y_range()
    assert hi - lo <= 10 * 3e-4, (lo, hi)  # the line is not squashed onto an axis 1000x wider
    qtbot.wait(100)  # let the axis widen to its labels before the picture
    curves.grab().save("/tmp/h-lr-constant.png")

    # a cosine schedule from 3e-4 down to 0 gets a range fitted to its values again
    cosine = [1.5e-4 * (1 + math.cos(math.pi * i / 29)) for i in range(30)]
    curves.add_events("a", _lr_events(cosine))

    def fits_cosine() -> bool:
        lo, hi = y_range()
        return lo <= 0.0 and hi >= 3e-4 and hi - lo <= 10 * 3e-4

    qtbot.waitUntil(fits_cosine, timeout=2000)
    curves.grab().save("/tmp/h-lr-cosine.png")
    curves.close()


QA_ROWS = [
    {"question": f"What is the code of {w}?", "answer": f"The code of {w} is {i}{i}."}
    for i, w in enumerate(("apple", "bridge", "candle", "desert", "engine", "feather"))
]


def test_a_question_answer_dataset_is_mapped_inline_and_the_run_records_it(
    qtbot, pane, ui_watchdog
) -> None:
    """Fine-tune accepts any dataset: a question/answer table shows the column mapping in the
    form, proposed with nothing typed; a wrong choice is said under its picker and Check
    names it; a short real CPU run trains on the mapped rows and its manifest records the
    mapping."""
    import json
    from pathlib import Path

    ws = pane.services.workspace
    ds = DatasetStore(ws).create_dataset("faq", pa.Table.from_pylist(QA_ROWS)).dataset_id
    pane.refresh_inputs()
    assert pane.mapping_box.isHidden()  # "echo" is prompt/completion already
    pane.dataset.setCurrentIndex(pane.dataset.findData(ds))
    assert not pane.mapping_box.isHidden()
    m = pane.mapping
    assert (m.pickers["user"].currentText(), m.pickers["assistant"].currentText()) == (
        "question",
        "answer",
    )
    # the same column for both turns: the message is under the picker, Check refuses
    m.pickers["assistant"].setCurrentIndex(m.pickers["assistant"].findData("question"))
    assert "different column" in m.messages["assistant"].text()
    assert not m.messages["assistant"].isHidden()
    assert pane.check() is None and "Choose the columns" in pane.report.text()
    main = pane.window()
    main.resize(1280, 760)
    qtbot.wait(100)
    assert pane.form_scroll.horizontalScrollBar().maximum() == 0  # the mapping fits the width
    pane.form_scroll.widget().grab().save("/tmp/shots/finetune-mapping-message.png")
    m.pickers["assistant"].setCurrentIndex(m.pickers["assistant"].findData("answer"))
    assert m.messages["assistant"].isHidden()
    for name, value in {"max_steps": 2, "batch_size": 2, "device": "cpu"}.items():
        pane._set_field(name, value)
    pane.name.setText("faq-lora")
    jobs = pane.services.jobs

    def submitted() -> list:
        return [j for j in jobs.list_jobs() if j.kind == "train.lora"]

    # the button prepares the mapped data and reads the model off the UI thread
    with ui_watchdog.watch():
        qtbot.mouseClick(pane.start_btn, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: bool(submitted()), timeout=30_000)
    ui_watchdog.assert_no_stall()
    job = submitted()[0]
    text = pane.report.text()
    assert "Ready" in text and "question → user, answer → assistant" in text
    step = {
        "name": "map_template",
        "params": {
            "format": "chat",
            "system": None,
            "user_template": "{question}",
            "assistant_template": "{answer}",
            "prompt_template": "{question}",
            "completion_template": "{answer}",
            "keep_columns": None,
        },
    }
    assert job.params["data_mapping"] == step and job.params["data_format"] == "chat"
    qtbot.wait(200)
    pane.form_scroll.widget().grab().save("/tmp/shots/finetune-inline-mapping.png")
    qtbot.waitUntil(
        lambda: jobs.get(job.id).state in (JobState.SUCCEEDED, JobState.FAILED), timeout=180_000
    )
    final = jobs.get(job.id)
    assert final.state == JobState.SUCCEEDED, final.error
    manifest = json.loads(Path(final.result["manifest"]).read_text(encoding="utf-8"))
    assert manifest["data"]["mapping"] == step
    assert manifest["config"]["data_mapping"] == step
    assert manifest["data"]["records"] == len(QA_ROWS)
    first = json.loads(Path(manifest["data"]["path"]).read_text(encoding="utf-8").splitlines()[1])
    assert first == {
        "messages": [
            {"role": "user", "content": "What is the code of bridge?"},
            {"role": "assistant", "content": "The code of bridge is 11."},
        ]
    }


def test_a_dataset_added_elsewhere_appears_and_gets_the_mapping_without_refresh(
    qtbot, pane
) -> None:
    """A question/answer dataset added while the form is open (here by the core, as the CLI
    or a job would) shows up in the picker; choosing it offers the mapping."""
    ws = pane.services.workspace
    ds = DatasetStore(ws).create_dataset("later", pa.Table.from_pylist(QA_ROWS)).dataset_id
    qtbot.waitUntil(lambda: pane.dataset.findData(ds) >= 0, timeout=5000)
    pane.dataset.select(ds)
    assert not pane.mapping_box.isHidden()
    assert pane.mapping.mapping().user == "question"
    # a new version in a training format: the mapping goes away by itself
    from app.core.data.recipes import ColumnMapping, apply_op

    step = ColumnMapping(user="question", assistant="answer").step()
    apply_op(ws, ds, step.name, step.params)
    qtbot.waitUntil(lambda: pane.mapping_box.isHidden(), timeout=5000)
