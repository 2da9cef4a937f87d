from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def main_window(qtbot, workspace) -> Iterator[object]:
    """The real main window on a temp workspace, shown offscreen, closed afterwards."""
    from app.ui.app import create_main_window

    window = create_main_window(workspace)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    # A test starts from a warmed-up window (app/ui/warmup.py: ~1 s after the first paint),
    # so its watchdog judges what the test does, not the one-off warm-up after start
    # (that has its own test and bench/warmup.py).
    qtbot.waitUntil(window.panes_ready.is_set, timeout=60_000)
    yield window
    window.close()


@pytest.fixture(autouse=True)
def no_modal_dialogs(monkeypatch) -> list[str]:
    """A modal dialog would block a test forever: record its text and answer it instead.

    ``QMessageBox.question`` answers No unless a test patches it; other boxes close.
    """
    from PySide6.QtWidgets import QMessageBox

    seen: list[str] = []

    def fake_exec(self: QMessageBox) -> int:
        seen.append(f"{self.text()} {self.informativeText()}")
        return int(QMessageBox.StandardButton.Close.value)

    monkeypatch.setattr(QMessageBox, "exec", fake_exec)
    monkeypatch.setattr(
        QMessageBox,
        "question",
        staticmethod(lambda *a, **k: (seen.append(str(a[2:3])), QMessageBox.StandardButton.No)[1]),
    )
    return seen


@pytest.fixture
def ui_watchdog():
    """``with ui_watchdog.watch(): ...`` then ``ui_watchdog.assert_no_stall()``: no call into
    app code may hold the UI thread for more than 100 ms (tests/support/watchdog.py)."""
    from tests.support.watchdog import UiWatchdog

    return UiWatchdog()
