"""The table editor: one version's rows (any size, never copied), edits, and saving them.

Saving streams every row into a new version on a worker thread (the action
layer) from a snapshot of the edits and a file handle of its own; the table is
read-only until the version is written, and a cancelled or failed save leaves
no version behind.
"""

from __future__ import annotations

import html
import time
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.core.data.store import DatasetStore, VersionRecord
from app.ui.actions import ActionHandle, Progress
from app.ui.panes.datasets.qt_arrow_model import (
    ArrowCellDelegate,
    ArrowTableModel,
    configure_table_view,
)
from app.ui.panes.datasets.qt_query_bar import QueryBar
from app.ui.services import Services
from app.ui.widgets.status_line import StatusLine


class TableEditor(QWidget):
    """``saved(version)`` once a save has written its version."""

    saved = Signal(object)

    def __init__(self, services: Services, store: DatasetStore, parent: QWidget | None = None):
        super().__init__(parent)
        self.services = services
        self.store = store
        self.model: ArrowTableModel | None = None
        self.version: VersionRecord | None = None
        self.saving: ActionHandle[Any] | None = None
        self.open_ms = 0.0
        self._triggers = QAbstractItemView.EditTrigger.NoEditTriggers
        self.info = QLabel("")
        self.info.setObjectName("datasetInfo")
        self.info.setWordWrap(True)
        self.query_bar = QueryBar()
        self.query_bar.working.connect(lambda: self.info.setText("Working…"))
        self.query_bar.failed.connect(
            lambda e: self.info.setText(f"<span style='color:#c0392b'>{html.escape(e)}</span>")
        )
        self.query_bar.view_ready.connect(self._view_ready)
        self.table = QTableView()
        self.table.setObjectName("datasetTable")
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectItems)
        configure_table_view(self.table)
        self.cell_delegate = ArrowCellDelegate(None, self.table)
        self.table.setItemDelegate(self.cell_delegate)
        header = self.table.horizontalHeader()
        header.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        header.customContextMenuRequested.connect(
            lambda pos: self.query_bar.header_menu(header.logicalIndexAt(pos)).exec(
                header.mapToGlobal(pos)
            )
        )
        header.setToolTip("Right-click a column header to sort or filter by that column")
        header.sectionResized.connect(self._column_resized)
        self.undo_btn = QPushButton("Undo")
        self.redo_btn = QPushButton("Redo")
        self.add_row_btn = QPushButton("Add row")
        self.del_rows_btn = QPushButton("Delete rows")
        self.add_col_btn = QPushButton("Add column…")
        self.ren_col_btn = QPushButton("Rename column…")
        self.del_col_btn = QPushButton("Delete column")
        self.save_btn = QPushButton("Save version…")
        self.prepare_btn = QPushButton("Prepare…")
        self.generate_btn = QPushButton("Generate…")
        self.generate_btn.setToolTip("Self-instruct or paraphrase rows with a library model")
        for b, fn in (
            (self.undo_btn, self.undo),
            (self.redo_btn, self.redo),
            (self.add_row_btn, self.add_row),
            (self.del_rows_btn, self.delete_rows),
            (self.add_col_btn, self.add_column),
            (self.ren_col_btn, self.rename_column),
            (self.del_col_btn, self.delete_column),
            (self.save_btn, self.save_version),
        ):
            b.clicked.connect(lambda _=False, fn=fn: fn())
        self.status = StatusLine()
        edit_row = QHBoxLayout()
        for b in (
            self.add_row_btn,
            self.del_rows_btn,
            self.add_col_btn,
            self.ren_col_btn,
            self.del_col_btn,
        ):
            edit_row.addWidget(b)
        edit_row.addStretch(1)
        # two rows: one row of ten buttons made the pane wider than a laptop screen
        act_row = QHBoxLayout()
        act_row.addWidget(self.undo_btn)
        act_row.addWidget(self.redo_btn)
        act_row.addWidget(self.info, 1)
        act_row.addWidget(self.generate_btn)
        act_row.addWidget(self.prepare_btn)
        act_row.addWidget(self.save_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.query_bar)
        lay.addWidget(self.table, 1)
        lay.addLayout(edit_row)
        lay.addLayout(act_row)
        lay.addWidget(self.status)
        self.update_buttons()

    # -- opening ------------------------------------------------------------------------
    def open(self, version: VersionRecord | None) -> None:
        """Show ``version`` (None: nothing): the first rows at once, the rest on demand."""
        t0 = time.perf_counter()
        self.version = version
        if version is None:
            self.model = None
        else:
            pf = self.store.parquet_file(f"{version.dataset_id}@{version.hash}")
            self.model = ArrowTableModel(pf)
            self.model.changed.connect(self.update_buttons)
        self.cell_delegate.model = self.model
        self.table.setModel(self.model)
        self._fit_display_widths()
        self.query_bar.set_model(self.model)
        self.open_ms = (time.perf_counter() - t0) * 1000
        self.update_buttons()

    @property
    def has_changes(self) -> bool:
        return self.model is not None and self.model.has_changes

    def _column_resized(self, column: int, _old: int, new: int) -> None:
        if self.model is not None:
            self.model.set_display_width(column, new, self.table.fontMetrics().averageCharWidth())

    def _fit_display_widths(self) -> None:
        """Cells carry only as much text as their column can show (painting stays cheap)."""
        if self.model is None:
            return
        header = self.table.horizontalHeader()
        char = self.table.fontMetrics().averageCharWidth()
        for c in range(len(self.model.columns)):
            self.model.set_display_width(c, header.sectionSize(c), char)

    def _view_ready(self, view: Any) -> None:
        if self.model is not None:
            self.model.set_view(view)
        self.update_info()

    def update_info(self) -> None:
        if self.model is None or self.version is None:
            self.info.clear()
            return
        shown = self.model.rowCount()
        text = f"{shown:,} of {self.version.rows:,} rows shown"
        q = self.query_bar.query
        if q.column_filters:
            text += " · " + ", ".join(
                f"{c} contains “{t}”" for c, t in sorted(q.column_filters.items())
            )
        if self.model.has_changes:
            s = self.model.summary()
            text += (
                f" · unsaved: {s['cells_edited']} cell(s), "
                f"+{s['rows_added']} / -{s['rows_deleted']} rows"
            )
        self.info.setText(text)

    def update_buttons(self) -> None:
        m = self.model
        idle = m is not None and self.saving is None
        self.update_info()
        for b in (
            self.add_row_btn,
            self.del_rows_btn,
            self.add_col_btn,
            self.ren_col_btn,
            self.del_col_btn,
            self.prepare_btn,
            self.generate_btn,
        ):
            b.setEnabled(idle)
        self.undo_btn.setEnabled(bool(idle and m and m.undo_stack))
        self.redo_btn.setEnabled(bool(idle and m and m.redo_stack))
        self.save_btn.setEnabled(bool(idle and m and m.has_changes))

    # -- edits ---------------------------------------------------------------------------
    def undo(self) -> None:
        if self.model is not None and self.saving is None:
            self.model.undo()

    def redo(self) -> None:
        if self.model is not None and self.saving is None:
            self.model.redo()

    def add_row(self) -> None:
        if self.model is not None:
            row = self.model.add_row()
            self.table.scrollToBottom()
            self.table.setCurrentIndex(self.model.index(row, 0))

    def delete_rows(self) -> None:
        if self.model is None:
            return
        rows = sorted({i.row() for i in self.table.selectionModel().selectedIndexes()})
        if rows:
            self.model.delete_rows(rows)

    def _column(self) -> int | None:
        i = self.table.currentIndex()
        return i.column() if i.isValid() else None

    def add_column(self) -> None:
        if self.model is None:
            return
        name, ok = QInputDialog.getText(self, "Add column", "Name of the new (text) column")
        if ok:
            try:
                self.model.add_column(name.strip())
            except ValueError as exc:
                self.status.error(str(exc), "Choose another name.")

    def rename_column(self) -> None:
        c = self._column()
        if self.model is None or c is None:
            return
        name, ok = QInputDialog.getText(
            self, "Rename column", "New name", text=self.model.columns[c].name
        )
        if ok:
            try:
                self.model.rename_column(c, name.strip())
            except ValueError as exc:
                self.status.error(str(exc), "Choose another name.")

    def delete_column(self) -> None:
        c = self._column()
        if self.model is not None and c is not None:
            self.model.delete_column(c)

    # -- saving --------------------------------------------------------------------------
    def save_version(self, message: str | None = None) -> ActionHandle[Any] | None:
        """Save the unsaved edits as a new version (streamed off the UI thread; the old
        version stays). Returns the running action; ``saved`` fires when it is written."""
        m, v = self.model, self.version
        if m is None or v is None or not m.has_changes or self.saving is not None:
            return None
        if not isinstance(message, str):
            message, ok = QInputDialog.getText(
                self, "Save version", "What changed?", text="edited in the table"
            )
            if not ok:
                return None
        ref = f"{v.dataset_id}@{v.hash}"
        batches = m.frozen_batches(self.store.parquet_file(ref))
        summary, schema = m.summary(), m.output_schema()
        total = int(m.n_src) - summary["rows_deleted"] + summary["rows_added"]
        store, text = self.store, message or "edited in the table"

        def write(p: Progress) -> VersionRecord:
            def counted() -> Any:
                done = 0
                for b in batches:
                    p.check()  # a cancel stops here; the writer removes what it wrote
                    yield b
                    done += b.num_rows
                    p.update(done, total, f"Saving: {done:,} of {total:,} rows written")

            return store.create_version(
                v.dataset_id,
                counted(),
                message=text,
                operation={"name": "edit", "params": summary},
                parent=v.hash,
                schema=schema,
            )

        def finished(new: VersionRecord | None) -> None:
            self.saving = None
            self.table.setEditTriggers(self._triggers)
            if new is not None:
                self.saved.emit(new)
            self.update_buttons()

        self._triggers = self.table.editTriggers()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.saving = self.services.actions.run(
            self,
            "Saving version",
            write,
            changes=("versions", "datasets"),
            done=finished,
            failed=lambda _e: finished(None),
            status=self.status,
            cancellable=True,
            ok_text=f"Saved: {text}",
        )
        self.update_buttons()
        return self.saving
