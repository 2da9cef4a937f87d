"""The changes between two versions as a table: one row per changed row, cells before → after.

The diff itself (:mod:`app.core.data.diff`) keeps every change as 17 bytes; this
view holds one page of changed rows with their values (``PAGE`` rows) and pages
through the rest, so a diff of millions of rows costs the window one page.
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QRect,
    QSize,
    Qt,
)
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.core.data.diff import RowChange, VersionDiff
from app.core.data.ops import OpContext
from app.ui.actions import Progress
from app.ui.panes.datasets.qt_arrow_model import display_text
from app.ui.services import Services
from app.ui.widgets.status_line import StatusLine

#: Changed rows held (and shown) at a time.
PAGE = 200
_Index = QModelIndex | QPersistentModelIndex
#: Translucent tints, readable on light and dark themes.
TINT = {
    "changed": QColor(255, 193, 7, 40),
    "added": QColor(46, 160, 67, 60),
    "removed": QColor(218, 54, 51, 60),
    "moved": QColor(56, 139, 253, 50),
}
CELL_CHANGED = QColor(255, 170, 0, 150)
ARROW = "  →  "
#: Widest a data column starts (a changed cell holds before and after).
MAX_COLUMN_PX = 360


def row_label(c: RowChange) -> str:
    """Where the row is, numbered as the table shows rows (from 1)."""
    if c.kind == "added":
        return f"{c.new_row}"
    if c.kind == "removed":
        return f"was {c.old_row}"
    if c.old_row != c.new_row:
        return f"{c.old_row} → {c.new_row}"
    return f"{c.new_row}"


def _text(v: Any, limit: int = 200) -> str:
    return "∅" if v is None else str(display_text(v, limit))


class DiffModel(QAbstractTableModel):
    """One page of :class:`RowChange`: change, row, then every column of either version."""

    def __init__(self) -> None:
        super().__init__()
        self.columns: list[str] = []
        self.rows: list[RowChange] = []
        #: (text, changed) of each cell shown so far: Qt asks for a cell many times (each
        #: role, size hints, paint), and the text is formatted once per page.
        self._cells: dict[tuple[int, int], tuple[str, bool]] = {}
        self._strike = QFont()
        self._strike.setStrikeOut(True)

    def set_page(self, columns: list[str], rows: list[RowChange]) -> None:
        self.beginResetModel()
        self.columns, self.rows = list(columns), list(rows)
        self._cells = {}
        self.endResetModel()

    def rowCount(self, parent: _Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else 2 + len(self.columns)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = 0) -> Any:
        if role != Qt.ItemDataRole.DisplayRole or orientation != Qt.Orientation.Horizontal:
            return None
        return ("Change", "Row", *self.columns)[section]

    def cell(self, row: int, column: int) -> tuple[str, bool]:
        """(text, changed) of a cell."""
        key = (row, column)
        hit = self._cells.get(key)
        if hit is None:
            hit = self._cells[key] = self._cell(row, column)
        return hit

    def _values(self, row: int, column: int) -> tuple[Any, Any, bool, bool]:
        """(before, after, in the old version, in the new version) of a data cell."""
        c = self.rows[row]
        name = self.columns[column - 2]
        before = c.before.get(name) if c.before is not None else None
        after = c.after.get(name) if c.after is not None else None
        return (
            before,
            after,
            c.before is not None and name in c.before,
            (c.after is not None and name in c.after),
        )

    def _cell(self, row: int, column: int) -> tuple[str, bool]:
        c = self.rows[row]
        if column == 0:
            return c.kind, False
        if column == 1:
            return row_label(c), False
        before, after, in_old, in_new = self._values(row, column)
        if self.columns[column - 2] in c.changed:
            return f"{_text(before)}{ARROW}{_text(after)}", True
        if c.kind == "removed" or (in_old and not in_new):
            return _text(before), False
        return _text(after), False

    def tooltip(self, row: int, column: int) -> str | None:
        """The longer text of a data cell (made only when the pointer rests on it)."""
        if column < 2:
            return None
        c = self.rows[row]
        before, after, in_old, in_new = self._values(row, column)
        if self.columns[column - 2] in c.changed:
            return f"Before:\n{_text(before, 2000)}\n\nAfter:\n{_text(after, 2000)}"
        if c.kind == "removed" or (in_old and not in_new):
            return _text(before, 2000)
        return _text(after, 2000)

    def data(self, index: _Index, role: int = 0) -> Any:
        if not index.isValid():
            return None
        r, col = index.row(), index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self.cell(r, col)[0]
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.tooltip(r, col)
        kind = self.rows[r].kind
        if role == Qt.ItemDataRole.BackgroundRole:
            if col >= 2 and self.cell(r, col)[1]:
                return QBrush(CELL_CHANGED)
            return QBrush(TINT[kind])
        if role == Qt.ItemDataRole.FontRole and kind == "removed" and col >= 2:
            return self._strike
        return None


class DiffCellDelegate(QStyledItemDelegate):
    """A changed cell in two lines: the value before (struck out), the value after."""

    def sizeHint(self, option: QStyleOptionViewItem, index: _Index) -> QSize:
        hint = super().sizeHint(option, index)
        model = index.model()
        if isinstance(model, DiffModel) and index.column() >= 2:
            text, changed = model.cell(index.row(), index.column())
            if changed:
                bold = QFont(option.font)
                bold.setBold(True)
                before, _, after = text.partition(ARROW)
                wide = max(
                    QFontMetrics(option.font).horizontalAdvance(before),
                    QFontMetrics(bold).horizontalAdvance(after),
                )
                hint.setWidth(wide + 12)
        return hint

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _Index) -> None:
        model = index.model()
        if not isinstance(model, DiffModel) or index.column() < 2:
            super().paint(painter, option, index)
            return
        text, changed = model.cell(index.row(), index.column())
        if not changed:
            super().paint(painter, option, index)
            return
        before, _, after = text.partition(ARROW)
        painter.save()
        painter.fillRect(option.rect, CELL_CHANGED)
        rect = option.rect.adjusted(4, 2, -4, -2)
        half = rect.height() // 2
        top = QRect(rect.left(), rect.top(), rect.width(), half)
        bottom = QRect(rect.left(), rect.top() + half, rect.width(), rect.height() - half)
        metrics = QFontMetrics(option.font)
        font = QFont(option.font)
        font.setStrikeOut(True)
        painter.setFont(font)
        painter.setPen(option.palette.color(QPalette.ColorRole.PlaceholderText))
        flags = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        elide = Qt.TextElideMode.ElideRight
        painter.drawText(top, flags, metrics.elidedText(before, elide, top.width()))
        font.setStrikeOut(False)
        font.setBold(True)
        painter.setFont(font)
        painter.setPen(option.palette.color(QPalette.ColorRole.Text))
        bold = QFontMetrics(font)
        painter.drawText(bottom, flags, bold.elidedText(after, elide, bottom.width()))
        painter.restore()


class DiffView(QWidget):
    """Compares two versions off the UI thread and pages through the changed rows."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.diff: VersionDiff | None = None
        self.start = 0
        self.summary = QLabel(
            "Choose a version on the right and press <b>Compare with current</b>."
        )
        self.summary.setObjectName("diffSummary")
        self.summary.setWordWrap(True)
        self.model = DiffModel()
        self.table = QTableView()
        self.table.setObjectName("diffTable")
        self.table.setModel(self.model)
        self.table.setWordWrap(False)
        self.table.setItemDelegate(DiffCellDelegate(self.table))
        self.table.verticalHeader().hide()
        # fitting a column to its contents looks at the first 50 rows of the page, not all
        # of them: the widths are capped and long values elide anyway
        self.table.horizontalHeader().setResizeContentsPrecision(50)
        # two lines a row: a changed cell shows its value before over its value after
        line = self.table.fontMetrics().height()
        self.table.verticalHeader().setDefaultSectionSize(2 * line + 8)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.prev_btn = QPushButton("‹ Previous")
        self.next_btn = QPushButton("Next ›")
        self.page_label = QLabel()
        self.page_label.setObjectName("diffPage")
        self.prev_btn.clicked.connect(lambda: self.show_page(self.start - PAGE))
        self.next_btn.clicked.connect(lambda: self.show_page(self.start + PAGE))
        self.key = QComboBox()
        self.key.setObjectName("diffKey")
        self.key.addItem("position", None)
        self.key.setToolTip(
            "How rows of the two versions are paired: by position (edits, inserts and "
            "deletes found as in a text diff), or by a column whose values identify rows"
        )
        self.key.activated.connect(self._key_chosen)
        self._pair: tuple[str, str, str] | None = None  # dataset, old, new
        self.status = StatusLine()
        nav = QHBoxLayout()
        nav.addWidget(QLabel("Match rows by"))
        nav.addWidget(self.key)
        nav.addWidget(self.page_label, 1)
        nav.addWidget(self.prev_btn)
        nav.addWidget(self.next_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.summary)
        lay.addWidget(self.table, 1)
        lay.addLayout(nav)
        lay.addWidget(self.status)
        self._update_nav()

    def compare(self, dataset_id: str, old: str, new: str, *, key: str | None = None) -> Any:
        """Diff ``old`` → ``new`` and show the first page (returns the action's handle)."""
        from app.core.data.diff import diff_versions, read_version_changes

        ws = self.services.workspace
        self._pair = (dataset_id, old, new)

        def run(p: Progress) -> tuple[VersionDiff, list[RowChange]]:
            def step(fraction: float | None, message: str) -> None:
                p.update(fraction or 0.0, 1.0 if fraction is not None else None, message)

            ctx = OpContext(progress=step, check_cancelled=p.check)
            d = diff_versions(ws, dataset_id, old, new, key=key, ctx=ctx)
            return d, read_version_changes(ws, d, 0, PAGE)

        self.diff = None
        self.model.set_page([], [])
        self._update_nav()
        return self.services.actions.run(
            self,
            "Comparing versions",
            run,
            done=lambda result: self._shown(*result, start=0),
            status=self.status,
            cancellable=True,
        )

    def show_page(self, start: int) -> Any:
        d = self.diff
        if d is None:
            return None
        start = max(0, min(start, max(d.changes - 1, 0)))
        from app.core.data.diff import read_version_changes

        ws = self.services.workspace
        return self.services.actions.run(
            self,
            "Reading changed rows",
            lambda _p: read_version_changes(ws, d, start, PAGE),
            done=lambda rows: self._shown(d, rows, start=start),
            status=self.status,
        )

    def _shown(self, d: VersionDiff, rows: list[RowChange], *, start: int) -> None:
        self.diff, self.start = d, start
        self.model.set_page(d.columns, rows)
        self.summary.setText(summary_html(d))
        self.key.blockSignals(True)
        self.key.clear()
        self.key.addItem("position", None)
        for c in d.compared_columns:
            self.key.addItem(f"column {c}", c)
        self.key.setCurrentIndex(max(0, self.key.findData(d.key)) if d.key else 0)
        self.key.blockSignals(False)
        self._fit_columns()
        self._update_nav()

    def _key_chosen(self, _index: int) -> None:
        if self._pair is not None:
            self.compare(*self._pair, key=self.key.currentData())

    def _fit_columns(self) -> None:
        """Every column as wide as its text (up to a limit); data columns shrink in
        proportion when together they are wider than the view."""
        header = self.table.horizontalHeader()
        widths = []
        for c in range(self.model.columnCount()):
            self.table.resizeColumnToContents(c)
            widths.append(header.sectionSize(c))
        data = [max(60, min(MAX_COLUMN_PX, w)) for w in widths[2:]]
        room = self.table.viewport().width() - sum(widths[:2])
        if data and sum(data) > room > 0:
            data = [max(80, w * room // sum(data)) for w in data]
        for c, w in enumerate(data, 2):
            header.resizeSection(c, w)

    def _update_nav(self) -> None:
        d = self.diff
        shown = self.model.rowCount()
        self.prev_btn.setEnabled(d is not None and self.start > 0)
        self.next_btn.setEnabled(d is not None and self.start + shown < d.changes)
        if d is None or not d.changes:
            self.page_label.setText("")
            return
        more = d.changes - self.start - shown
        text = f"Changed rows {self.start + 1:,}–{self.start + shown:,} of {d.changes:,}"
        if more > 0:
            text += f" · {more:,} more changes"
        self.page_label.setText(text)

    def clear(self) -> None:
        self.diff = None
        self._pair = None
        self.key.clear()
        self.key.addItem("position", None)
        self.model.set_page([], [])
        self.summary.setText("Choose a version on the right and press <b>Compare with current</b>.")
        self._update_nav()


def summary_html(d: VersionDiff) -> str:
    """One paragraph: which versions, how many rows of each kind, what happened to columns."""
    parts = [
        f"<b>{html.escape(d.old_label)} → {html.escape(d.new_label)}</b>: "
        f"{d.rows_old:,} → {d.rows_new:,} rows · "
        f"<span style='background:rgba(255,193,7,0.35)'>&nbsp;{d.rows_changed:,} changed&nbsp;</span> · "
        f"<span style='background:rgba(46,160,67,0.35)'>&nbsp;{d.rows_added:,} added&nbsp;</span> · "
        f"<span style='background:rgba(218,54,51,0.35)'>&nbsp;{d.rows_removed:,} removed&nbsp;</span>"
    ]
    if d.rows_moved:
        parts.append(f" · {d.rows_moved:,} moved")
    if d.key:
        parts.append(f" · rows matched by {html.escape(d.key)}")
    if d.columns_added:
        parts.append(f"<br>Columns added: {html.escape(', '.join(d.columns_added))}")
    if d.columns_removed:
        parts.append(f"<br>Columns removed: {html.escape(', '.join(d.columns_removed))}")
    for t in d.type_changed:
        parts.append(
            f"<br>Column {html.escape(t['column'])}: {html.escape(t['old'])} → "
            f"{html.escape(t['new'])} (not compared)"
        )
    if not d.changes and not d.schema_changed:
        parts.append("<br>The two versions hold the same rows.")
    return "".join(parts)
