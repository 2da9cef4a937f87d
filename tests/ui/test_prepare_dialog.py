"""Datasets › Prepare…: forms generated from the parameter dataclasses, column pickers from the
dataset's schema, a proposed mapping for question/answer data, messages next to the fields, and a
live preview computed off the UI thread."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from app.core.data.store import DatasetStore

SHOTS = Path("/tmp/shots")
QA_CSV = (
    "question,answer\n"
    "How many days of leave do staff get?,25 days a year plus public holidays.\n"
    "Who approves a leave request?,Your line manager.\n"
    "How do I report a lost laptop?,Call the IT desk on extension 4400.\n"
)


def _dataset(workspace, tmp_path: Path, name: str, table: pa.Table | None = None) -> str:
    if table is None:
        path = tmp_path / "qa.csv"
        path.write_text(QA_CSV, encoding="utf-8")
        table = pacsv.read_csv(path)
    v = DatasetStore(workspace).create_dataset(name, table)
    return f"{v.dataset_id}@{v.hash}"


def _dialog(qtbot, workspace, ref: str):
    from app.ui.panes.datasets.qt_prepare_dialog import PrepareDialog

    dlg = PrepareDialog(None, store=DatasetStore(workspace), ref=ref)
    qtbot.addWidget(dlg)
    return dlg


def _settled(qtbot, dlg) -> str:
    qtbot.waitUntil(lambda: not dlg.preview_pending(), timeout=10_000)
    return dlg.preview_text()


def _shot(qtbot, dlg, name: str) -> None:
    dlg.show()
    qtbot.waitExposed(dlg)
    qtbot.wait(100)  # the layout passes after the last change
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert dlg.grab().save(str(SHOTS / name))


def test_question_answer_csv_proposes_the_mapping_and_previews_mapped_rows(
    qtbot, workspace, tmp_path: Path
) -> None:
    """A question,answer CSV: Map to a training format proposes question -> user and
    answer -> assistant with nothing typed, previews the mapped rows, and Apply gives the
    map_template step whose result is chat data."""
    from app.core.data.recipes import apply_op, table_of

    ref = _dataset(workspace, tmp_path, "qa")
    dlg = _dialog(qtbot, workspace, ref)
    dlg.op.setCurrentIndex(dlg.op.findData("map_template"))
    m = dlg.mapping
    assert m is not None
    assert m.pickers["user"].currentText() == "question"
    assert m.pickers["assistant"].currentText() == "answer"
    assert "question → user" in m.note.text() and "answer → assistant" in m.note.text()
    text = _settled(qtbot, dlg)
    assert "3 rows in, 3 rows out" in text
    assert "messages" in text
    assert "user: Who approves a leave request?\nassistant: Your line manager." in text
    assert dlg.apply_btn.isEnabled()
    dlg.resize(900, 600)
    _shot(qtbot, dlg, "prepare-map-qa.png")
    dlg.accept()
    step = dlg.chosen
    assert step["name"] == "map_template"
    assert step["params"]["user_template"] == "{question}"
    assert step["params"]["assistant_template"] == "{answer}"
    out = table_of(workspace, _ref(apply_op(workspace, ref, step["name"], step["params"])))
    assert out.column_names == ["messages"]
    assert out["messages"][1].as_py() == [
        {"role": "user", "content": "Who approves a leave request?"},
        {"role": "assistant", "content": "Your line manager."},
    ]


def test_a_wrong_column_is_said_next_to_its_field(qtbot, workspace, tmp_path: Path) -> None:
    """A column the dataset lacks (as a saved recipe may name) and a bad regex each get a red
    message right under their field; Apply stays off and no preview is shown."""
    from app.core.data.recipes import ColumnMapping

    table = pa.table({"question": ["a", "b"], "answer": ["x", "5"], "n": [1, 2]})
    ref = _dataset(workspace, tmp_path, "qa", table)
    dlg = _dialog(qtbot, workspace, ref)
    dlg.resize(900, 640)
    dlg.show()
    qtbot.waitExposed(dlg)
    dlg.op.setCurrentIndex(dlg.op.findData("regex_filter"))
    form = dlg.form
    assert form is not None
    # the text column is proposed; a number column is not offered for a text field
    assert form.editors["column"].value() == "question"
    assert [form.editors["column"].combo.itemText(i) for i in range(3)] == [
        "(choose a column)",
        "question",
        "answer",
    ]
    dlg.set_params({"column": "instruction", "pattern": "("})
    col_msg, pat_msg = form.messages["column"], form.messages["pattern"]
    qtbot.waitUntil(lambda: col_msg.isVisible() and pat_msg.isVisible(), timeout=2000)
    assert "no column 'instruction'" in col_msg.text() and "question, answer, n" in col_msg.text()
    assert "Not a valid regular expression" in pat_msg.text()
    assert not dlg.apply_btn.isEnabled()
    assert dlg.preview_table.rowCount() == 0
    # next to the field: just under its editor, inside the visible dialog
    editor = form.editors["column"].widget
    below = editor.mapTo(dlg, editor.rect().bottomLeft()).y()
    top = col_msg.mapTo(dlg, col_msg.rect().topLeft()).y()
    assert 0 <= top - below <= 12
    assert top + col_msg.height() <= dlg.height()
    _shot(qtbot, dlg, "prepare-field-messages.png")
    dlg.accept()
    assert dlg.result() == 0 and not dlg.chosen  # nothing applied
    # the mapping widget says the same under its own pickers
    dlg.op.setCurrentIndex(dlg.op.findData("map_template"))
    assert dlg.mapping is not None
    dlg.mapping.set_mapping(ColumnMapping(user="prompt", assistant="answer"))
    msg = dlg.mapping.messages["user"]
    assert msg.isVisible() and "no column 'prompt'" in msg.text()
    assert not dlg.apply_btn.isEnabled()


def test_live_preview_shows_only_the_newest_result(
    qtbot, workspace, tmp_path: Path, ui_watchdog
) -> None:
    """Edits in quick succession give one preview, for the last parameters, computed off the
    UI thread; a step that fails on the data says so in red, and the next good preview
    replaces it."""
    table = pa.table({"text": ["apple", "banana", "cherry", "apricot"], "k": ["1", "2", "3", "4"]})
    ref = _dataset(workspace, tmp_path, "fruit", table)
    with ui_watchdog.watch():
        dlg = _dialog(qtbot, workspace, ref)
        dlg.op.setCurrentIndex(dlg.op.findData("regex_filter"))
        assert dlg.form is not None
        line = dlg.form.editors["pattern"].widget
        started = []
        dlg._timer.timeout.connect(lambda: started.append(dlg.params().get("pattern")))
        for typed in ("^", "^a", "^ap", "^apr"):
            line.setText(typed)
        text = _settled(qtbot, dlg)
    ui_watchdog.assert_no_stall()
    assert started == ["^apr"]  # debounced: one preview for the last edit
    started.clear()
    assert "4 rows in, 1 rows out" in text and "apricot" in text and "apple" not in text
    # a length filter on tokens without a tokenizer: the message is on the tokenizer field
    dlg.op.setCurrentIndex(dlg.op.findData("length_filter"))
    dlg.set_params({"column": "text", "unit": "tokens"})
    assert "tokenizer.json" in dlg.form.messages["tokenizer"].text()
    # a tokenizer file that is not one: the step fails on the data, said next to the preview
    bad = tmp_path / "tokenizer.json"
    bad.write_text("not a tokenizer", encoding="utf-8")
    dlg.set_params({"tokenizer": str(bad)})
    text = _settled(qtbot, dlg)
    assert "Cannot load the tokenizer" in text
    assert "c0392b" in dlg.preview_info.styleSheet()
    dlg.set_params({"unit": "chars", "tokenizer": None, "min": 6})
    text = _settled(qtbot, dlg)
    assert "4 rows in, 3 rows out" in text and "Cannot load" not in text
    assert dlg.preview_info.styleSheet() == ""


def test_every_operation_gets_a_form_whose_values_are_its_defaults(
    qtbot, workspace, tmp_path: Path
) -> None:
    """The generator covers every parameter type the operations use, with no JSON field, and
    an untouched form gives exactly the defaults the CLI and recipes record."""
    from PySide6.QtWidgets import QPlainTextEdit

    from app.core.data import OPS
    from app.ui.forms import DataclassForm

    columns = ["question", "answer"]
    for name, spec in OPS.items():
        assert spec.params_type is not None, name
        form = DataclassForm(spec.params_type, columns=columns)
        qtbot.addWidget(form)
        assert not form.findChildren(QPlainTextEdit)
        values = form.values()
        for k, default in spec.defaults.items():
            assert values[k] == default, (name, k)
        for k in spec.required:
            assert k in values


@pytest.mark.parametrize("op", ["split", "select_columns", "concatenate", "redact_pii"])
def test_table_and_list_fields_edit_without_json(qtbot, workspace, tmp_path: Path, op) -> None:
    """Dictionaries are two-column tables and lists are ticks: split ratios, renames,
    versions to append and PII types are chosen, previewed and applied."""
    ref = _dataset(workspace, tmp_path, "qa")
    other = _dataset(
        workspace, tmp_path, "more", pa.table({"question": ["Extra?"], "answer": ["Yes."]})
    )
    dlg = _dialog(qtbot, workspace, ref)
    dlg.op.setCurrentIndex(dlg.op.findData(op))
    form = dlg.form
    assert form is not None
    if op == "split":
        form.set_values({"ratios": {"train": 2.0, "test": 1.0}})
        expect = "3 rows in, 3 rows out"
    elif op == "select_columns":
        table = form.editors["rename"].table
        assert [table.item(r, 0).text() for r in range(table.rowCount())] == columns_of(
            ref, workspace
        )
        table.item(0, 1).setText("prompt")
        expect = "prompt"
    elif op == "concatenate":
        ticks = form.editors["others"].list
        assert ticks.count() == 1 and ticks.item(0).text().startswith("more (1 rows)")
        assert form.messages["others"].text() == "Required."  # nothing ticked yet
        assert not form.messages["others"].isHidden() and not dlg.apply_btn.isEnabled()
        ticks.item(0).setCheckState(ticks.item(0).checkState().Checked)
        expect = "Extra?"
    else:
        ticks = form.editors["types"].list
        ticks.item(0).setCheckState(ticks.item(0).checkState().Checked)
        expect = "Found in the first 3 rows: nothing"
    text = _settled(qtbot, dlg)
    assert expect in text, text
    dlg.resize(900, 600)
    _shot(qtbot, dlg, f"prepare-{op}.png")
    dlg.accept()
    assert dlg.result() == 1
    if op == "split":
        assert dlg.chosen["params"]["ratios"] == {"train": 2.0, "test": 1.0}
    if op == "select_columns":
        assert dlg.chosen["params"]["rename"] == {"question": "prompt"}
    if op == "concatenate":
        assert dlg.chosen["params"]["others"] == [other]


def columns_of(ref: str, workspace) -> list[str]:
    return list(DatasetStore(workspace).parquet_file(ref).schema_arrow.names)


def test_prepare_from_the_datasets_pane(qtbot, main_window, workspace) -> None:
    """The pane opens the dialog on the version it shows (its contract: ``store`` and
    ``ref()``), and the chosen step runs as a data.apply job."""
    from app.ui.panes.datasets.qt_prepare_dialog import PrepareDialog

    table = pa.table(
        {"instruction": ["Say hi", "Add 2 and 3"], "input": ["", ""], "output": ["hi", "5"]}
    )
    ds = DatasetStore(workspace).create_dataset("sft", table).dataset_id
    pane = main_window.pane("datasets")
    pane.refresh_datasets(select=ds)
    pane.open_dataset(ds)
    dlg = PrepareDialog(pane)
    qtbot.addWidget(dlg)
    assert dlg.windowTitle() == "Prepare sft"
    dlg.op.setCurrentIndex(dlg.op.findData("map_template"))
    assert dlg.mapping is not None and dlg.mapping.mapping().extra == "input"
    text = _settled(qtbot, dlg)
    assert "2 rows in, 2 rows out" in text and "user: Add 2 and 3\nassistant: 5" in text
    dlg.accept()
    job = pane.prepare(dlg.chosen)
    assert job is not None and job.title == "Prepare sft: Map to a training format"
    assert job is not None and job.params["steps"][0]["params"]["user_template"] == (
        "{instruction}\n\n{input}"
    )


def _ref(v) -> str:
    return f"{v.dataset_id}@{v.hash}"
