"""Which columns become the user and assistant turns: the mapping to a training format.

Shared by Datasets › Prepare ("Map to a training format") and the Fine-tune form (shown
inline when the chosen dataset is not in a training format). The pickers list the dataset's
columns; a proposal from the column names (question -> user, answer -> assistant) is filled
in, so a question/answer table needs no typing. What is wrong is said under the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from app.core.data.recipes import ColumnMapping, propose_mapping
from app.ui.forms import MISSING_PREFIX, NONE_CHOICE, message_label, show_message

FORMATS = (
    ("Chat messages", "chat"),
    ("Prompt and completion", "prompt_completion"),
)
#: Field -> (label in chat format, label in prompt/completion format, optional).
FIELDS: dict[str, tuple[str, str, bool]] = {
    "user": ("User turn", "Prompt", False),
    "extra": ("Extra input", "Extra input", True),
    "assistant": ("Assistant turn", "Completion", False),
    "system": ("System message", "System message", True),
}


class ColumnMappingWidget(QWidget):
    """Pickers for the user / assistant / extra / system columns; ``mapping()`` reads them."""

    changed = Signal()

    def __init__(self, columns: Sequence[str] = (), parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.columns: list[str] = []
        self.format = QComboBox()
        self.format.setObjectName("mappingFormat")
        self.format.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.format.setMinimumContentsLength(12)
        for text, data in FORMATS:
            self.format.addItem(text, data)
        self.pickers: dict[str, QComboBox] = {}
        self.messages: dict[str, QLabel] = {}
        self.labels: dict[str, QLabel] = {}
        self.note = QLabel()
        self.note.setObjectName("mappingNote")
        self.note.setWordWrap(True)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Format", self.format)
        for name in FIELDS:
            combo = QComboBox()
            combo.setObjectName(f"mapping_{name}")
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.setMinimumContentsLength(12)
            msg = message_label()
            msg.setObjectName(f"mappingMessage_{name}")
            box = QWidget()
            lay = QVBoxLayout(box)
            lay.setContentsMargins(0, 0, 0, 0)
            lay.setSpacing(2)
            lay.addWidget(combo)
            lay.addWidget(msg)
            label = QLabel()
            form.addRow(label, box)
            self.pickers[name], self.messages[name], self.labels[name] = combo, msg, label
            combo.currentIndexChanged.connect(self._edited)
        self.format.currentIndexChanged.connect(self._edited)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.note)
        outer.addLayout(form)
        self._filling = False
        self.set_columns(columns)

    # -- columns and values ------------------------------------------------------------------
    def set_columns(self, columns: Sequence[str], *, propose: bool = True) -> None:
        """The dataset's columns: refill the pickers, and propose a mapping from the names."""
        self.columns = list(columns)
        self._filling = True
        try:
            for name, combo in self.pickers.items():
                combo.clear()
                combo.addItem(NONE_CHOICE if FIELDS[name][2] else "(choose a column)", None)
                for c in self.columns:
                    combo.addItem(c, c)
        finally:
            self._filling = False
        if propose:
            proposal = propose_mapping(self.columns)
            self.set_mapping(proposal)
            found = [
                f"{getattr(proposal, k)} → {FIELDS[k][0].split(' (')[0].lower()}"
                for k in FIELDS
                if getattr(proposal, k)
            ]
            self.note.setText(
                ("Proposed from the column names: " + ", ".join(found) + ". Change any of them.")
                if found
                else "Choose the columns that hold the prompt and the answer."
            )
        else:
            self._edited()

    def set_mapping(self, mapping: ColumnMapping) -> None:
        self._filling = True
        try:
            i = self.format.findData(mapping.format)
            self.format.setCurrentIndex(max(i, 0))
            for name, combo in self.pickers.items():
                value: Any = getattr(mapping, name)
                if not value:
                    combo.setCurrentIndex(0)
                    continue
                j = combo.findData(value)
                if j < 0:
                    combo.addItem(f"{MISSING_PREFIX}{value}", value)
                    j = combo.count() - 1
                combo.setCurrentIndex(j)
        finally:
            self._filling = False
        self._edited()

    def mapping(self) -> ColumnMapping:
        return ColumnMapping(
            user=self.pickers["user"].currentData() or "",
            assistant=self.pickers["assistant"].currentData() or "",
            extra=self.pickers["extra"].currentData(),
            system=self.pickers["system"].currentData(),
            format=self.format.currentData() or "chat",
        )

    def problems(self) -> dict[str, str]:
        return self.mapping().problems(self.columns)

    # -- edits -------------------------------------------------------------------------------------
    def _edited(self, *_: object) -> None:
        if self._filling:
            return
        chat = self.format.currentData() != "prompt_completion"
        for name, (chat_label, pc_label, _opt) in FIELDS.items():
            self.labels[name].setText(chat_label if chat else pc_label)
        self.pickers["system"].setEnabled(chat)
        problems = self.problems()
        for name, msg in self.messages.items():
            show_message(msg, problems.get(name, ""))
        self.changed.emit()
