"""The Datasets pane: 1M rows open at once, scroll to the end, edit, save a version, prepare."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PySide6.QtCore import Qt

from app.core.data.store import DatasetStore


@pytest.fixture
def million(workspace) -> str:
    n = 1_000_000
    ids = np.arange(n)
    table = pa.table(
        {
            "id": pa.array(ids),
            "text": pa.array([f"row {i} text" for i in range(n)]),
            "label": pa.array(np.where(ids % 3 == 0, "spam", "ham")),
        }
    )
    v = DatasetStore(workspace).create_dataset("big", table)
    return v.dataset_id


def test_million_rows_scroll_edit_save(qtbot, main_window, million, ui_watchdog) -> None:
    pane = main_window.pane("datasets")
    store = pane.store
    pane.open_dataset(million)
    assert pane.open_ms < 1000
    model = pane.model
    assert model.rowCount() == 1_000_000
    assert model.index(0, 1).data() == "row 0 text"
    pane.table.scrollToBottom()
    qtbot.wait(50)
    last = model.rowCount() - 1
    assert model.index(last, 1).data() == "row 999999 text"
    # only a few row groups were decoded: the table is not copied into Python
    assert len(model._cache) <= 6
    # edit the last cell through the view, as the delegate does
    assert model.setData(model.index(last, 1), "edited at the end")
    assert not model.setData(model.index(last, 0), "not a number")  # type checked
    assert pane.editor.save_btn.isEnabled() and "unsaved: 1 cell" in pane.editor.info.text()
    model.undo()
    assert model.index(last, 1).data() == "row 999999 text"
    model.redo()
    old = pane.version.hash
    # saving streams 1M rows on a worker thread: the UI thread never stalls > 100 ms
    with ui_watchdog.watch():
        handle = pane.save_version("fix the last row")
        assert handle is not None and not pane.editor.save_btn.isEnabled()
        assert pane.editor.status.state == "busy"
        qtbot.waitUntil(lambda: pane.version.hash != old, timeout=120_000)
    ui_watchdog.assert_no_stall()
    assert handle.error is None
    v = pane.version
    assert v.rows == 1_000_000 and v.operation["name"] == "edit"
    assert v.operation["params"]["cells_edited"] == 1
    items = [pane.versions.item(i).text() for i in range(pane.versions.count())]
    assert "fix the last row" in items[0] and items[0].startswith("● v2") and len(items) == 2
    assert pane.model is not model and not pane.model.has_changes
    t = store.read_table(f"{million}@{v.hash}", columns=["text"])
    assert t.column("text")[999_999].as_py() == "edited at the end"
    assert t.column("text")[999_998].as_py() == "row 999998 text"


def test_sort_filter_search_and_structure_edits(qtbot, main_window, workspace) -> None:
    table = pa.table(
        {
            "instruction": ["b task", "a task", "write an email", "c task"],
            "output": ["x" * 5, "y" * 300, "Dear team", "z"],
        }
    )
    ds = DatasetStore(workspace).create_dataset("small", table).dataset_id
    pane = main_window.pane("datasets")
    pane.refresh_datasets(select=ds)
    pane.open_dataset(ds)
    q = pane.editor.query_bar
    q.sort_col.setCurrentIndex(q.sort_col.findData("instruction"))
    q.apply_query()
    qtbot.waitUntil(lambda: pane.model.view is not None, timeout=10_000)
    assert [pane.model.index(r, 0).data() for r in range(4)] == [
        "a task",
        "b task",
        "c task",
        "write an email",
    ]
    q.sort_col.setCurrentIndex(0)
    q.expr.setText('len(output) > 100 or contains(instruction, "EMAIL")')
    q.apply_query()
    qtbot.waitUntil(lambda: pane.model.rowCount() == 2, timeout=10_000)
    assert {pane.model.index(r, 0).data() for r in range(2)} == {"a task", "write an email"}
    q.expr.setText("__import__('os')")
    q.apply_query()
    info = pane.editor.info
    qtbot.waitUntil(
        lambda: "not allowed" in info.text() or "Unknown" in info.text(), timeout=10_000
    )
    q.clear_query()
    q.search.setText("dear")
    q.apply_query()
    qtbot.waitUntil(lambda: pane.model.rowCount() == 1, timeout=10_000)
    q.clear_query()
    # structure edits
    m = pane.model
    m.add_column("notes")
    m.rename_column(0, "prompt")
    m.delete_rows([0])
    r = m.add_row()
    assert m.setData(m.index(r, 0), "new prompt")
    old = pane.version.hash
    pane.save_version("restructure")
    qtbot.waitUntil(lambda: pane.version.hash != old, timeout=30_000)
    out = pane.store.read_table(pane.ref())
    assert out.column_names == ["prompt", "output", "notes"]
    assert out.column("prompt").to_pylist() == ["a task", "write an email", "c task", "new prompt"]


def test_import_and_prepare_jobs(qtbot, main_window, tmp_path: Path) -> None:
    src = tmp_path / "tickets.jsonl"
    rows = [
        {"text": "Contact me at jane@example.com"},
        {"text": "Call +1 415 555 0100"},
        {"text": "fine"},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pane = main_window.pane("datasets")
    pane.import_file(str(src))
    qtbot.waitUntil(
        lambda: pane.dataset is not None and pane.dataset.name == "tickets", timeout=60_000
    )
    assert pane.model.rowCount() == 3
    job = pane.prepare({"name": "redact_pii", "params": {}})
    assert job is not None
    qtbot.waitUntil(lambda: pane.versions.count() == 2, timeout=60_000)
    text = [pane.model.index(r, 0).data() for r in range(3)]
    assert "jane@example.com" not in text[0] and text[2] == "fine"


def test_bad_import_is_reported(qtbot, main_window, tmp_path: Path, monkeypatch) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{broken\n{"a": 3}\n')
    pane = main_window.pane("datasets")
    pane.import_file(str(bad))
    status = pane.list.status  # next to the Import button
    assert status.state == "busy"
    qtbot.waitUntil(lambda: status.state == "error", timeout=60_000)
    assert "line 2" in status.label.text() and status.isVisible()
    assert DatasetStore(main_window.services.workspace).list_datasets() == []


def test_sample_dataset_first_run(qtbot, main_window) -> None:
    pane = main_window.pane("datasets")
    assert pane.empty.isVisible() and pane.list.sample_btn.isVisible()
    t0 = time.perf_counter()
    pane.add_sample()
    qtbot.waitUntil(lambda: pane.model is not None, timeout=10_000)
    assert time.perf_counter() - t0 < 10
    assert pane.model.rowCount() >= 50 and not pane.empty.isVisible()
    assert not pane.list.sample_btn.isVisible()


def test_display_blocks_match_the_file_across_row_groups(qtbot, tmp_path: Path) -> None:
    """Cells shown from cached 64-row blocks equal the file's values, whatever the
    row-group sizes (here 100: blocks straddle groups), with edits, sorting and nulls."""
    import pyarrow.parquet as pq

    from app.ui.panes.datasets.qt_arrow_model import ArrowTableModel

    n = 1_000
    texts = [None if i % 97 == 0 else f"line {i}\nsecond" for i in range(n)]
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"i": pa.array(range(n)), "t": pa.array(texts)}), path,
                   row_group_size=100)  # fmt: skip
    model = ArrowTableModel(pq.ParquetFile(path))
    rng = np.random.default_rng(0)
    for r in [0, 63, 64, 99, 100, 127, 128, 999, *rng.integers(0, n, 200).tolist()]:
        want = texts[r]
        assert model.index(r, 0).data() == str(r)
        assert model.index(r, 1).data() == (None if want is None else want.replace("\n", " ⏎ "))
    model.setData(model.index(5, 1), "changed")
    assert model.index(5, 1).data() == "changed" and model.index(6, 1).data() == "line 6 ⏎ second"
    model.set_view(np.arange(n - 1, -1, -1))  # reversed: rows no longer in file order
    assert model.index(0, 0).data() == "999" and model.index(n - 1 - 5, 1).data() == "changed"
    assert model.index(n - 1 - 500, 1).data() == "line 500 ⏎ second"


def test_column_header_filters_and_sort(qtbot, main_window, workspace) -> None:
    table = pa.table(
        {
            "text": ["Refund please", "printer broken", "refund again", "hello", "REFUNDED"],
            "label": ["billing", "it", "billing", "other", "billing"],
            "n": [3, 1, 4, 2, 5],
        }
    )
    ds = DatasetStore(workspace).create_dataset("tickets", table).dataset_id
    pane = main_window.pane("datasets")
    pane.refresh_datasets(select=ds)
    pane.open_dataset(ds)
    q = pane.editor.query_bar
    info = pane.editor.info
    menu = q.header_menu(0)
    labels = [a.text() for a in menu.actions() if a.text()]
    assert labels == ["Sort ascending", "Sort descending", "Filter text…"]
    q.set_column_filter("text", "refund")
    qtbot.waitUntil(lambda: pane.model.rowCount() == 3, timeout=10_000)
    q.set_column_filter("label", "bill")  # two column filters combine with AND
    q.header_menu(2).actions()[1].trigger()  # sort descending by n

    def shown() -> list[str]:
        return [pane.model.index(r, 2).data() for r in range(pane.model.rowCount())]

    qtbot.waitUntil(lambda: shown() == ["5", "4", "3"], timeout=10_000)  # file order: 3, 4, 5
    qtbot.waitUntil(lambda: "Working" not in info.text(), timeout=10_000)
    assert "text contains “refund”" in info.text() and "label contains" in info.text()
    assert "Clear the filter on text" in [a.text() for a in q.header_menu(0).actions()]
    q.set_column_filter("text", "")
    qtbot.waitUntil(lambda: pane.model.rowCount() == 3, timeout=10_000)  # billing rows
    assert "text contains" not in info.text()
    q.clear_query()
    assert pane.model.rowCount() == 5 and not q.column_filters
    pane.model.add_column("notes")
    assert not q.header_menu(3).actions()[0].isEnabled()


def test_cells_carry_as_much_text_as_the_column_shows(qtbot, main_window, workspace) -> None:
    long = "word " * 200
    ds = DatasetStore(workspace).create_dataset("long", pa.table({"t": [long, "short"]}))
    pane = main_window.pane("datasets")
    pane.refresh_datasets(select=ds.dataset_id)
    pane.open_dataset(ds.dataset_id)
    narrow = pane.model.index(0, 0).data()
    assert narrow.endswith("…") and len(narrow) < 120  # 220 px wide by default
    assert pane.model.index(1, 0).data() == "short"
    pane.table.horizontalHeader().resizeSection(0, 1200)
    wide = pane.model.index(0, 0).data()
    assert len(wide) > 2 * len(narrow) and wide.startswith(narrow[:-1])
    assert pane.model.index(0, 0).data(Qt.ItemDataRole.ToolTipRole).startswith(long.strip()[:900])


def test_the_fast_cell_delegate_paints_what_qt_would(qtbot, main_window, workspace) -> None:
    """The pane's delegate fills the style option straight from the model. Text that
    needs shaping (Arabic, a ligature, Japanese) is painted pixel for pixel as Qt's own
    delegate paints it; only all-ASCII text skips shaping; edits are in italics."""
    from PySide6.QtGui import QFont
    from PySide6.QtWidgets import QStyledItemDelegate, QStyleOptionViewItem

    from app.ui.panes.datasets.qt_arrow_model import ArrowCellDelegate

    texts = ["plain text", "ﬁ ligature, Kerning AV", "مرحبا بالعالم", "日本語のテキスト", None]
    ds = DatasetStore(workspace).create_dataset(
        "cells", pa.table({"t": texts, "n": [1, 2, 3, 4, 5]})
    )
    pane = main_window.pane("datasets")
    pane.refresh_datasets(select=ds.dataset_id)
    pane.open_dataset(ds.dataset_id)
    table, model = pane.table, pane.model
    delegate = table.itemDelegate()
    assert isinstance(delegate, ArrowCellDelegate)
    no_shaping = QFont.StyleStrategy.PreferNoShaping

    def option(row: int) -> QStyleOptionViewItem:
        opt = QStyleOptionViewItem()
        delegate.initStyleOption(opt, model.index(row, 0))
        return opt

    assert option(0).text == "plain text" and option(0).font.styleStrategy() & no_shaping
    for row in (1, 2, 3):
        assert option(row).text == texts[row]
        assert not option(row).font.styleStrategy() & no_shaping
        assert not option(row).font.italic()

    def cells() -> list[bytes]:
        table.viewport().repaint()
        image = table.viewport().grab().toImage()  # kept alive while its bits are copied
        out = []
        for row in range(len(texts)):
            rect = table.visualRect(model.index(row, 0))
            part = image.copy(rect)
            out.append(bytes(part.constBits()))
        return out

    ours = cells()
    table.setItemDelegate(QStyledItemDelegate(table))
    try:
        theirs = cells()
    finally:
        table.setItemDelegate(pane.editor.cell_delegate)
    assert [ours[r] == theirs[r] for r in (1, 2, 3, 4)] == [True] * 4
    assert len(set(ours[0])) > 1  # the ASCII cell is painted (not blank)
    assert model.setData(model.index(2, 0), "نص معدل")  # an unsaved edit: italic, shaped
    assert option(2).font.italic() and not option(2).font.styleStrategy() & no_shaping
    assert model.setData(model.index(0, 0), "edited")
    assert option(0).font.italic() and option(0).font.styleStrategy() & no_shaping


def test_a_version_says_what_made_it_in_words_not_json() -> None:
    from app.ui.panes.datasets.qt_versions_panel import describe_operation

    assert describe_operation({"name": "create", "params": {}}) == "Created"
    assert (
        describe_operation({"name": "dedupe", "params": {"columns": ["question"], "keep": "first"}})
        == "Drop exact duplicates (columns: question; keep: first)"
    )
    mapped = describe_operation(
        {"name": "map_template", "params": {"user_template": "{question}", "system": None}}
    )
    assert mapped == "Map to a training format (user template: {question})"
    assert "{" not in describe_operation({"name": "edit", "params": {"cells": 1}})
