"""Forms generated from parameter dataclasses: one editor per field, a message under each.

The field's type picks the editor (bool: a check box; ``Literal``: a choice; ``int`` /
``float``, optionally ``None``: a spin box with a "not set" value; ``str``: a line; a list of
strings: ticks; a ``dict``: a two-column table) and its metadata refines it (``kind``
"column" / "columns": the dataset's columns; "versions": dataset versions; ``choices``;
``minimum`` / ``maximum``; ``help`` as the tooltip; ``label``). See
``app/core/data/ops.py`` for the metadata. Nothing is typed as JSON.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

ERROR_STYLE = "color:#c0392b"
NOT_SET = "(not set)"
NONE_CHOICE = "(none)"
#: A column field whose dataset lacks the column shows it with this prefix (so that the
#: message next to it explains, and nothing is silently replaced).
MISSING_PREFIX = "missing: "


def message_label() -> QLabel:
    """The red line under a field that says what is wrong with it (hidden when fine)."""
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(ERROR_STYLE)
    label.setObjectName("fieldMessage")
    label.setVisible(False)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def show_message(label: QLabel, text: str) -> None:
    label.setText(text)
    label.setVisible(bool(text))


def field_label(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("label") or f.name.replace("_", " ").capitalize())


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


class Editor:
    """One field's widget: ``value()`` / ``set_value()``, and ``changed`` is called on edits."""

    def __init__(self, widget: QWidget) -> None:
        self.widget = widget

    def value(self) -> Any:
        raise NotImplementedError

    def set_value(self, value: Any) -> None:
        raise NotImplementedError

    def connect(self, fn: Callable[[], None]) -> None:
        raise NotImplementedError


class _Check(Editor):
    def __init__(self) -> None:
        super().__init__(QCheckBox())
        self.box: QCheckBox = self.widget  # type: ignore[assignment]

    def value(self) -> bool:
        return self.box.isChecked()

    def set_value(self, value: Any) -> None:
        self.box.setChecked(bool(value))

    def connect(self, fn: Callable[[], None]) -> None:
        self.box.toggled.connect(lambda *_: fn())


class _Choice(Editor):
    """A fixed list of values (``Literal``), or the dataset's columns."""

    def __init__(
        self, options: Sequence[tuple[str, Any]], optional: bool, none_text: str = NONE_CHOICE
    ) -> None:
        super().__init__(QComboBox())
        self.combo: QComboBox = self.widget  # type: ignore[assignment]
        self.combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.combo.setMinimumContentsLength(12)
        self.optional, self.none_text = optional, none_text
        self.set_options(options)

    def set_options(self, options: Sequence[tuple[str, Any]]) -> None:
        current = self.value() if self.combo.count() else None
        self.combo.blockSignals(True)
        self.combo.clear()
        if self.optional:
            self.combo.addItem(self.none_text, None)
        for text, data in options:
            self.combo.addItem(text, data)
        self.combo.blockSignals(False)
        if current is not None:
            self.set_value(current)

    def value(self) -> Any:
        data = self.combo.currentData()
        return data if data is not None or self.optional else None

    def set_value(self, value: Any) -> None:
        if value is None:
            self.combo.setCurrentIndex(0 if self.optional else -1)
            return
        i = self.combo.findData(value)
        if i < 0:  # a value the data lacks: shown as such, the message says why
            self.combo.addItem(f"{MISSING_PREFIX}{value}", value)
            i = self.combo.count() - 1
        self.combo.setCurrentIndex(i)

    def connect(self, fn: Callable[[], None]) -> None:
        self.combo.currentIndexChanged.connect(lambda *_: fn())


class _Number(Editor):
    """An int or float; ``None`` (when allowed) is the spin box's lowest value, "(not set)"."""

    def __init__(self, is_int: bool, optional: bool, lo: float | None, hi: float | None) -> None:
        self.is_int, self.optional = is_int, optional
        box: QSpinBox | QDoubleSpinBox
        if is_int:
            box = QSpinBox()
            low = int(lo) if lo is not None else -1_000_000_000
            box.setRange(low - (1 if optional else 0), int(hi) if hi is not None else 2_000_000_000)
        else:
            box = QDoubleSpinBox()
            box.setDecimals(3)
            box.setSingleStep(0.05)
            low_f = float(lo) if lo is not None else -1e9
            box.setRange(low_f - (0.001 if optional else 0), float(hi) if hi is not None else 1e9)
        if optional:
            box.setSpecialValueText(NOT_SET)
        super().__init__(box)
        self.box = box

    def value(self) -> int | float | None:
        v = self.box.value()
        if self.optional and v == self.box.minimum():
            return None
        return int(v) if self.is_int else float(v)

    def set_value(self, value: Any) -> None:
        box = self.box
        if isinstance(box, QSpinBox):
            box.setValue(box.minimum() if value is None else int(value))
        else:
            box.setValue(box.minimum() if value is None else float(value))

    def connect(self, fn: Callable[[], None]) -> None:
        self.box.valueChanged.connect(lambda *_: fn())


class _Text(Editor):
    def __init__(self, optional: bool) -> None:
        super().__init__(QLineEdit())
        self.line: QLineEdit = self.widget  # type: ignore[assignment]
        self.optional = optional
        if optional:
            self.line.setPlaceholderText(NOT_SET)

    def value(self) -> str | None:
        # Typed "\n" stands for a line break (a line edit has none).
        text = self.line.text().replace("\\n", "\n")
        return None if self.optional and not text else text

    def set_value(self, value: Any) -> None:
        self.line.setText("" if value is None else str(value).replace("\n", "\\n"))

    def connect(self, fn: Callable[[], None]) -> None:
        self.line.textChanged.connect(lambda *_: fn())


class _Ticks(Editor):
    """A list of strings from a known set (columns, choices, versions): tick the ones wanted.
    Nothing ticked is ``None`` where the field allows it (the operation's "all")."""

    def __init__(self, options: Sequence[tuple[str, str]], optional: bool) -> None:
        super().__init__(QListWidget())
        self.list: QListWidget = self.widget  # type: ignore[assignment]
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.optional = optional
        self.set_options(options)

    def set_options(self, options: Sequence[tuple[str, str]]) -> None:
        ticked = set(self.value() or []) if self.list.count() else set()
        self.list.blockSignals(True)
        self.list.clear()
        for text, data in options:
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, data)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if data in ticked else Qt.CheckState.Unchecked)
            self.list.addItem(item)
        rows = max(1, min(self.list.count(), 6))
        self.list.setFixedHeight(
            rows * self.list.sizeHintForRow(0) + 2 * self.list.frameWidth() + 4
        )
        self.list.blockSignals(False)

    def value(self) -> list[str] | None:
        out = [
            self.list.item(i).data(Qt.ItemDataRole.UserRole)
            for i in range(self.list.count())
            if self.list.item(i).checkState() == Qt.CheckState.Checked
        ]
        return out if out or not self.optional else None

    def set_value(self, value: Any) -> None:
        wanted = list(value or [])
        known = {self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())}
        extra = [(f"{MISSING_PREFIX}{v}", v) for v in wanted if v not in known]
        if extra:
            self.set_options(
                [
                    *(
                        (self.list.item(i).text(), self.list.item(i).data(Qt.ItemDataRole.UserRole))
                        for i in range(self.list.count())
                    ),
                    *extra,
                ]
            )
        self.list.blockSignals(True)
        for i in range(self.list.count()):
            item = self.list.item(i)
            item.setCheckState(
                Qt.CheckState.Checked
                if item.data(Qt.ItemDataRole.UserRole) in wanted
                else Qt.CheckState.Unchecked
            )
        self.list.blockSignals(False)

    def connect(self, fn: Callable[[], None]) -> None:
        self.list.itemChanged.connect(lambda *_: fn())


class _Table(Editor):
    """A ``dict``: key and value per row. With fixed keys (columns to rename, PII types to
    label) the keys are listed and an empty value leaves that key out; otherwise the last row
    is empty for a new entry."""

    def __init__(
        self,
        value_type: Any,
        optional: bool,
        keys: Sequence[str] | None,
        headers: Sequence[str] = ("Name", "Value"),
    ) -> None:
        super().__init__(QTableWidget(0, 2))
        self.table: QTableWidget = self.widget  # type: ignore[assignment]
        self.table.setHorizontalHeaderLabels(list(headers))
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.value_type, self.optional = value_type, optional
        self.fixed_keys = list(keys) if keys is not None else None
        self._fn: Callable[[], None] | None = None
        self.table.itemChanged.connect(self._edited)
        self.set_value({})

    def set_keys(self, keys: Sequence[str]) -> None:
        current = self.value() or {}
        self.fixed_keys = list(keys)
        self.set_value(current)

    def _rows(self) -> list[tuple[str, str]]:
        out = []
        for r in range(self.table.rowCount()):
            k, v = self.table.item(r, 0), self.table.item(r, 1)
            out.append(((k.text() if k else "").strip(), (v.text() if v else "").strip()))
        return out

    def value(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for k, v in self._rows():
            if not k or not v:
                continue
            if self.value_type is float:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v  # the checks say it is not a number
            else:
                out[k] = v
        return out if out or not self.optional else None

    def set_value(self, value: Any) -> None:
        value = dict(value or {})
        keys = self.fixed_keys if self.fixed_keys is not None else list(value)
        keys = [*keys, *(k for k in value if k not in keys)]
        self.table.blockSignals(True)
        self.table.setRowCount(0)
        for k in keys:
            self._add_row(
                k,
                ""
                if value.get(k) is None
                else f"{value[k]:g}"
                if isinstance(value[k], float)
                else str(value[k]),
            )
        if self.fixed_keys is None:
            self._add_row("", "")
        self.table.blockSignals(False)
        rows = max(2, min(self.table.rowCount(), 6))
        self.table.setFixedHeight(
            self.table.horizontalHeader().sizeHint().height()
            + rows * self.table.verticalHeader().defaultSectionSize()
            + 2 * self.table.frameWidth()
        )

    def _add_row(self, key: str, val: str) -> None:
        r = self.table.rowCount()
        self.table.insertRow(r)
        k = QTableWidgetItem(key)
        if self.fixed_keys is not None:
            k.setFlags(k.flags() & ~Qt.ItemFlag.ItemIsEditable)
        self.table.setItem(r, 0, k)
        self.table.setItem(r, 1, QTableWidgetItem(val))

    def _edited(self, *_: object) -> None:
        if self.fixed_keys is None and any(self._rows()[-1]):  # keep one empty row to add to
            self.table.blockSignals(True)
            self._add_row("", "")
            self.table.blockSignals(False)
        if self._fn is not None:
            self._fn()

    def connect(self, fn: Callable[[], None]) -> None:
        self._fn = fn


class DataclassForm(QWidget):
    """A form for one parameter dataclass; ``values()`` is a dict of its fields."""

    changed = Signal()

    def __init__(
        self,
        params_type: type,
        *,
        columns: Sequence[str] = (),
        text_columns: Sequence[str] | None = None,
        versions: Sequence[tuple[str, str]] = (),
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.params_type = params_type
        self.fields = {f.name: f for f in dataclasses.fields(params_type)}
        self.hints = typing.get_type_hints(params_type)
        self.editors: dict[str, Editor] = {}
        self.messages: dict[str, QLabel] = {}
        self._columns = list(columns)
        self._text_columns = list(text_columns) if text_columns is not None else list(columns)
        self._versions = list(versions)
        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setContentsMargins(0, 0, 0, 0)
        for name, f in self.fields.items():
            editor = self._editor(f)
            editor.widget.setObjectName(f"field_{name}")
            editor.widget.setToolTip(str(f.metadata.get("help", "")))
            editor.widget.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            self.editors[name] = editor
            box = QWidget()
            lay = QVBoxLayout(box)
            lay.setContentsMargins(0, 0, 0, 0)
            lay.setSpacing(2)
            lay.addWidget(editor.widget)
            msg = message_label()
            msg.setObjectName(f"message_{name}")
            self.messages[name] = msg
            lay.addWidget(msg)
            form.addRow(field_label(f), box)
            if f.default is not dataclasses.MISSING:
                editor.set_value(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                editor.set_value(f.default_factory())
            elif isinstance(editor, _Choice) and editor.combo.count() > 1:
                editor.combo.setCurrentIndex(1)
            editor.connect(self.changed.emit)
        self.form_message = message_label()
        form.addRow(self.form_message)

    def _column_options(self, f: dataclasses.Field[Any]) -> list[tuple[str, str]]:
        names = self._text_columns if f.metadata.get("text") else self._columns
        return [(c, c) for c in names]

    def _editor(self, f: dataclasses.Field[Any]) -> Editor:
        tp, optional = _unwrap_optional(self.hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        meta = f.metadata
        kind = meta.get("kind", "")
        origin = typing.get_origin(tp)
        if tp is bool:
            return _Check()
        if origin is typing.Literal:
            return _Choice([(str(v), v) for v in typing.get_args(tp)], optional)
        if tp in (int, float):
            return _Number(tp is int, optional, meta.get("minimum"), meta.get("maximum"))
        if tp is str and kind == "column":
            if required:  # a placeholder until chosen; the first fitting column is proposed
                return _Choice(self._column_options(f), True, "(choose a column)")
            return _Choice(self._column_options(f), optional)
        if tp is str:
            return _Text(optional)
        if origin is list:
            if kind == "versions":
                return _Ticks(self._versions, optional)
            if kind == "columns":
                return _Ticks(self._column_options(f), optional)
            return _Ticks([(c, c) for c in meta.get("choices") or ()], optional)
        if origin is dict:
            value_type = typing.get_args(tp)[1]
            keys: Sequence[str] | None = None
            if kind == "rename":
                keys = self._columns
            elif meta.get("choices"):
                keys = list(meta["choices"])
            return _Table(value_type, optional, keys, meta.get("headers") or ("Name", "Value"))
        raise TypeError(f"No form editor for {f.name}: {tp!r}")

    def set_columns(
        self, columns: Sequence[str], text_columns: Sequence[str] | None = None
    ) -> None:
        """The dataset's columns changed: refill the column pickers (choices kept where they can)."""
        self._columns = list(columns)
        self._text_columns = list(text_columns) if text_columns is not None else list(columns)
        for name, f in self.fields.items():
            ed = self.editors[name]
            kind = f.metadata.get("kind", "")
            if isinstance(ed, (_Choice, _Ticks)) and kind in ("column", "columns"):
                ed.set_options(self._column_options(f))
            elif isinstance(ed, _Table) and kind == "rename":
                ed.set_keys(self._columns)

    def values(self) -> dict[str, Any]:
        return {name: ed.value() for name, ed in self.editors.items()}

    def set_values(self, values: dict[str, Any]) -> None:
        self.blockSignals(True)
        try:
            for k, v in values.items():
                if k in self.editors:
                    self.editors[k].set_value(v)
        finally:
            self.blockSignals(False)
        self.changed.emit()

    def set_problems(self, problems: dict[str, str]) -> None:
        """Show each field's message next to it; one without a field goes under the form."""
        for name, label in self.messages.items():
            show_message(label, problems.get(name, ""))
        other = [m for k, m in problems.items() if k not in self.messages]
        show_message(self.form_message, " ".join(other))
