"""Settings: workspace folder, offline mode, threads, GPU."""

from __future__ import annotations

import dataclasses
import os

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


def _help(name: str) -> str:
    for f in dataclasses.fields(Settings):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    return ""


class SettingsDialog(QDialog):
    """Edits the workspace's settings; a new workspace folder applies on the next start."""

    def __init__(self, workspace: Workspace, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.workspace = workspace
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
        self.error = QLabel()
        self.error.setStyleSheet("color: #c0392b")
        self.error.setWordWrap(True)

        form = QFormLayout(self)
        form.addRow("Workspace folder", folder_box)
        form.addRow("", QLabel(f"Default: {default_workspace_dir()}"))
        form.addRow("Network", self.offline)
        form.addRow("CPU threads", self.threads)
        form.addRow("GPU", self.gpu)
        form.addRow("Parallel CPU jobs", self.max_cpu_jobs)
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
        except (DemoAIError, OSError) as exc:
            self.error.setText(str(exc))
            return
        super().accept()
