"""Starting the window: QApplication, workspace, services, main window."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.workspace import Workspace
    from app.ui.qt_main_window import MainWindow


def run_gui(workspace: str | None = None, on_shown: Callable[[], None] | None = None) -> int:
    """Open the DemoAI window on ``workspace`` (or the remembered / default one).

    ``on_shown`` runs once the window has been shown and painted (bench/startup.py uses it).
    """
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app.core.errors import DemoAIError
    from app.core.workspace import Workspace

    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("DemoAI")
    app.setOrganizationName("DemoAI")
    if workspace is None and not os.environ.get("DEMOAI_WORKSPACE"):
        from app.ui.qt_app_state import remembered_workspace

        workspace = remembered_workspace()
    try:
        ws = Workspace.open(workspace)
    except DemoAIError as exc:
        from app.ui.qt_errors import show_error

        show_error(None, "DemoAI cannot open its workspace", exc)
        return exc.exit_code
    window = create_main_window(ws)
    window.show()
    if on_shown is not None:
        QTimer.singleShot(0, on_shown)
    return int(app.exec())


def create_main_window(ws: Workspace) -> MainWindow:
    """Services + main window for an opened workspace (used by tests too)."""
    from app.ui.qt_main_window import MainWindow
    from app.ui.services import Services

    return MainWindow(Services.create(ws))
