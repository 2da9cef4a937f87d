"""Error dialogs: what happened, what to do, and a 'Copy details' button."""

from __future__ import annotations

import traceback

from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from app.core.errors import DemoAIError


def show_error(parent: QWidget | None, title: str, exc: BaseException) -> None:
    """A modal error box; the details (with traceback for unexpected errors) can be copied."""
    if isinstance(exc, DemoAIError):
        text, hint = exc.message, exc.hint
        details = str(exc)
    else:
        text, hint = f"{type(exc).__name__}: {exc}", "This is unexpected; please report it."
        details = "".join(traceback.format_exception(exc))
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, parent=parent)
    if hint:
        box.setInformativeText(hint)
    box.setDetailedText(details)
    copy = box.addButton("Copy details", QMessageBox.ButtonRole.ActionRole)
    box.addButton(QMessageBox.StandardButton.Close)
    copy.clicked.disconnect()
    copy.clicked.connect(
        lambda: QApplication.clipboard().setText(f"{text}\n{hint or ''}\n{details}")
    )
    box.exec()
