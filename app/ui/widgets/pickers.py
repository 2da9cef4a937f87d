"""Model, dataset and version pickers shared by the panes.

Each is a combo box that shows names (never ids), keeps the user's selection
across refreshes and refreshes itself when ``services.bus.changed`` says its
topic changed: a model imported by the CLI or produced by a job appears
without any click. The item data is the id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QWidget

from app.core.errors import NotFoundError
from app.core.format import relative_time
from app.ui.services import Services


class _Picker(QComboBox):
    """Refills itself on its topics; ``selection_changed(id or None)`` after user or refill."""

    selection_changed = Signal(object)
    topics: frozenset[str] = frozenset()

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(24)
        self.currentIndexChanged.connect(lambda _i: self.selection_changed.emit(self.current_id()))
        services.bus.changed.connect(self._changed)

    def _changed(self, topics: frozenset[str]) -> None:
        if topics & self.topics:
            self.refresh()

    def items(self) -> Iterable[tuple[str, str, str]]:
        """(label, id, tooltip) of every choice."""
        raise NotImplementedError

    def refresh(self) -> None:
        current = self.current_id()
        self.blockSignals(True)
        try:
            self.clear()
            for label, item_id, tip in self.items():
                self.addItem(label, item_id)
                if tip:
                    self.setItemData(self.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
            if current is not None and (i := self.findData(current)) >= 0:
                self.setCurrentIndex(i)
        finally:
            self.blockSignals(False)
        if self.current_id() != current:
            self.selection_changed.emit(self.current_id())

    def current_id(self) -> str | None:
        data = self.currentData()
        return str(data) if data is not None else None

    def select(self, item_id: str) -> bool:
        """Select ``item_id``; False when it is not a choice."""
        i = self.findData(item_id)
        if i >= 0:
            self.setCurrentIndex(i)
        return i >= 0


class ModelPicker(_Picker):
    """Library models of the given formats, newest first, labelled 'name (format, quant)'."""

    topics = frozenset({"models"})

    def __init__(
        self,
        services: Services,
        formats: Iterable[str] = ("gguf", "hf", "lora"),
        parent: QWidget | None = None,
        *,
        accept: Callable[[Any], bool] | None = None,
    ) -> None:
        self.formats = tuple(formats)
        self.accept = accept
        super().__init__(services, parent)
        self.refresh()

    def items(self) -> Iterable[tuple[str, str, str]]:
        from app.core.models.registry import ModelRegistry

        for m in ModelRegistry(self.services.workspace).list():
            if m.format not in self.formats or (self.accept and not self.accept(m)):
                continue
            detail = m.format + (f", {m.quantization}" if m.quantization else "")
            yield f"{m.name}  ({detail})", m.id, str(m.path)


class DatasetPicker(_Picker):
    """Datasets, newest first, labelled 'name (N rows)'."""

    topics = frozenset({"datasets", "versions"})

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(services, parent)
        self.refresh()

    def items(self) -> Iterable[tuple[str, str, str]]:
        from app.core.data.store import DatasetStore

        for d in DatasetStore(self.services.workspace).list_datasets():
            rows = f"{d.rows:,} rows" if d.rows is not None else "empty"
            yield f"{d.name}  ({rows})", d.id, ", ".join(d.columns)


class VersionPicker(_Picker):
    """Versions of one dataset, newest first; the current one is marked and chosen by default."""

    topics = frozenset({"versions", "datasets"})

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        self.dataset_id: str | None = None
        super().__init__(services, parent)

    def set_dataset(self, dataset_id: str | None) -> None:
        if dataset_id != self.dataset_id:
            self.dataset_id = dataset_id
            self.blockSignals(True)
            self.clear()  # a new dataset starts at its current version
            self.blockSignals(False)
            self.refresh()
            if self.count() and self.currentIndex() < 0:
                self.setCurrentIndex(0)

    def items(self) -> Iterable[tuple[str, str, str]]:
        if self.dataset_id is None:
            return
        from app.core.data.store import DatasetStore

        store = DatasetStore(self.services.workspace)
        try:
            ds = store.get(self.dataset_id)
        except NotFoundError:
            return  # deleted meanwhile
        versions = list(reversed(store.versions(self.dataset_id)))
        for n, v in zip(range(len(versions), 0, -1), versions, strict=True):
            mark = " · current" if v.hash == ds.current_version else ""
            what = v.message or "version"
            label = f"v{n} · {what} · {v.rows:,} rows{mark}"
            yield label, v.hash, f"{v.short}, {relative_time(v.created_at)}"

    def refresh(self) -> None:
        had = self.current_id()
        super().refresh()
        if had is None and self.count():
            from app.core.data.store import DatasetStore

            try:
                ds = DatasetStore(self.services.workspace).get(self.dataset_id or "")
            except NotFoundError:
                return
            if ds.current_version:
                self.select(ds.current_version)
