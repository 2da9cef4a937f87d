"""One model host for the whole window: Chat, Agents and Arena on the same model load
it once (the host's own accounting says so), leases keep it, idle unload frees it, and
the status-bar button shows it by name with an Unload button."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt

from app.core.agents import RunStore
from app.core.models.registry import ModelRegistry
from app.ui.qt_host_status import HostStatusButton

SHOTS = Path("/tmp/shots")


def _copies(host: Any) -> int:
    status = host.status()
    return int(status["loaded_copies"]) if status else 0


def test_chat_agents_and_arena_share_one_loaded_copy(
    qtbot: Any, main_window: Any, gemma_gguf: Path, ui_watchdog: Any
) -> None:
    services = main_window.services
    host = services.host
    host.idle_unload_s = 2.0  # read when the host starts: quick idle unload for the test
    reg = ModelRegistry(services.workspace)
    rec = reg.import_gguf(gemma_gguf, copy=False, name="gemma")
    twin = reg.import_gguf(gemma_gguf, copy=False, name="gemma-twin")  # same file, other id
    services.bus.models_changed.emit()
    button = main_window.host_status  # in the window's status bar
    assert isinstance(button, HostStatusButton) and button.isVisible()
    assert button.text() == "No model loaded"

    # A pane that stays open on the model (as Chat does while it is selected).
    keep = None

    # The panes are built first (building one is not an action under test).
    chat = main_window.pane("chat")
    agents = main_window.pane("agents")
    arena = main_window.pane("evaluate").arena_tab
    # Starting the host, loading the model and answering: never on the UI thread.
    with ui_watchdog.watch():
        # Chat: one short answer.
        chat.refresh_models()
        chat.model_combo.setCurrentIndex(chat.model_combo.findData(rec.id))
        chat.max_tokens.setValue(4)
        chat.input.setPlainText("Hello")
        chat.send()
        qtbot.waitUntil(lambda: chat.stream is None, timeout=180_000)
        pid = host.pid
        assert pid is not None
        keep = host.lease(rec)  # from here the model must stay loaded

        # Agents: one JSON-mode step on the same library model.
        agents.new_agent()
        agents.form.name.setText("shared-host")
        agents.form.model_combo.setCurrentIndex(agents.form.model_combo.findData(rec.id))
        agents.form.max_steps.setValue(1)
        agents.form.max_tokens.setValue(16)
        agents.view.input.setPlainText('Reply {"final": "ok"}')
        qtbot.mouseClick(agents.view.run_btn, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: not agents.busy, timeout=180_000)
        run = RunStore(services.workspace.db).get(agents.run_id)
        assert run.model_id == rec.id
        SHOTS.mkdir(parents=True, exist_ok=True)
        agents.resize(1280, 760)
        agents.grab().save(str(SHOTS / "agents_pane_after_run.png"))
        assert agents.runner._leases == []  # the run gave its lease back
        assert host.leased().get(rec.id, 0) >= 1  # ours (and Chat's) are held

        # Arena: the model against its twin (another id on the same file).
        arena.refresh_models()
        arena.select_models([rec.id, twin.id])
        arena.prompts.setPlainText("Name a colour.")
        arena.max_tokens.setValue(4)
        assert arena.get_answers() is not None
        qtbot.waitUntil(lambda: arena.fetcher is None, timeout=180_000)
        assert arena.match is not None, arena.status.text()

    ui_watchdog.assert_no_stall()

    # One process, one copy of the weights for every pane, name and template.
    assert host.pid == pid
    status = host.status()
    assert status is not None
    served = {m["id"]: m for m in status["models"]}
    assert {rec.id, twin.id} <= set(served)
    assert served[rec.id]["weights"] == served[twin.id]["weights"]
    assert status["loaded_copies"] == 1, status
    size = status["loaded_bytes"]
    assert size > 50 * 2**20

    button.refresh()
    qtbot.waitUntil(lambda: button.text().startswith("1 model loaded"), timeout=10_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    main_window.grab().save(str(SHOTS / "window_host_status.png"))
    button.show_popup()
    qtbot.waitUntil(lambda: bool(button.popup.unload_buttons), timeout=10_000)
    names = [
        button.popup.rows.itemAtPosition(r, 0).widget().text()
        for r in range(button.popup.rows.rowCount())
        if button.popup.rows.itemAtPosition(r, 0) is not None
    ]
    assert names == ["gemma"]  # the library name, never the id
    SHOTS.mkdir(parents=True, exist_ok=True)
    button.popup.grab().save(str(SHOTS / "host_status_popup.png"))

    # The lease keeps it past the idle time; released, idle unload frees it.
    time.sleep(3.0)
    assert _copies(host) == 1
    host.release(keep)
    chat.shutdown()  # Chat gives its model back too
    assert host.leased() == {}
    qtbot.waitUntil(lambda: _copies(host) == 0, timeout=20_000)
    button.refresh()
    qtbot.waitUntil(lambda: button.text() == "No model loaded", timeout=10_000)
    assert host.pid == pid  # the process stays; only the weights went


def test_unload_button_frees_the_model(
    qtbot: Any, main_window: Any, gemma_gguf: Path, ui_watchdog: Any
) -> None:
    services = main_window.services
    rec = ModelRegistry(services.workspace).import_gguf(gemma_gguf, copy=False, name="gemma")
    lease = services.host.lease(rec)
    try:
        base_url, token = lease.base_url, lease.token
        import json
        import urllib.request

        req = urllib.request.Request(
            f"{base_url}/models/{lease.model}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:  # loads it
            assert json.loads(resp.read())["loaded"] is True
        button = HostStatusButton(services)
        qtbot.addWidget(button)
        button.refresh()
        qtbot.waitUntil(lambda: button.text().startswith("1 model loaded"), timeout=10_000)
        button.show_popup()
        qtbot.waitUntil(lambda: lease.model in button.popup.unload_buttons, timeout=10_000)
        with ui_watchdog.watch():  # the status reads and the unload run off the UI thread
            button.popup.unload_buttons[lease.model].click()
            qtbot.waitUntil(lambda: button.text() == "No model loaded", timeout=20_000)
        ui_watchdog.assert_no_stall()
        assert _copies(services.host) == 0
    finally:
        services.host.release(lease)
