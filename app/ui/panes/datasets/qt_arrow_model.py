"""A virtual table over a Parquet dataset version, with unsaved edits on top.

The model never copies the dataset into Python objects: it knows the row
count from the file's metadata and decodes only the row groups that the view
shows (an LRU cache of a few groups). Sort/filter/search produce an index of
source rows (see ``view_query``). Edits, added and deleted rows, and column
changes live in an overlay with undo/redo until they are saved as a new
version, streamed batch by batch.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QFont, QFontMetrics
from PySide6.QtWidgets import QStyledItemDelegate, QStyleOptionViewItem

_Index = QModelIndex | QPersistentModelIndex
_uid = itertools.count(1)
#: Most characters a cell shows (the tooltip has all). A column narrower than that gets
#: fewer (see :meth:`ArrowTableModel.set_display_width`): laying out text the view would
#: elide anyway is most of the cost of painting a screen of long texts.
MAX_CELL_CHARS = 500
#: Source rows whose display strings are converted together (one vectorised
#: ``to_pylist`` instead of a scalar conversion per cell); blocks kept in an LRU.
BLOCK_ROWS = 64
CACHE_BLOCKS = 512  # a screen needs ~2 blocks per column
# Roles as plain ints: data() runs ~1,000 times per painted screen, and comparing
# ints is much cheaper than going through Python enums on every call.
_DISPLAY = Qt.ItemDataRole.DisplayRole.value
_EDIT = Qt.ItemDataRole.EditRole.value
_TOOLTIP = Qt.ItemDataRole.ToolTipRole.value
_FONT = Qt.ItemDataRole.FontRole.value
_HAS_DISPLAY = QStyleOptionViewItem.ViewItemFeature.HasDisplay
_FLAGS = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
_FLAGS_EDIT = _FLAGS | Qt.ItemFlag.ItemIsEditable


def configure_table_view(view: Any) -> None:
    """How the Datasets pane sets up its QTableView (the benchmark uses the same):
    one line per row, fixed row and column sizes, nothing measured per cell, and
    row numbers (digits only) drawn without OpenType shaping."""
    from PySide6.QtGui import QFont

    rows = view.verticalHeader()
    rows.setDefaultSectionSize(22)
    font = rows.font()
    font.setStyleStrategy(QFont.StyleStrategy.PreferNoShaping)
    rows.setFont(font)
    view.horizontalHeader().setDefaultSectionSize(220)
    view.setWordWrap(False)


def display_text(v: Any, limit: int = MAX_CELL_CHARS) -> str | None:
    """How a cell value is shown in the table (one line, at most ``limit`` characters)."""
    if v is None:
        return None
    text = v if isinstance(v, str) else str(v)
    if "\n" in text:
        text = text.replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class Column:
    name: str
    src: str | None  # the source column, None for a column added in this session
    type: pa.DataType
    uid: int


@dataclass
class _Change:
    text: str
    undo: Callable[[], None]
    redo: Callable[[], None]


def _coerce(value: str, t: pa.DataType) -> Any:
    """The user's text as a value of column type ``t`` (ValueError when it cannot be)."""
    if value == "" and not pa.types.is_string(t) and not pa.types.is_large_string(t):
        return None
    if pa.types.is_integer(t):
        return int(value)
    if pa.types.is_floating(t):
        return float(value)
    if pa.types.is_boolean(t):
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError("expected true or false")
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return value
    raise ValueError(f"cells of type {t} cannot be edited here")


class ArrowCellDelegate(QStyledItemDelegate):
    """Paints :class:`ArrowTableModel` cells with one Python call per cell.

    Qt's own ``initStyleOption`` asks the model for seven roles (font, alignment,
    colours, check state, icon, text, background), each a call into Python; this
    model only ever has text and an italic font for unsaved changes, so the option
    is filled directly from the model: a screen costs ~175 calls instead of ~1,200.

    A cell whose text is all ASCII is drawn with a font that skips OpenType shaping
    (kerning and ligatures only, for such text): shaping is the largest single cost
    of painting a screen of text. Any other text is shaped as usual; the whole view
    cannot skip shaping, because Qt then draws Arabic unjoined and in the wrong
    order (seen in a screenshot, kept by a test).
    """

    def __init__(self, model: ArrowTableModel | None, parent: Any = None) -> None:
        super().__init__(parent)
        self.model = model  # the pane points this at the model it shows
        self._fonts: list[QFont] | None = None  # [shaped italic, plain ASCII, italic ASCII]

    def _make_fonts(self, base: QFont) -> list[QFont]:
        italic = QFont(base)
        italic.setItalic(True)
        fast = QFont(base)
        fast.setStyleStrategy(QFont.StyleStrategy.PreferNoShaping)
        fast_italic = QFont(fast)
        fast_italic.setItalic(True)
        return [italic, fast, fast_italic]

    def initStyleOption(self, option: QStyleOptionViewItem, index: _Index) -> None:
        model = self.model
        if model is None or not isinstance(index, QModelIndex) or index.model() is not model:
            super().initStyleOption(option, index)
            return
        option.index = index
        row, column = index.row(), index.column()
        text = model.display(row, column)
        changed = bool(model.edits or model.added) and model.is_changed(row, column)
        if self._fonts is None:
            self._fonts = self._make_fonts(option.font)
        if text is not None:
            option.features = option.features | _HAS_DISPLAY
            option.text = text
            if text.isascii():
                option.font = self._fonts[2 if changed else 1]
                if changed:
                    option.fontMetrics = QFontMetrics(self._fonts[2])
                return
        if changed:
            option.font = self._fonts[0]
            option.fontMetrics = QFontMetrics(self._fonts[0])


class ArrowTableModel(QAbstractTableModel):
    """Rows are view rows; ``row_id`` maps them to source rows (>= 0) or added rows (< 0)."""

    changed = Signal()  # the overlay (unsaved edits) changed

    def __init__(self, pf: pq.ParquetFile, *, cache_groups: int = 6) -> None:
        super().__init__()
        self.pf = pf
        self.n_src = pf.metadata.num_rows
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        self._rg_starts = np.cumsum([0, *sizes])[:-1] if sizes else np.zeros(0, dtype=np.int64)
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()
        self._cache_groups = cache_groups
        self.columns = [Column(f.name, f.name, f.type, next(_uid)) for f in pf.schema_arrow]
        self.view: np.ndarray | None = None
        self._rows: np.ndarray | None = None  # effective source rows (None: identity)
        self.edits: dict[tuple[int, int], Any] = {}
        self.deleted: set[int] = set()
        self.added: list[int] = []  # ids of added rows: -1, -2, ...
        self._next_added = -1
        self.undo_stack: list[_Change] = []
        self.redo_stack: list[_Change] = []
        self._live: list[int] = []
        self._count = int(self.n_src)
        self._blocks: OrderedDict[tuple[int, str, int], list[str | None]] = OrderedDict()
        self._limits: dict[int, int] = {}  # column uid -> characters shown

    # -- reading ------------------------------------------------------------------------
    def _group(self, g: int) -> pa.Table:
        t = self._cache.get(g)
        if t is None:
            t = self.pf.read_row_group(g, use_threads=False)
            self._cache[g] = t
            if len(self._cache) > self._cache_groups:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(g)
        return t

    def source_value(self, row: int, src: str) -> Any:
        g = int(np.searchsorted(self._rg_starts, row, side="right") - 1)
        t = self._group(g)
        return t.column(src)[row - int(self._rg_starts[g])].as_py()

    def set_display_width(self, column: int, pixels: int, char_pixels: float) -> None:
        """Show about as many characters as a column ``pixels`` wide can hold (plus a margin,
        the view elides the rest); called by the view when a column is resized."""
        if 0 <= column < len(self.columns):
            chars = int(pixels / max(char_pixels, 1.0) * 1.5) + 8
            self._limits[self.columns[column].uid] = max(16, min(chars, MAX_CELL_CHARS))

    def _block(self, b: int, src: str, limit: int) -> list[str | None]:
        """Display strings of source rows ``b*BLOCK_ROWS ...`` of column ``src``."""
        key = (b, src, limit)
        block = self._blocks.get(key)
        if block is not None:
            self._blocks.move_to_end(key)
            return block
        start = b * BLOCK_ROWS
        stop = min(start + BLOCK_ROWS, int(self.n_src))
        g = int(np.searchsorted(self._rg_starts, start, side="right") - 1)
        g_start = int(self._rg_starts[g])
        t = self._group(g)
        if stop - g_start <= t.num_rows:  # the block lies in one row group
            values = t.column(src).slice(start - g_start, stop - start).to_pylist()
        else:
            values = [self.source_value(r, src) for r in range(start, stop)]
        block = [display_text(v, limit) for v in values]
        self._blocks[key] = block
        if len(self._blocks) > CACHE_BLOCKS:
            self._blocks.popitem(last=False)
        return block

    def _base_count(self) -> int:
        if self._rows is not None:
            return len(self._rows)
        return int(self.n_src)

    def row_id(self, view_row: int) -> int:
        rows = self._rows
        if rows is None:
            if view_row < self.n_src:
                return view_row
        elif view_row < len(rows):
            return int(rows[view_row])
        return int(self._live[view_row - self._base_count()])

    def _live_added(self) -> list[int]:
        return [a for a in self.added if a not in self.deleted]

    def value(self, row_id: int, col: Column) -> Any:
        key = (row_id, col.uid)
        if key in self.edits:
            return self.edits[key]
        if row_id < 0 or col.src is None:
            return None
        return self.source_value(row_id, col.src)

    # -- view ----------------------------------------------------------------------------
    def set_view(self, view: np.ndarray | None) -> None:
        self.beginResetModel()
        self.view = view
        self._recompute_rows()
        self.endResetModel()

    def _recompute_rows(self) -> None:
        self._live = self._live_added()
        src_deleted = np.fromiter((d for d in self.deleted if d >= 0), dtype=np.int64)
        if self.view is None and len(src_deleted) == 0:
            self._rows = None
        else:
            base = self.view if self.view is not None else np.arange(self.n_src, dtype=np.int64)
            if len(src_deleted):
                base = base[~np.isin(base, src_deleted)]
            self._rows = base
        self._count = self._base_count() + len(self._live)

    # -- Qt -------------------------------------------------------------------------------
    def rowCount(self, parent: _Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else self._count

    def columnCount(self, parent: _Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = 0) -> Any:
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return self.columns[section].name
        return str(self.row_id(section) + 1) if self.row_id(section) >= 0 else "new"

    def flags(self, index: _Index) -> Qt.ItemFlag:
        return _FLAGS_EDIT if index.isValid() else _FLAGS

    def display(self, row: int, column: int) -> str | None:
        """The text cell (``row``, ``column``) shows (what DisplayRole returns)."""
        rid = self.row_id(row)
        col = self.columns[column]
        if (
            rid >= 0
            and col.src is not None
            and (not self.edits or (rid, col.uid) not in self.edits)
        ):
            limit = self._limits.get(col.uid, MAX_CELL_CHARS)
            if self._rows is None:  # file order: neighbours are shown together
                return self._block(rid // BLOCK_ROWS, col.src, limit)[rid % BLOCK_ROWS]
            return display_text(self.source_value(rid, col.src), limit)
        return display_text(self.value(rid, col), self._limits.get(col.uid, MAX_CELL_CHARS))

    def is_changed(self, row: int, column: int) -> bool:
        """Whether the cell holds an unsaved edit or is in an added row (shown in italics)."""
        if not self.edits and not self.added:
            return False
        rid = self.row_id(row)
        return rid < 0 or (rid, self.columns[column].uid) in self.edits

    def data(self, index: _Index, role: int = 0) -> Any:
        if role == _DISPLAY:
            return self.display(index.row(), index.column())
        if role == _FONT:
            if self.is_changed(index.row(), index.column()):
                f = QFont()
                f.setItalic(True)
                return f
            return None
        if role != _EDIT and role != _TOOLTIP:
            return None
        v = self.value(self.row_id(index.row()), self.columns[index.column()])
        if v is None:
            return "" if role == _EDIT else None
        text = v if isinstance(v, str) else str(v)
        if role == _TOOLTIP:
            return text if len(text) <= 4000 else text[:4000] + "…"
        return text

    def setData(self, index: _Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if not index.isValid() or role != Qt.ItemDataRole.EditRole:
            return False
        col = self.columns[index.column()]
        try:
            new = _coerce(str(value), col.type)
        except ValueError:
            return False
        self.set_cell(self.row_id(index.row()), col, new)
        return True

    # -- changes (each with undo) ------------------------------------------------------------
    def _push(self, change: _Change) -> None:
        change.redo()
        self.undo_stack.append(change)
        self.redo_stack.clear()
        self.changed.emit()

    def undo(self) -> None:
        if self.undo_stack:
            c = self.undo_stack.pop()
            c.undo()
            self.redo_stack.append(c)
            self.changed.emit()

    def redo(self) -> None:
        if self.redo_stack:
            c = self.redo_stack.pop()
            c.redo()
            self.undo_stack.append(c)
            self.changed.emit()

    def _reset(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            self.beginResetModel()
            fn()
            self._recompute_rows()
            self.endResetModel()

        return run

    def set_cell(self, rid: int, col: Column, new: Any) -> None:
        key = (rid, col.uid)
        had, old = key in self.edits, self.edits.get(key)

        def redo() -> None:
            self.edits[key] = new
            self._cell_changed(rid, col)

        def undo() -> None:
            if had:
                self.edits[key] = old
            else:
                self.edits.pop(key, None)
            self._cell_changed(rid, col)

        self._push(_Change(f"edit {col.name}", undo, redo))

    def _cell_changed(self, rid: int, col: Column) -> None:
        c = self.columns.index(col) if col in self.columns else -1
        for r in self._view_rows_of(rid):
            i = self.index(r, max(c, 0))
            self.dataChanged.emit(i, i)

    def _view_rows_of(self, rid: int) -> list[int]:
        if rid < 0:
            live = self._live_added()
            return [self._base_count() + live.index(rid)] if rid in live else []
        if self._rows is None:
            return [rid]
        hits = np.flatnonzero(self._rows == rid)
        return [int(h) for h in hits[:1]]

    def add_row(self) -> int:
        rid = self._next_added
        self._next_added -= 1

        def redo() -> None:
            self.added.append(rid)

        def undo() -> None:
            self.added.remove(rid)

        self._push(_Change("add row", self._reset(undo), self._reset(redo)))
        return self.rowCount() - 1

    def delete_rows(self, view_rows: list[int]) -> None:
        rids = {self.row_id(r) for r in view_rows}

        def redo() -> None:
            self.deleted |= rids

        def undo() -> None:
            self.deleted -= rids

        self._push(_Change(f"delete {len(rids)} row(s)", self._reset(undo), self._reset(redo)))

    def add_column(self, name: str) -> None:
        self._check_name(name)
        col = Column(name, None, pa.string(), next(_uid))
        self._push(
            _Change(
                f"add column {name}",
                self._reset(lambda: self.columns.remove(col)),
                self._reset(lambda: self.columns.append(col)),
            )
        )

    def rename_column(self, c: int, name: str) -> None:
        col = self.columns[c]
        if name == col.name:
            return
        self._check_name(name)
        old = col.name

        def set_name(n: str) -> Callable[[], None]:
            def run() -> None:
                col.name = n
                self.headerDataChanged.emit(Qt.Orientation.Horizontal, 0, len(self.columns) - 1)

            return run

        self._push(_Change(f"rename {old} to {name}", set_name(old), set_name(name)))

    def delete_column(self, c: int) -> None:
        col = self.columns[c]
        self._push(
            _Change(
                f"delete column {col.name}",
                self._reset(lambda: self.columns.insert(c, col)),
                self._reset(lambda: self.columns.remove(col)),
            )
        )

    def _check_name(self, name: str) -> None:
        if not name.strip():
            raise ValueError("A column needs a name.")
        if any(c.name == name for c in self.columns):
            raise ValueError(f"There is already a column '{name}'.")

    # -- saving ----------------------------------------------------------------------------
    @property
    def has_changes(self) -> bool:
        return bool(self.undo_stack)

    def summary(self) -> dict[str, Any]:
        src_cols = {f.name for f in self.pf.schema_arrow}
        kept = {c.src for c in self.columns if c.src}
        return {
            "cells_edited": sum(1 for (r, _) in self.edits if r >= 0 and r not in self.deleted),
            "rows_added": len(self._live_added()),
            "rows_deleted": sum(1 for d in self.deleted if d >= 0),
            "columns_added": [c.name for c in self.columns if c.src is None],
            "columns_deleted": sorted(src_cols - kept),
            "columns_renamed": {c.src: c.name for c in self.columns if c.src and c.src != c.name},
        }

    def batches(self, batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
        """The edited table in file order, streamed batch by batch."""
        return _stream(
            self.pf, self.columns, self.edits, self.deleted, self._live_added(), batch_rows
        )

    def frozen_batches(
        self, pf: pq.ParquetFile, batch_rows: int = 65536
    ) -> Iterator[pa.RecordBatch]:
        """:meth:`batches` of the edits as they are now, read from ``pf``: a file object of
        its own, so a worker thread can stream the save while the view keeps reading."""
        columns = [replace(c) for c in self.columns]
        return _stream(
            pf, columns, dict(self.edits), set(self.deleted), self._live_added(), batch_rows
        )

    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type) for c in self.columns])


def _stream(
    pf: pq.ParquetFile,
    columns: list[Column],
    edits: dict[tuple[int, int], Any],
    deleted: set[int],
    live: list[int],
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """The source rows with ``edits`` applied and ``deleted`` left out, then the added rows."""
    schema = pa.schema([pa.field(c.name, c.type) for c in columns])
    edits_by_col: dict[int, dict[int, Any]] = {}
    for (rid, uid), v in edits.items():
        edits_by_col.setdefault(uid, {})[rid] = v
    start = 0
    for batch in pf.iter_batches(batch_size=batch_rows, use_threads=False):
        n = batch.num_rows
        arrays = []
        for c in columns:
            col_edits = {
                r - start: v
                for r, v in edits_by_col.get(c.uid, {}).items()
                if start <= r < start + n
            }
            if c.src is None:
                vals: list[Any] = [None] * n
                for i, v in col_edits.items():
                    vals[i] = v
                arrays.append(pa.array(vals, c.type))
            elif col_edits:
                vals = batch.column(c.src).to_pylist()
                for i, v in col_edits.items():
                    vals[i] = v
                arrays.append(pa.array(vals, c.type))
            else:
                arrays.append(batch.column(c.src))
        out = pa.RecordBatch.from_arrays(arrays, schema=schema)
        dels = [d - start for d in deleted if start <= d < start + n]
        if dels:
            keep = np.ones(n, dtype=bool)
            keep[dels] = False
            out = out.filter(pa.array(keep))
        start += n
        if out.num_rows:
            yield out
    if live:
        cols = [pa.array([edits.get((rid, c.uid)) for rid in live], c.type) for c in columns]
        yield pa.RecordBatch.from_arrays(cols, schema=schema)
