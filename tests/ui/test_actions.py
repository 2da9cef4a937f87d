"""The action layer and the change broadcast, in a real window."""

from __future__ import annotations

import time

from PySide6.QtWidgets import QScrollArea, QVBoxLayout, QWidget

from app.core.errors import DemoAIError
from app.ui.widgets.status_line import StatusLine
from tests.support.cli import demoai


def test_an_action_runs_off_the_ui_thread_and_broadcasts_its_changes(
    qtbot, main_window, ui_watchdog
) -> None:
    services = main_window.services
    status = StatusLine()
    qtbot.addWidget(status)
    seen: list[frozenset[str]] = []
    services.bus.changed.connect(seen.append)
    results: list[object] = []

    def slow(progress):
        for i in range(5):
            progress.update(i, 5, f"step {i + 1} of 5")
            time.sleep(0.1)
        return "done"

    with ui_watchdog.watch():
        services.actions.run(None, "Saving", slow, changes={"datasets"}, done=results.append,
                             status=status, ok_text="Saved.")  # fmt: skip
        assert status.state == "busy" and status.isVisibleTo(status.parentWidget() or status)
        qtbot.waitUntil(lambda: results == ["done"], timeout=5000)
    ui_watchdog.assert_no_stall()
    assert status.state == "ok" and "Saved." in status.text
    assert any("datasets" in t for t in seen)


def test_a_failed_action_shows_its_message_and_hint_in_view(qtbot) -> None:
    """The error is drawn next to the action and scrolled into view in a long form."""
    from app.ui.actions import ActionRunner

    runner = ActionRunner(lambda topics: topics)
    area = QScrollArea()
    area.setWidgetResizable(True)
    inner = QWidget()
    lay = QVBoxLayout(inner)
    for _ in range(40):
        lay.addWidget(QWidget(minimumHeight=40))
    status = StatusLine()
    lay.addWidget(status)
    area.setWidget(inner)
    area.resize(400, 300)
    qtbot.addWidget(area)
    area.show()
    qtbot.waitExposed(area)

    def broken(progress):
        raise DemoAIError("The column 'answer' is missing.", "Pick a column that exists.")

    runner.run(area, "Checking", broken, status=status)
    qtbot.waitUntil(lambda: status.state == "error", timeout=5000)
    assert "The column 'answer' is missing." in status.text
    assert "Pick a column that exists." in status.text
    # in the viewport: the scroll area moved down to it
    qtbot.waitUntil(lambda: area.verticalScrollBar().value() > 0, timeout=2000)
    top = status.mapTo(area.viewport(), status.rect().topLeft()).y()
    assert 0 <= top < area.viewport().height()


def test_cancel_stops_a_long_action(qtbot) -> None:
    from app.ui.actions import ActionRunner

    runner = ActionRunner(lambda topics: topics)
    status = StatusLine()
    qtbot.addWidget(status)
    steps: list[int] = []

    def long(progress):
        for i in range(1000):
            progress.check()
            steps.append(i)
            time.sleep(0.01)

    handle = runner.run(None, "Importing", long, status=status, cancellable=True)
    qtbot.waitUntil(lambda: len(steps) > 3, timeout=5000)
    status.cancel.click()
    qtbot.waitUntil(lambda: handle.done.is_set(), timeout=5000)
    assert len(steps) < 1000
    qtbot.waitUntil(lambda: status.state == "ok", timeout=2000)
    assert "Cancelled" in status.text


def test_a_dataset_imported_by_the_cli_is_announced_within_a_second(
    qtbot, main_window, tmp_path
) -> None:
    services = main_window.services
    seen: list[frozenset[str]] = []
    services.bus.changed.connect(seen.append)
    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\nWhat is 2+2?,4\n")
    r = demoai(services.workspace.root, "data", "import", str(csv), "--name", "from-cli")
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    qtbot.waitUntil(lambda: any("datasets" in t for t in seen), timeout=3000)
    assert time.monotonic() - t0 < 1.5  # polled every 300 ms; generous bound for a busy machine


def test_the_watchdog_catches_app_code_that_blocks_the_ui_thread(qtbot, ui_watchdog) -> None:
    """The watchdog itself can fail: a slot in app/ that blocks 300 ms is reported by name."""
    from PySide6.QtCore import QTimer

    from tests.support.watchdog import APP_DIR

    # A slot whose code sits in a file under app/, as a pane's slot would.
    code = compile("time.sleep(0.3)\nfired.append(True)", APP_DIR + "ui/blocking_slot.py", "exec")
    fired: list[bool] = []
    with ui_watchdog.watch():
        QTimer.singleShot(0, lambda: exec(code, {"time": time, "fired": fired}))
        qtbot.waitUntil(lambda: bool(fired), timeout=3000)
    assert ui_watchdog.stalls, "a 300 ms block in app code was not noticed"
    assert ui_watchdog.stalls[0].seconds >= 0.1
    assert ui_watchdog.stalls[0].where.startswith("ui/blocking_slot.py")
