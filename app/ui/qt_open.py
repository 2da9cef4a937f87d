"""Opening a folder in the system file manager; when none can, the path is shown to copy."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget


def open_folder(parent: QWidget | None, folder: str | os.PathLike[str]) -> bool:
    """Show ``folder`` in the file manager. Where none is registered (``openUrl`` returns
    False) a box shows the path, selectable and with a Copy button, instead of nothing."""
    path = os.fspath(folder)
    if QDesktopServices.openUrl(QUrl.fromLocalFile(path)):
        return True
    box = QMessageBox(
        QMessageBox.Icon.Information,
        "Open folder",
        f"No file manager could open this folder:\n\n{path}",
        parent=parent,
    )
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.setInformativeText(
        "Copy the path and open it in a terminal or file manager of your choice."
    )
    copy = box.addButton("Copy path", QMessageBox.ButtonRole.ActionRole)
    box.addButton(QMessageBox.StandardButton.Close)
    copy.clicked.disconnect()  # copying does not close the box
    copy.clicked.connect(lambda: QApplication.clipboard().setText(path))
    box.exec()
    return False
