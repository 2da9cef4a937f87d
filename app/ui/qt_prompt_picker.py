"""Pick a prompt from the library: a prompt and a version, its ``{{variables}}`` filled, a preview.

One small dialog for every text field a library prompt can go into: the agent
form's system prompt, the Chat composer, the Evaluate pane's judge rubric.
:func:`open_prompt_picker` opens it window-modal without blocking and hands the
rendered text to a callback when the user confirms.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core.agents.prompts import Prompt, PromptStore
from app.core.errors import DemoAIError
from app.core.store.db import Database

EMPTY_LIBRARY = (
    "The prompt library is empty. Create prompts in Agents → Prompts "
    "(or import a prompt bundle there)."
)


def monospace() -> QFont:
    font = QFont("monospace")
    font.setStyleHint(QFont.StyleHint.Monospace)
    return font


class PromptPickerDialog(QDialog):
    """Choose a prompt and version, fill its variables, see the rendered text."""

    def __init__(
        self,
        db: Database,
        parent: QWidget | None = None,
        *,
        title: str = "Use a prompt from the library",
        action: str = "Insert",
    ) -> None:
        super().__init__(parent)
        self.store = PromptStore(db)
        self.setWindowTitle(title)
        self.fields: dict[str, QLineEdit] = {}
        self.prompt_combo = QComboBox()
        self.version_combo = QComboBox()
        self.about = QLabel("")
        self.about.setWordWrap(True)
        self.vars_box = QWidget()
        self.vars_form = QFormLayout(self.vars_box)
        self.vars_form.setContentsMargins(0, 0, 0, 0)
        self.preview = QPlainTextEdit()
        self.preview.setReadOnly(True)
        self.preview.setFont(monospace())
        self.problem = QLabel("")
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet("color: #c0392b")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.ok_btn: QPushButton = self.buttons.addButton(
            action, QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        form = QFormLayout()
        form.addRow("Prompt", self.prompt_combo)
        form.addRow("Version", self.version_combo)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.about)
        lay.addWidget(QLabel("<b>Variables</b>"))
        lay.addWidget(self.vars_box)
        lay.addWidget(QLabel("<b>Preview</b>"))
        lay.addWidget(self.preview, 1)
        lay.addWidget(self.problem)
        lay.addWidget(self.buttons)
        self.resize(620, 480)

        for p in self.store.list():
            self.prompt_combo.addItem(f"{p.name}  (v{p.version})", p.name)
        self.prompt_combo.currentIndexChanged.connect(self._prompt_changed)
        self.version_combo.currentIndexChanged.connect(self._version_changed)
        if self.prompt_combo.count():
            self._prompt_changed()
        else:
            self.about.setText(EMPTY_LIBRARY)
            self.prompt_combo.setEnabled(False)
            self.version_combo.setEnabled(False)
            self.update_preview()

    # -- selection ----------------------------------------------------------------------
    def select(self, name: str, version: int | None = None) -> None:
        """Show ``name`` at ``version`` (default: its latest)."""
        i = self.prompt_combo.findData(name)
        if i < 0:
            raise DemoAIError(f"No prompt {name!r} in the library.")
        self.prompt_combo.setCurrentIndex(i)
        if version is not None:
            j = self.version_combo.findData(version)
            if j < 0:
                raise DemoAIError(f"Prompt {name!r} has no version {version}.")
            self.version_combo.setCurrentIndex(j)

    def prompt(self) -> Prompt | None:
        name, version = self.prompt_combo.currentData(), self.version_combo.currentData()
        if name is None or version is None:
            return None
        return self.store.get(name, version)

    def _prompt_changed(self, *_: object) -> None:
        name = self.prompt_combo.currentData()
        self.version_combo.blockSignals(True)
        self.version_combo.clear()
        versions = self.store.versions(name) if name else []
        for v in reversed(versions):
            self.version_combo.addItem(f"v{v}" + ("  (latest)" if v == versions[-1] else ""), v)
        self.version_combo.blockSignals(False)
        self._version_changed()

    def _version_changed(self, *_: object) -> None:
        p = self.prompt()
        old = {k: f.text() for k, f in self.fields.items()}
        while self.vars_form.rowCount():
            self.vars_form.removeRow(0)
        self.fields = {}
        if p is None:
            self.update_preview()
            return
        self.about.setText(p.description or "")
        self.about.setVisible(bool(p.description))
        first_test = p.test_inputs[0] if p.test_inputs else {}
        for var in p.variables:
            field = QLineEdit(old.get(var) or str(first_test.get(var, "")))
            field.setPlaceholderText(f"value of {{{{{var}}}}}")
            field.textChanged.connect(self.update_preview)
            self.fields[var] = field
            self.vars_form.addRow(var, field)
        if not p.variables:
            self.vars_form.addRow(QLabel("This prompt has no variables."))
        self.update_preview()

    # -- result -------------------------------------------------------------------------
    def values(self) -> dict[str, str]:
        return {k: f.text() for k, f in self.fields.items()}

    def missing(self) -> list[str]:
        """Variables still without a value."""
        return [k for k, v in self.values().items() if not v.strip()]

    def rendered(self) -> str | None:
        """The prompt with every variable substituted; None while one has no value."""
        p = self.prompt()
        if p is None or self.missing():
            return None
        return p.render(self.values())

    def update_preview(self, *_: object) -> None:
        p = self.prompt()
        missing = self.missing()
        if p is None:
            self.preview.setPlainText("")
            self.problem.setText("")
        elif missing:
            self.preview.setPlainText(p.text)
            self.problem.setText(f"Fill in: {', '.join(missing)}.")
        else:
            self.preview.setPlainText(p.render(self.values()))
            self.problem.setText("")
        self.ok_btn.setEnabled(p is not None and not missing)

    def accept(self) -> None:
        if self.rendered() is None:
            return
        super().accept()


def open_prompt_picker(
    parent: QWidget, db: Database, on_pick: Callable[[str], None], **kwargs: str
) -> PromptPickerDialog:
    """Open the picker (window-modal, non-blocking); ``on_pick(text)`` runs on OK."""
    dlg = PromptPickerDialog(db, parent, **kwargs)

    def picked() -> None:
        text = dlg.rendered()
        if text is not None:
            on_pick(text)

    dlg.accepted.connect(picked)
    dlg.open()
    return dlg


__all__ = ["PromptPickerDialog", "open_prompt_picker"]
