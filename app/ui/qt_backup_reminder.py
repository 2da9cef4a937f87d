"""The status bar's backup reminder: shown when the last backup is older than the setting."""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QPushButton, QWidget

from app.core.backup import last_backup, reminder_due, workspace_created_at
from app.core.workspace import Workspace
from app.ui.theme import set_role


class BackupReminder(QPushButton):
    """A flat button ("No backup for 9 days") that opens Settings; hidden when not due.

    It reads ``backup-state.json`` (a few hundred bytes) and the workspace's
    settings, so a refresh is cheap enough for the UI thread; it refreshes every
    hour and when told (after Settings closes).
    """

    def __init__(
        self,
        workspace: Workspace,
        open_settings: Callable[[], object],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.setFlat(True)
        set_role(self, "warning")
        self.setToolTip(
            "Open Settings › Backup to back up the workspace, or turn the reminder off."
        )
        self.clicked.connect(lambda: open_settings())
        self._created = workspace_created_at(workspace.db)
        self._timer = QTimer(self)
        self._timer.setInterval(3600 * 1000)
        self._timer.timeout.connect(self.refresh)
        self._timer.start()
        self.refresh()

    def refresh(self) -> None:
        days = self.workspace.settings.backup_reminder_days
        root = self.workspace.root
        due = reminder_due(root, days, created_at=self._created)
        if due:
            last = last_backup(root)
            if last is None:
                self.setText("⚠ This workspace has never been backed up")
            else:
                age = int((time.time() - float(last["last_backup_at"])) // 86400)
                self.setText(f"⚠ No backup for {age} days")
        self.setVisible(due)
