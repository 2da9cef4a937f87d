"""Settings: workspace folder, offline mode, threads, GPU, backup, and the theme (kept per user)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    QVBoxLayout,
    QWidget,
)

from app.core.errors import DemoAIError
from app.core.workspace import Settings, Workspace, default_workspace_dir
from app.ui.theme import CHOICES, set_role

if TYPE_CHECKING:
    from app.core.backup import CreateResult
    from app.ui.actions import ActionRunner, Progress
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
        actions: ActionRunner | None = None,
    ) -> None:
        super().__init__(parent)
        self.action_runner = actions
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
        self.backup_box = self._backup_section(s) if actions is not None else None
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
        if self.backup_box is not None:
            form.addRow("Backup", self.backup_box)
        form.addRow(self.error)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    # -- backup ----------------------------------------------------------------------------
    def _backup_section(self, s: Settings) -> QWidget:
        from app.ui.widgets.status_line import StatusLine

        box = QWidget()
        col = QVBoxLayout(box)
        col.setContentsMargins(0, 0, 0, 0)
        self.backup_last = QLabel()
        self.backup_last.setWordWrap(True)
        self.backup_button = QPushButton("Back up now…")
        self.backup_button.setToolTip(
            "Write the whole workspace (database, models copied into the library, dataset "
            "versions, runs, agents, exports) to one verified file. DemoAI keeps working "
            "meanwhile. Restore with `demoai backup restore FILE --workspace DIR`."
        )
        self.backup_button.clicked.connect(self._ask_backup_file)
        self.reminder_days = QSpinBox()
        self.reminder_days.setRange(0, 365)
        self.reminder_days.setSpecialValueText("never")
        self.reminder_days.setSuffix(" days")
        self.reminder_days.setValue(s.backup_reminder_days)
        self.reminder_days.setToolTip(_help("backup_reminder_days"))
        row = QHBoxLayout()
        row.addWidget(self.backup_button)
        row.addWidget(QLabel("Remind after"))
        row.addWidget(self.reminder_days)
        row.addStretch(1)
        self.backup_status = StatusLine()
        col.addWidget(self.backup_last)
        col.addLayout(row)
        col.addWidget(self.backup_status)
        self._show_last_backup()
        return box

    def _show_last_backup(self) -> None:
        from app.core.backup import last_backup
        from app.core.format import relative_time

        last = last_backup(self.workspace.root)
        if last is None:
            self.backup_last.setText("Last backup: never.")
        else:
            when = relative_time(float(last["last_backup_at"]), time.time())
            self.backup_last.setText(f"Last backup: {when}, to {last.get('path', '?')}.")

    def _ask_backup_file(self) -> None:
        name = f"demoai-backup-{time.strftime('%Y%m%d-%H%M')}.tar"
        path, _ = QFileDialog.getSaveFileName(
            self, "Back up the workspace to", str(Path.home() / name), "Backups (*.tar)"
        )
        if path:
            self.start_backup(Path(path))

    def start_backup(self, out: Path) -> Any:
        """Write a backup to ``out`` on a worker thread, with progress and Cancel."""
        from app.core.backup import create_backup

        assert self.action_runner is not None
        root = self.workspace.root

        def run(progress: Progress) -> CreateResult:
            def show(fraction: float | None, message: str) -> None:
                progress.update(0.0 if fraction is None else fraction, 1.0, message)

            return create_backup(root, out, progress=show, check=progress.check)

        def done(res: CreateResult) -> None:
            self.backup_button.setEnabled(True)
            self._show_last_backup()
            note = (
                f" {len(res.external)} model(s) referenced in place were not copied."
                if res.external
                else ""
            )
            self.backup_status.ok(f"✓ Backed up {res.files} files to {res.path.name}.{note}")

        self.backup_button.setEnabled(False)
        return self.action_runner.run(
            self,
            "Backing up the workspace",
            run,
            done=done,
            failed=lambda _e: self.backup_button.setEnabled(True),
            status=self.backup_status,
            cancellable=True,
        )

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
            **(
                {"backup_reminder_days": self.reminder_days.value()}
                if self.backup_box is not None
                else {}
            ),
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
