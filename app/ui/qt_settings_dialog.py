"""Settings: workspace folder, offline mode, threads, GPU, and the theme (kept per user)."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from app.core.errors import DemoAIError
from app.core.workspace import Settings, Workspace, default_workspace_dir
from app.ui.theme import CHOICES, set_role

if TYPE_CHECKING:
    from app.ui.theme import ThemeManager


def _help(name: str) -> str:
    for f in dataclasses.fields(Settings):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    return ""


class SettingsDialog(QDialog):
    """Edits the workspace's settings; a new workspace folder applies on the next start."""

    def __init__(
        self,
        workspace: Workspace,
        parent: QWidget | None = None,
        theme: ThemeManager | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.workspace = workspace
        self.theme_manager = theme
        s = workspace.settings

        self.folder = QLineEdit(str(workspace.root))
        self.folder.setToolTip(
            "Where models, datasets, runs and the database live. A change applies the next "
            "time DemoAI starts (set DEMOAI_WORKSPACE or pass --workspace)."
        )
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        folder_box = QWidget()
        folder_box.setLayout(row)

        self.offline = QCheckBox("Offline: make no network calls")
        self.offline.setChecked(s.offline)
        self.offline.setToolTip(_help("offline"))
        self.threads = QSpinBox()
        self.threads.setRange(0, os.cpu_count() or 64)
        self.threads.setSpecialValueText("automatic")
        self.threads.setValue(s.threads)
        self.threads.setToolTip(_help("threads"))
        self.gpu = QComboBox()
        self.gpu.addItem("Automatic (use a CUDA GPU when found)", "auto")
        self.gpu.addItem("CPU only", "cpu")
        self.gpu.setCurrentIndex(max(0, self.gpu.findData(s.gpu)))
        self.gpu.setToolTip(_help("gpu"))
        self.max_cpu_jobs = QSpinBox()
        self.max_cpu_jobs.setRange(1, 16)
        self.max_cpu_jobs.setValue(s.max_cpu_jobs)
        self.max_cpu_jobs.setToolTip(_help("max_cpu_jobs"))
        self.theme = QComboBox()
        for value, label in CHOICES:
            self.theme.addItem(label, value)
        self.theme.setCurrentIndex(max(0, self.theme.findData(theme.choice if theme else "system")))
        self.theme.setToolTip(
            "Light or dark colours. 'Same as the system' follows the system's setting, also "
            "when it changes while DemoAI runs. Applies at once, to every workspace."
        )
        self.error = QLabel()
        set_role(self.error, "error")
        self.error.setWordWrap(True)

        form = QFormLayout(self)
        form.addRow("Workspace folder", folder_box)
        form.addRow("", QLabel(f"Default: {default_workspace_dir()}"))
        form.addRow("Network", self.offline)
        form.addRow("CPU threads", self.threads)
        form.addRow("GPU", self.gpu)
        form.addRow("Parallel CPU jobs", self.max_cpu_jobs)
        form.addRow("Appearance", self.theme)
        form.addRow(self.error)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Workspace folder", self.folder.text())
        if path:
            self.folder.setText(path)

    def new_settings(self) -> Settings:
        return dataclasses.replace(
            self.workspace.settings,
            offline=self.offline.isChecked(),
            threads=self.threads.value(),
            gpu=str(self.gpu.currentData()),
            max_cpu_jobs=self.max_cpu_jobs.value(),
        )

    def accept(self) -> None:
        try:
            self.workspace.save_settings(self.new_settings())
            chosen = self.folder.text().strip()
            if chosen and os.path.abspath(chosen) != str(self.workspace.root):
                from app.ui.qt_app_state import remember_workspace

                remember_workspace(chosen)
            self.apply_theme()
        except (DemoAIError, OSError) as exc:
            self.error.setText(str(exc))
            return
        super().accept()

    def apply_theme(self) -> None:
        """Remember the chosen theme for this user and apply it now."""
        from app.ui.qt_app_state import remember_theme

        choice = str(self.theme.currentData())
        remember_theme(choice)
        if self.theme_manager is not None:
            self.theme_manager.set_choice(choice)
