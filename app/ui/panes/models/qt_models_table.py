"""Table model over registered models."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt

from app.core.format import human_size, relative_time
from app.core.models.registry import ModelRecord

COLUMNS = (
    "Name",
    "Format",
    "Architecture",
    "Parameters",
    "Quantization",
    "Context",
    "Size",
    "Source",
    "Added",
)
_Index = QModelIndex | QPersistentModelIndex
SORT_ROLE = Qt.ItemDataRole.UserRole + 1


def human_params(n: int | None) -> str:
    if not n:
        return ""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}".replace(".0", "")
    return str(n)


class ModelsTableModel(QAbstractTableModel):
    """``Qt.UserRole`` gives the ModelRecord; SORT_ROLE gives a sortable value."""

    def __init__(self) -> None:
        super().__init__()
        self._models: list[ModelRecord] = []

    def set_models(self, models: list[ModelRecord]) -> None:
        self.beginResetModel()
        self._models = list(models)
        self.endResetModel()

    def model_at(self, row: int) -> ModelRecord | None:
        return self._models[row] if 0 <= row < len(self._models) else None

    def row_of(self, model_id: str) -> int | None:
        for i, m in enumerate(self._models):
            if m.id == model_id:
                return i
        return None

    def rowCount(self, parent: _Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._models)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = 0) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: _Index, role: int = 0) -> Any:
        if not index.isValid():
            return None
        m = self._models[index.row()]
        col = COLUMNS[index.column()]
        if role == Qt.ItemDataRole.UserRole:
            return m
        if role == SORT_ROLE:
            return {
                "Parameters": m.parameters or 0,
                "Context": m.context_length or 0,
                "Size": m.size_bytes,
                "Added": m.created_at,
            }.get(col, str(self.data(index, Qt.ItemDataRole.DisplayRole) or "").lower())
        if role == Qt.ItemDataRole.DisplayRole:
            return {
                "Name": m.name,
                "Format": {"hf": "HF folder", "gguf": "GGUF", "lora": "LoRA adapter"}.get(
                    m.format, m.format
                ),
                "Architecture": m.architecture or "",
                "Parameters": human_params(m.parameters),
                "Quantization": m.quantization or "",
                "Context": f"{m.context_length:,}" if m.context_length else "",
                "Size": human_size(m.size_bytes),
                "Source": m.source_ref or m.source_kind,
                "Added": relative_time(m.created_at),
            }[col]
        if role == Qt.ItemDataRole.ToolTipRole:
            if col == "Added":
                return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.created_at))
            if col == "Name":
                return str(m.path) + ("" if m.owned else "  (referenced in place)")
        return None
