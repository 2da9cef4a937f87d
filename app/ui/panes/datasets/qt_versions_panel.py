"""A dataset's versions, newest first (v1, v2, ... as people say them), compare and revert."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.core.data.diff import version_labels
from app.core.data.store import DatasetStore, VersionRecord
from app.core.errors import NotFoundError
from app.core.format import relative_time
from app.ui.services import Services
from app.ui.widgets.status_line import StatusLine

_MADE_BY = {"create": "created", "import": "imported", "edit": "edited in the table"}


def describe_operation(operation: dict[str, Any]) -> str:
    """An operation as a person reads it: 'Drop exact duplicates (columns: question)',
    never its JSON."""
    name = str(operation.get("name", ""))
    title = _MADE_BY.get(name)
    if title is None:
        from app.core.data.ops import get_op
        from app.core.errors import ConfigError

        try:
            title = get_op(name).title
        except ConfigError:
            title = name or "unknown"
    params = operation.get("params") or {}
    parts = []
    for key, value in params.items() if isinstance(params, dict) else ():
        if value in (None, "", [], {}) or key.startswith("_"):
            continue
        if isinstance(value, list) and all(isinstance(x, str | int | float) for x in value):
            value = ", ".join(str(x) for x in value)
        elif isinstance(value, list | dict):
            value = json.dumps(value, ensure_ascii=False)
        text = str(value)
        parts.append(f"{key.replace('_', ' ')}: {text if len(text) <= 60 else text[:59] + '…'}")
    shown = "; ".join(parts[:6]) + ("; …" if len(parts) > 6 else "")
    return f"{title[:1].upper()}{title[1:]}" + (f" ({shown})" if shown else "")


class VersionsPanel(QWidget):
    """``compare_requested(old, new)``: show the diff; revert runs as an action."""

    compare_requested = Signal(str, str)

    def __init__(
        self,
        services: Services,
        store: DatasetStore,
        can_leave: Callable[[], bool],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.services = services
        self.store = store
        self.can_leave = can_leave  # False keeps unsaved edits (asks the user)
        self.dataset_id: str | None = None
        self.shown: str | None = None  # the version open in the editor
        self.labels: dict[str, str] = {}
        self.records: dict[str, VersionRecord] = {}
        self.list = QListWidget()
        self.list.setObjectName("versions")
        self.list.currentItemChanged.connect(self._selected)
        self.details = QTextBrowser()
        self.compare_btn = QPushButton("Compare with current")
        self.compare_btn.setToolTip("Show the rows that differ, cell by cell")
        self.revert_btn = QPushButton("Revert to this")
        self.compare_btn.clicked.connect(self.compare_selected)
        self.revert_btn.clicked.connect(self.revert_selected)
        self.status = StatusLine()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(QLabel("<b>Versions</b> (newest first)"))
        lay.addWidget(self.list, 2)
        row = QHBoxLayout()
        row.addWidget(self.compare_btn)
        row.addWidget(self.revert_btn)
        lay.addLayout(row)
        lay.addWidget(self.status)
        lay.addWidget(self.details, 1)
        self._update_buttons()

    def set_dataset(self, dataset_id: str | None, shown: str | None) -> None:
        self.dataset_id, self.shown = dataset_id, shown
        self.refresh()

    def refresh(self) -> None:
        selected = self.selected()
        self.list.blockSignals(True)
        self.list.clear()
        self.records, self.labels = {}, {}
        try:
            ds = self.store.get(self.dataset_id) if self.dataset_id else None
            versions = self.store.versions(ds.id) if ds is not None else []
        except NotFoundError:  # deleted meanwhile
            ds, versions = None, []
        self.labels = version_labels(versions)
        for v in reversed(versions):
            self.records[v.hash] = v
            op = v.operation.get("name", "")
            mark = "● " if ds is not None and v.hash == ds.current_version else ""
            item = QListWidgetItem(
                f"{mark}{self.labels[v.hash]}  {v.message or op}\n"
                f"{v.rows:,} rows  ·  {relative_time(v.created_at)}"
            )
            item.setData(Qt.ItemDataRole.UserRole, v.hash)
            item.setToolTip(f"{v.short}\n{json.dumps(v.operation, indent=1)[:2000]}")
            self.list.addItem(item)
            if v.hash == selected:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        if self.list.currentItem() is None:
            self.details.clear()
        self._update_buttons()

    def selected(self) -> str | None:
        item = self.list.currentItem()
        return str(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None

    def select(self, version: str) -> bool:
        for i in range(self.list.count()):
            if self.list.item(i).data(Qt.ItemDataRole.UserRole) == version:
                self.list.setCurrentRow(i)
                return True
        return False

    def _selected(self, item: QListWidgetItem | None, _: Any = None) -> None:
        v = self.records.get(self.selected() or "")
        if v is None:
            self.details.clear()
        else:
            cols = ", ".join(f"{c.get('name')}: {c.get('type')}" for c in v.schema)
            parent = self.labels.get(v.parent_hash or "", "-")
            self.details.setHtml(
                f"<b>{self.labels[v.hash]}</b> — {html.escape(v.message)}<br>"
                f"Made by: {html.escape(describe_operation(v.operation))}<br>"
                f"Parent: {html.escape(parent)}<br>Rows: {v.rows:,}<br>"
                f"Columns: {html.escape(cols)}<br><small>{v.short}</small>"
            )
        self._update_buttons()

    def _update_buttons(self) -> None:
        sel = self.selected()
        other = sel is not None and self.shown is not None and sel != self.shown
        self.compare_btn.setEnabled(other)
        self.revert_btn.setEnabled(other)

    def compare_selected(self) -> None:
        """Older version on the left: what changed from it to the other."""
        sel = self.selected()
        if sel is None or self.shown is None or sel == self.shown:
            return
        order = list(self.labels)
        a, b = sorted((sel, self.shown), key=lambda h: order.index(h) if h in order else 0)
        self.compare_requested.emit(a, b)

    def revert_selected(self) -> Any:
        sel, ds = self.selected(), self.dataset_id
        if sel is None or ds is None or not self.can_leave():
            return None
        label = self.labels.get(sel, sel[:12])
        return self.services.actions.run(
            self,
            f"Reverting to {label}",
            lambda _p: self.store.revert(ds, sel),
            changes=("versions", "datasets"),
            status=self.status,
            ok_text=f"{label} is the current version again.",
        )
