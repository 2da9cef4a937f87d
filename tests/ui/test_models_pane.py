"""The Models pane with real imports (background jobs), details, filter and removal."""

from __future__ import annotations

from app.core.models.registry import ModelRegistry


def test_import_gguf_shows_metadata_and_remove(
    qtbot, main_window, gemma_gguf, tiny_llama_dir, ui_watchdog
) -> None:
    pane = main_window.pane("models")
    assert pane.empty.isVisible() and "library is empty" in pane.empty.text()
    pane.start_import(str(gemma_gguf), copy=False)
    qtbot.waitUntil(lambda: pane.model.rowCount() == 1, timeout=60_000)
    assert pane.table.isVisible()
    rec = pane.model.model_at(0)
    assert rec.architecture == "gemma3" and rec.quantization == "Q4_K_M"
    pane.select_model(rec.id)
    text = pane.details.toPlainText()
    assert (
        rec.sha256 in text and "referenced in place" in text and "gemma-3-270m-q4_k_m.gguf" in text
    )

    pane.start_import(str(tiny_llama_dir), copy=True, name="tiny")
    qtbot.waitUntil(lambda: pane.model.rowCount() == 2, timeout=60_000)
    pane.filter.setText("gemma3")
    assert pane.proxy.rowCount() == 1
    pane.filter.setText("")
    assert pane.proxy.rowCount() == 2

    # remove the copied model: its folder is deleted; the referenced GGUF stays on disk
    tiny = ModelRegistry(main_window.services.workspace).get("tiny")
    assert tiny.path.exists()
    from PySide6.QtWidgets import QMessageBox

    orig = QMessageBox.question
    QMessageBox.question = staticmethod(lambda *a, **k: QMessageBox.StandardButton.Yes)
    try:
        with ui_watchdog.watch():  # deleting a folder happens off the UI thread
            pane.select_model(tiny.id)
            pane.remove_selected()
            # the list may refresh (change broadcast) before the action reports; both come
            qtbot.waitUntil(lambda: pane.model.rowCount() == 1, timeout=10_000)
            qtbot.waitUntil(lambda: "freed" in pane.action_status.text, timeout=10_000)
            pane.select_model(rec.id)
            pane.remove_selected()
            qtbot.waitUntil(lambda: pane.model.rowCount() == 0, timeout=10_000)
    finally:
        QMessageBox.question = orig
    ui_watchdog.assert_no_stall()
    assert not tiny.path.exists()
    assert gemma_gguf.exists()
    assert "Removed" in pane.action_status.text and "freed" in pane.action_status.text


def test_models_made_elsewhere_appear_without_a_refresh(qtbot, main_window, tiny_llama_dir) -> None:
    """A model registered by another process (the CLI, a job) shows up in the open pane."""
    from tests.support.cli import demoai

    pane = main_window.pane("models")
    assert pane.model.rowCount() == 0
    ws = main_window.services.workspace.root
    r = demoai(ws, "models", "import", str(tiny_llama_dir), "--reference", "--name", "made-by-cli")
    assert r.returncode == 0, r.stderr
    qtbot.waitUntil(lambda: pane.model.rowCount() == 1, timeout=3000)
    assert pane.model.model_at(0).name == "made-by-cli" and pane.table.isVisible()


def test_chat_button_emits_request(qtbot, main_window, gemma_gguf) -> None:
    pane = main_window.pane("models")
    pane.start_import(str(gemma_gguf), copy=False)
    qtbot.waitUntil(lambda: pane.model.rowCount() == 1, timeout=60_000)
    rec = pane.model.model_at(0)
    pane.select_model(rec.id)
    with qtbot.waitSignal(main_window.services.bus.chat_with_model, timeout=2000) as sig:
        pane.chat_btn.click()
    assert sig.args == [rec.id]


def test_failed_import_is_reported(qtbot, main_window, tmp_path, monkeypatch) -> None:
    import app.ui.panes.models.qt_models_pane as mod

    shown: list[str] = []
    monkeypatch.setattr(mod, "show_error", lambda parent, title, exc: shown.append(str(exc)))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    pane = main_window.pane("models")
    pane.start_import(str(bad), copy=True)
    qtbot.waitUntil(lambda: bool(shown), timeout=30_000)
    assert "GGUF" in shown[0]
    assert pane.model.rowCount() == 0
    assert ModelRegistry(main_window.services.workspace).list() == []
