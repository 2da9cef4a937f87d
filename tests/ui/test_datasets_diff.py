"""Datasets: the diff between versions as a table, writes off the UI thread, live refresh."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLineEdit

from app.core.data.store import DatasetStore
from app.ui.panes.datasets.qt_diff_view import CELL_CHANGED, PAGE
from tests.support.cli import demoai

SHOTS = Path("/tmp/shots")


def _shot(widget, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    widget.grab().save(str(SHOTS / name))


def _tickets(n: int = 40) -> pa.Table:
    return pa.table(
        {
            "id": list(range(1, n + 1)),
            "question": [f"How do I reset password {i}?" for i in range(1, n + 1)],
            "answer": [f"Open Settings › Account, step {i}." for i in range(1, n + 1)],
        }
    )


def _type_into_cell(qtbot, table, row: int, column: int, text: str) -> None:
    """Edit a cell as a person does: open its editor, type, press Enter."""
    index = table.model().index(row, column)
    table.scrollTo(index)
    table.setCurrentIndex(index)
    table.edit(index)
    # the delegate's editor (a closed one lingers, hidden, until deleted)
    (editor,) = [e for e in table.viewport().findChildren(QLineEdit) if e.isVisible()]
    editor.selectAll()
    qtbot.keyClicks(editor, text)
    qtbot.keyClick(editor, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: table.model().index(row, column).data() == text, timeout=5_000)


def _save(qtbot, pane, message: str) -> None:
    old = pane.version.hash
    assert pane.save_version(message) is not None
    qtbot.waitUntil(lambda: pane.version.hash != old, timeout=30_000)


def _compare_with(qtbot, pane, row: int) -> None:
    pane.versions.setCurrentRow(row)
    assert pane.versions_panel.compare_btn.isEnabled()
    pane.versions_panel.compare_btn.click()
    view = pane.diff_view
    qtbot.waitUntil(lambda: view.diff is not None, timeout=30_000)
    assert pane.tabs.currentWidget() is view


def test_one_cell_edit_is_one_changed_row_with_before_and_after(
    qtbot, main_window, workspace
) -> None:
    ds = DatasetStore(workspace).create_dataset("tickets", _tickets()).dataset_id
    main_window.resize(1280, 760)
    pane = main_window.pane("datasets")
    pane.refresh_datasets(select=ds)
    qtbot.waitUntil(lambda: pane.model is not None, timeout=10_000)
    _type_into_cell(qtbot, pane.table, 16, 2, "Use the reset link in the email.")
    assert "unsaved: 1 cell" in pane.editor.info.text()
    _save(qtbot, pane, "clearer answer")
    _compare_with(qtbot, pane, 1)  # v1 (older) against v2, the current one
    view = pane.diff_view
    m = view.model
    assert m.rowCount() == 1  # one edited cell: one changed row, not one added + one removed
    assert [m.headerData(c, Qt.Orientation.Horizontal) for c in range(m.columnCount())] == [
        "Change",
        "Row",
        "id",
        "question",
        "answer",
    ]
    assert m.index(0, 0).data() == "changed"
    assert m.index(0, 1).data() == "17"  # as the table numbers it (row 16 from 0)
    assert m.index(0, 2).data() == "17" and m.index(0, 3).data() == "How do I reset password 17?"
    assert (
        m.index(0, 4).data()
        == "Open Settings › Account, step 17.  →  Use the reset link in the email."
    )
    tip = m.index(0, 4).data(Qt.ItemDataRole.ToolTipRole)
    assert tip.startswith("Before:\nOpen Settings") and tip.endswith(
        "After:\nUse the reset link in the email."
    )
    assert m.index(0, 4).data(Qt.ItemDataRole.BackgroundRole).color() == CELL_CHANGED
    assert m.index(0, 3).data(Qt.ItemDataRole.BackgroundRole).color() != CELL_CHANGED
    summary = view.summary.text()
    assert "v1 → v2" in summary and "1 changed" in summary and "0 added" in summary
    assert len(pane.versions_panel.labels) == 2 and all(
        len(label) <= 3 for label in pane.versions_panel.labels.values()
    )  # short labels, never hashes
    qtbot.wait(50)
    _shot(main_window, "diff-one-cell.png")

    # an inserted row and one more edit: one added row, one changed row, nothing shifted
    pane.tabs.setCurrentWidget(pane.editor)
    pane.editor.add_row()
    last = pane.model.rowCount() - 1
    for col, text in ((0, "99"), (1, "Can I export my data?"), (2, "Yes: Settings, then Export.")):
        _type_into_cell(qtbot, pane.table, last, col, text)
    _type_into_cell(qtbot, pane.table, 2, 1, "How do I reset my password (3)?")
    _save(qtbot, pane, "one more question")
    _compare_with(qtbot, pane, 2)  # v1 against v3
    m = view.model
    rows = [(m.index(r, 0).data(), m.index(r, 1).data()) for r in range(m.rowCount())]
    assert rows == [("changed", "3"), ("changed", "17"), ("added", "41")]
    assert "2 changed" in view.summary.text() and "1 added" in view.summary.text()
    assert view.page_label.text() == "Changed rows 1–3 of 3"
    qtbot.wait(50)
    _shot(main_window, "diff-edit-and-insert.png")
    _shot(view, "diff-table.png")


def test_a_long_diff_pages_and_says_how_many_more(qtbot, main_window, workspace) -> None:
    store = DatasetStore(workspace)
    n = 3 * PAGE + 10
    v1 = store.create_dataset("many", _tickets(n))
    t = _tickets(n)
    edited = t.set_column(2, "answer", pa.array([f"new {i}" for i in range(n)]))
    store.create_version(
        v1.dataset_id, edited, message="all answers", operation={"name": "edit", "params": {}}
    )
    pane = main_window.pane("datasets")
    pane.refresh_datasets(select=v1.dataset_id)
    qtbot.waitUntil(lambda: pane.model is not None, timeout=10_000)
    _compare_with(qtbot, pane, 1)
    view = pane.diff_view
    assert view.model.rowCount() == PAGE  # the view holds one page, never the whole diff
    assert view.page_label.text() == f"Changed rows 1–{PAGE} of {n:,} · {n - PAGE:,} more changes"
    assert not view.prev_btn.isEnabled() and view.next_btn.isEnabled()
    view.next_btn.click()
    qtbot.waitUntil(lambda: view.start == PAGE, timeout=10_000)
    assert view.model.index(0, 1).data() == str(PAGE + 1)
    view.show_page(3 * PAGE)
    qtbot.waitUntil(lambda: view.start == 3 * PAGE, timeout=10_000)
    assert view.model.rowCount() == 10 and not view.next_btn.isEnabled()
    assert view.page_label.text() == f"Changed rows {3 * PAGE + 1:,}–{n:,} of {n:,}"


def test_writes_run_off_the_ui_thread(qtbot, main_window, workspace, ui_watchdog, tmp_path) -> None:
    """Delete, revert, add sample, import and diff: the UI thread never stalls > 100 ms."""
    store = DatasetStore(workspace)
    n = 200_000  # big enough that a write on the UI thread would stall it
    big = pa.table({"id": pa.array(range(n)), "text": pa.array([f"row {i}" for i in range(n)])})
    v1 = store.create_dataset("big", big)
    ds = v1.dataset_id
    store.create_version(
        ds,
        big.set_column(
            1, "text", pa.array([f"row {i}!" if i % 1000 == 0 else f"row {i}" for i in range(n)])
        ),
        message="every 1000th",
        operation={"name": "edit", "params": {}},
    )
    other = store.create_dataset("other", _tickets()).dataset_id
    src = tmp_path / "faq.jsonl"
    src.write_text("".join(json.dumps({"q": f"q{i}", "a": f"a{i}"}) + "\n" for i in range(500)))
    pane = main_window.pane("datasets")
    pane.refresh_datasets(select=ds)
    qtbot.waitUntil(lambda: pane.model is not None and pane.dataset.id == ds, timeout=10_000)
    with ui_watchdog.watch():
        _compare_with(qtbot, pane, 1)
        assert pane.diff_view.diff.rows_changed == n // 1000
        pane.versions.setCurrentRow(1)
        pane.versions_panel.revert_selected()
        qtbot.waitUntil(lambda: pane.version.hash == v1.hash, timeout=30_000)
        assert pane.versions.item(1).text().startswith("● v1")
        pane.list.delete_current(confirmed=True)
        qtbot.waitUntil(
            lambda: pane.dataset is not None and pane.dataset.id == other, timeout=30_000
        )
        assert [d.id for d in store.list_datasets()] == [other]
        pane.import_file(str(src))
        qtbot.waitUntil(
            lambda: pane.dataset is not None and pane.dataset.name == "faq", timeout=60_000
        )
        pane.add_sample()
        qtbot.waitUntil(lambda: not pane.list.sample_btn.isVisible(), timeout=30_000)
    ui_watchdog.assert_no_stall()
    assert pane.list.status.state in ("ok", "idle")
    assert pane.model.rowCount() > 0


def test_a_dataset_imported_by_the_cli_appears_without_a_click(
    qtbot, main_window, workspace, tmp_path
) -> None:
    pane = main_window.pane("datasets")
    assert pane.list.list.count() == 0 and pane.empty.isVisible()
    src = tmp_path / "cli.csv"
    src.write_text("question,answer\nhi,hello\nbye,goodbye\n")
    r = demoai(workspace.root, "data", "import", str(src), "--name", "from-cli")
    assert r.returncode == 0, r.stderr
    qtbot.waitUntil(lambda: pane.list.list.count() == 1, timeout=10_000)
    assert pane.list.list.item(0).text() == "from-cli  (2 rows)"  # a name, not an id
    qtbot.waitUntil(lambda: pane.model is not None, timeout=10_000)
    assert pane.model.rowCount() == 2 and not pane.empty.isVisible()
    # a version written elsewhere (here a recipe applied by the CLI) replaces the one shown
    ds = pane.dataset.id
    first = pane.version.hash
    r = demoai(workspace.root, "data", "apply-recipe", ds, str(_recipe(tmp_path)))
    assert r.returncode == 0, r.stderr
    qtbot.waitUntil(lambda: pane.version.hash != first, timeout=10_000)
    assert pane.versions.count() == 2 and pane.model.rowCount() == 1


def _recipe(tmp_path: Path) -> Path:
    p = tmp_path / "recipe.json"
    p.write_text(
        json.dumps(
            {
                "steps": [
                    {"name": "regex_filter", "params": {"column": "question", "pattern": "^hi$"}}
                ]
            }
        )
    )
    return p


def test_screenshot_of_the_rows_tab(qtbot, main_window, workspace) -> None:
    ds = DatasetStore(workspace).create_dataset("tickets", _tickets()).dataset_id
    main_window.resize(1280, 760)
    pane = main_window.pane("datasets")
    pane.refresh_datasets(select=ds)
    qtbot.waitUntil(lambda: pane.model is not None, timeout=10_000)
    pane.model.setData(pane.model.index(1, 2), "edited, not saved")
    assert pane.editor.save_btn.isEnabled() and pane.tabs.currentWidget() is pane.editor
    assert pane.versions.item(0).text().startswith("● v1  created\n40 rows")
    qtbot.wait(50)
    _shot(main_window, "datasets-rows.png")


def test_rows_matched_by_a_key_column(qtbot, main_window, workspace) -> None:
    """Sorted and edited: by position most rows moved; by the id column, one changed row.
    A column with repeated values cannot be a key: the error says what to do, next to it."""
    store = DatasetStore(workspace)
    t = _tickets(6)
    v1 = store.create_dataset("tickets", t)
    rows = t.to_pylist()[::-1]
    rows[0]["answer"] = "new answer"  # id 6
    rows.append({"id": 7, "question": "How do I reset password 1?", "answer": "dup"})
    store.create_version(
        v1.dataset_id,
        pa.Table.from_pylist(rows, schema=t.schema),
        message="reversed",
        operation={"name": "edit", "params": {}},
    )
    pane = main_window.pane("datasets")
    pane.refresh_datasets(select=v1.dataset_id)
    qtbot.waitUntil(lambda: pane.model is not None, timeout=10_000)
    _compare_with(qtbot, pane, 1)
    view = pane.diff_view
    assert view.diff.key is None and view.diff.rows_moved > 0
    assert [view.key.itemText(i) for i in range(view.key.count())] == [
        "position",
        "column id",
        "column question",
        "column answer",
    ]
    view.key.setCurrentIndex(1)
    view.key.activated.emit(1)
    qtbot.waitUntil(lambda: view.diff is not None and view.diff.key == "id", timeout=10_000)
    m = view.model
    got = [(m.index(r, 0).data(), m.index(r, 1).data()) for r in range(m.rowCount())]
    assert got == [("changed", "6 → 1"), ("added", "7")]
    assert "rows matched by id" in view.summary.text()
    view.key.setCurrentIndex(2)
    view.key.activated.emit(2)
    qtbot.waitUntil(lambda: view.status.state == "error", timeout=10_000)
    assert "repeated values" in view.status.label.text()
    assert "compare without a key" in view.status.label.text()
