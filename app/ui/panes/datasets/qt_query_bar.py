"""Search, filter expression, sort and column-header filters over the open version.

The view (a permutation or selection of row numbers) is computed off the UI
thread from the Parquet file; the table model only swaps its index, the data is
never copied.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import DemoAIError
from app.ui.panes.datasets.qt_arrow_model import ArrowTableModel
from app.ui.panes.datasets.view_query import ViewQuery, compute_view


class _ViewTask(QObject, QRunnable):
    """Computes a sort/filter/search view off the UI thread."""

    done = Signal(int, object, str)

    def __init__(self, serial: int, pf: Any, query: ViewQuery) -> None:
        QObject.__init__(self)
        QRunnable.__init__(self)
        self.setAutoDelete(False)
        self.serial, self.pf, self.query = serial, pf, query

    def run(self) -> None:
        try:
            self.done.emit(self.serial, compute_view(self.pf, self.query), "")
        except DemoAIError as exc:
            self.done.emit(self.serial, None, str(exc))
        except Exception as exc:  # shown in the pane, never a crash
            self.done.emit(self.serial, None, f"{type(exc).__name__}: {exc}")


class QueryBar(QWidget):
    """``working()`` when a view starts, then ``view_ready(view)`` or ``failed(text)``."""

    working = Signal()
    view_ready = Signal(object)
    failed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model: ArrowTableModel | None = None
        self.query = ViewQuery()
        self.column_filters: dict[str, str] = {}
        self._serial = 0
        self._tasks: dict[int, _ViewTask] = {}
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search all text columns…")
        self.search.setClearButtonEnabled(True)
        self.search.returnPressed.connect(self.apply_query)
        self.expr = QLineEdit()
        self.expr.setPlaceholderText(
            'Filter, e.g. len(output) > 200 and contains(instruction, "email")'
        )
        self.expr.returnPressed.connect(self.apply_query)
        self.sort_col = QComboBox()
        self.sort_order = QComboBox()
        self.sort_order.addItems(["ascending", "descending"])
        apply_btn = QPushButton("Apply")
        apply_btn.clicked.connect(self.apply_query)
        clear_btn = QPushButton("Clear")
        clear_btn.clicked.connect(self.clear_query)
        q1 = QHBoxLayout()
        q1.addWidget(self.search, 2)
        q1.addWidget(QLabel("Sort"))
        q1.addWidget(self.sort_col, 1)
        q1.addWidget(self.sort_order)
        q2 = QHBoxLayout()
        q2.addWidget(self.expr, 1)
        q2.addWidget(apply_btn)
        q2.addWidget(clear_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(q1)
        lay.addLayout(q2)

    def set_model(self, model: ArrowTableModel | None) -> None:
        """A new version is open: the query starts empty."""
        self.model = model
        self.query = ViewQuery()
        self.column_filters = {}
        self._serial += 1  # a view still computing was for the old file
        self.sort_col.clear()
        self.sort_col.addItem("(file order)", None)
        for c in model.columns if model is not None else []:
            self.sort_col.addItem(c.name, c.src)

    def header_menu(self, section: int) -> QMenu:
        """The column header's menu: sort by it, filter it (contains text), clear its filter."""
        menu = QMenu(self)
        if self.model is None or not 0 <= section < len(self.model.columns):
            return menu
        col = self.model.columns[section]
        if col.src is None:  # added in this session: not in the file yet
            menu.addAction("Save a version to sort or filter by this column").setEnabled(False)
            return menu
        src = col.src
        menu.addAction("Sort ascending", lambda: self.sort_by(src, descending=False))
        menu.addAction("Sort descending", lambda: self.sort_by(src, descending=True))
        menu.addSeparator()
        menu.addAction(f"Filter {col.name}…", lambda: self.ask_column_filter(src, col.name))
        if src in self.column_filters:
            menu.addAction(
                f"Clear the filter on {col.name}", lambda: self.set_column_filter(src, "")
            )
        if self.column_filters:
            menu.addAction("Clear all column filters", self.clear_column_filters)
        return menu

    def sort_by(self, column: str, *, descending: bool) -> None:
        i = self.sort_col.findData(column)
        if i >= 0:
            self.sort_col.setCurrentIndex(i)
        self.sort_order.setCurrentText("descending" if descending else "ascending")
        self.apply_query()

    def ask_column_filter(self, column: str, label: str) -> None:
        text, ok = QInputDialog.getText(
            self,
            f"Filter {label}",
            f"Show rows whose {label} contains (case-insensitive; empty clears):",
            text=self.column_filters.get(column, ""),
        )
        if ok:
            self.set_column_filter(column, text)

    def set_column_filter(self, column: str, text: str) -> None:
        """Keep rows whose ``column`` contains ``text`` (empty: remove the filter)."""
        if text.strip():
            self.column_filters[column] = text.strip()
        else:
            self.column_filters.pop(column, None)
        self.apply_query()

    def clear_column_filters(self) -> None:
        self.column_filters.clear()
        self.apply_query()

    def apply_query(self) -> None:
        if self.model is None:
            return
        self.query = ViewQuery(
            sort_column=self.sort_col.currentData(),
            descending=self.sort_order.currentText() == "descending",
            search=self.search.text().strip(),
            column_filters=dict(self.column_filters),
            expression=self.expr.text().strip(),
        )
        self._serial += 1
        task = _ViewTask(self._serial, self.model.pf, self.query)
        task.done.connect(self._view_ready)
        self._tasks[self._serial] = task
        self.working.emit()
        QThreadPool.globalInstance().start(task)

    def clear_query(self) -> None:
        self.search.clear()
        self.expr.clear()
        self.column_filters.clear()
        self.sort_col.setCurrentIndex(0)
        self._serial += 1
        if self.model is not None:
            self.query = ViewQuery()
            self.view_ready.emit(None)

    def _view_ready(self, serial: int, view: Any, error: str) -> None:
        self._tasks.pop(serial, None)
        if serial != self._serial or self.model is None:
            return
        if error:
            self.failed.emit(error)
        else:
            self.view_ready.emit(view)
