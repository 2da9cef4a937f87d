"""Settings › Backup writes a verified backup off the UI thread; the status bar reminds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa


def test_backup_from_settings_and_the_reminder(
    qtbot, main_window, tmp_path: Path, ui_watchdog
) -> None:
    from app.core.backup import verify_backup
    from app.core.data.store import DatasetStore
    from app.ui.qt_settings_dialog import SettingsDialog

    ws = main_window.services.workspace
    DatasetStore(ws).create_dataset("rows", pa.Table.from_pylist([{"n": i} for i in range(2000)]))
    reminder = main_window.backup_reminder
    assert not reminder.isVisible()  # a new workspace is not nagged

    # The last backup was nine days ago (the state file a backup writes).
    state = ws.root / "backup-state.json"
    state.write_text(
        json.dumps({"last_backup_at": time.time() - 9 * 86400, "path": "/old.tar", "id": "x"})
    )
    reminder.refresh()
    assert reminder.isVisible() and reminder.text() == "⚠ No backup for 9 days"

    dlg = SettingsDialog(
        ws, main_window, theme=main_window.theme, actions=main_window.services.actions
    )
    qtbot.addWidget(dlg)
    assert "/old.tar" in dlg.backup_last.text()
    out = tmp_path / "from-settings.tar"
    with ui_watchdog.watch():
        dlg.start_backup(out)
        assert not dlg.backup_button.isEnabled()
        qtbot.waitUntil(lambda: dlg.backup_button.isEnabled(), timeout=60_000)
    ui_watchdog.assert_no_stall()
    assert "Backed up" in dlg.backup_status.text, dlg.backup_status.text
    assert str(out) in dlg.backup_last.text()
    v = verify_backup(out)
    assert any(f["path"].endswith(".parquet") for f in v.manifest["files"])
    dlg.reject()
    reminder.refresh()
    assert not reminder.isVisible()

    # Switched off in Settings: no reminder however old the backup.
    state.write_text(json.dumps({"last_backup_at": time.time() - 400 * 86400}))
    dlg2 = SettingsDialog(ws, main_window, actions=main_window.services.actions)
    qtbot.addWidget(dlg2)
    assert dlg2.reminder_days.value() == 7
    dlg2.reminder_days.setValue(0)
    dlg2.accept()
    assert ws.settings.backup_reminder_days == 0
    assert json.loads((ws.root / "settings.json").read_text())["backup_reminder_days"] == 0
    reminder.refresh()
    assert not reminder.isVisible()


def test_backup_from_settings_reports_a_failure(qtbot, main_window, tmp_path: Path) -> None:
    from app.ui.qt_settings_dialog import SettingsDialog

    dlg = SettingsDialog(
        main_window.services.workspace, main_window, actions=main_window.services.actions
    )
    qtbot.addWidget(dlg)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    dlg.start_backup(folder)  # a folder is not a file to write
    qtbot.waitUntil(lambda: dlg.backup_button.isEnabled(), timeout=30_000)
    assert "is a folder" in dlg.backup_status.text, dlg.backup_status.text
    assert list(folder.iterdir()) == []
