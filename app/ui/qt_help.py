"""The Help menu: the bundled documentation, the keyboard shortcuts, About (versions)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, qVersion
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QMenu,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.ui.theme import SPACING, set_role

REPO_ROOT = Path(__file__).resolve().parents[2]


def documentation_folder() -> Path:
    """Where the bundled documentation is: ``docs/`` next to the app (README.md beside it)."""
    docs = REPO_ROOT / "docs"
    return docs if docs.is_dir() else REPO_ROOT


def open_documentation(parent: QWidget | None) -> bool:
    """Open the documentation folder; where nothing can, show its path to copy."""
    from app.ui.qt_open import open_folder

    return open_folder(parent, documentation_folder())


def _plain(text: str) -> str:
    return text.replace("&&", "\0").replace("&", "").replace("\0", "&").rstrip(".…")


def shortcuts_of(window: QWidget) -> list[tuple[str, str]]:
    """(what, keys) for every action of ``window`` and its menus that has a shortcut,
    in the order the window declares them, each shown as the platform writes it."""
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for action in window.findChildren(QAction):
        keys = [
            k.toString(QKeySequence.SequenceFormat.NativeText)
            for k in action.shortcuts()
            if not k.isEmpty()
        ]
        if not keys or not action.text():
            continue
        menus = [m for m in action.associatedObjects() if isinstance(m, QMenu) and m.title()]
        what = _plain(action.text())
        if menus:  # "Go › Datasets" says where to find it
            what = f"{_plain(menus[0].title())} › {what}"
        row = (what, ", ".join(keys))
        if row not in seen:
            seen.add(row)
            out.append(row)
    return out


class ShortcutsDialog(QDialog):
    """A table of the window's real shortcuts (read from its actions, never a copy)."""

    def __init__(self, window: QWidget) -> None:
        super().__init__(window)
        self.setWindowTitle("Keyboard shortcuts")
        rows = shortcuts_of(window)
        self.table = QTableWidget(len(rows), 2)
        self.table.setHorizontalHeaderLabels(["Action", "Shortcut"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setShowGrid(False)
        self.table.setAlternatingRowColors(True)
        for i, (what, keys) in enumerate(rows):
            self.table.setItem(i, 0, QTableWidgetItem(what))
            self.table.setItem(i, 1, QTableWidgetItem(keys))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2 * SPACING, 2 * SPACING, 2 * SPACING, 2 * SPACING)
        layout.setSpacing(SPACING)
        layout.addWidget(self.table)
        layout.addWidget(buttons)
        self.resize(460, min(560, 120 + 30 * len(rows)))


def about_rows(workspace_root: str | Path) -> list[tuple[str, str]]:
    """(label, value) lines for About. Versions come from package metadata: torch and the
    other ML packages are never imported by the window process."""
    import PySide6

    from app.core.system.versions import versions

    info = versions()
    packages = info["packages"]
    assert isinstance(packages, dict)

    def pkg(name: str) -> str:
        return str(packages.get(name) or "not installed")

    return [
        ("DemoAI", str(info["demoai"])),
        ("Python", str(info["python"])),
        ("Qt", qVersion()),
        ("PySide6", PySide6.__version__),
        ("llama-cpp-python", pkg("llama_cpp_python")),
        ("torch", pkg("torch")),
        ("transformers", pkg("transformers")),
        ("peft", pkg("peft")),
        ("System", str(info["platform"])),
        ("Workspace", str(workspace_root)),
    ]


class AboutDialog(QDialog):
    """The app and the versions it runs on, selectable and copyable for a bug report."""

    def __init__(self, workspace_root: str | Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About DemoAI")
        self.rows = about_rows(workspace_root)
        title = QLabel("DemoAI")
        set_role(title, "title")
        blurb = QLabel("An offline workbench for private language models.")
        set_role(blurb, "muted")
        self.details = QLabel(self._html())
        self.details.setTextFormat(Qt.TextFormat.RichText)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setWordWrap(True)
        copy = QPushButton("Copy versions")
        copy.clicked.connect(self.copy)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.addButton(copy, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(3 * SPACING, 3 * SPACING, 3 * SPACING, 2 * SPACING)
        layout.setSpacing(SPACING)
        layout.addWidget(title)
        layout.addWidget(blurb)
        layout.addSpacing(SPACING)
        layout.addWidget(self.details)
        layout.addStretch(1)
        layout.addWidget(buttons)
        self.setMinimumWidth(480)

    def _html(self) -> str:
        from html import escape

        cells = "".join(
            f"<tr><td style='padding:2px 16px 2px 0'><b>{escape(k)}</b></td>"
            f"<td style='padding:2px 0'>{escape(v)}</td></tr>"
            for k, v in self.rows
        )
        return f"<table>{cells}</table>"

    def text(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.rows)

    def copy(self) -> None:
        QApplication.clipboard().setText(self.text())
