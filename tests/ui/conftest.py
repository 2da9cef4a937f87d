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
    yield window
    window.close()
