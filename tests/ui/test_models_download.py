"""The Models pane's Download dialog against a local fake Hub."""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from app.core.format import human_size
from app.core.models.registry import ModelRegistry
from app.ui.panes.models.qt_download_dialog import OFFLINE_TEXT, gguf_quant_label
from app.ui.qt_settings_dialog import SettingsDialog
from tests.support.fake_hub import fake_hub_fixture, go_online, tiny_gguf_bytes  # noqa: F401


def _answer_settings(turn_network_on: bool) -> None:
    """Handle the modal Settings dialog once it is up (exec() blocks the test otherwise)."""

    def attempt() -> None:
        dlg = QApplication.activeModalWidget()
        if not isinstance(dlg, SettingsDialog):
            QTimer.singleShot(20, attempt)
            return
        dlg.offline.setChecked(not turn_network_on)
        dlg.accept()

    QTimer.singleShot(0, attempt)


def test_quant_labels() -> None:
    assert gguf_quant_label("org/gemma-3-270m-it-Q4_K_M.gguf") == "Q4_K_M"
    assert gguf_quant_label("model.Q8_0.gguf") == "Q8_0"
    assert gguf_quant_label("model-IQ2_XXS.gguf") == "IQ2_XXS"
    assert gguf_quant_label("model-f16.gguf") == "F16"
    assert gguf_quant_label("model.gguf") is None
    assert gguf_quant_label("model-Q4_K_M.safetensors") is None


def test_offline_says_so_and_offers_settings(qtbot, main_window, fake_hub) -> None:
    pane = main_window.pane("models")
    assert pane.download_btn.isVisible()
    dlg = pane.open_download_dialog()
    qtbot.waitExposed(dlg)
    assert dlg.pages.currentIndex() == 0
    assert dlg.offline_label.isVisible() and dlg.offline_label.text() == OFFLINE_TEXT
    assert not dlg.download_btn.isVisible()
    dlg.search()  # does nothing while offline
    assert fake_hub.requests == []

    _answer_settings(turn_network_on=False)  # the user looks, changes nothing
    dlg.settings_btn.click()
    assert dlg.pages.currentIndex() == 0
    _answer_settings(turn_network_on=True)
    dlg.settings_btn.click()
    assert not main_window.services.workspace.settings.offline
    assert dlg.pages.currentIndex() == 1 and dlg.query.isVisible()
    dlg.close()


def test_search_pick_a_quant_download_and_see_it_in_the_table(
    qtbot, main_window, fake_hub, tmp_path
) -> None:
    repo = fake_hub.add_repo(
        "acme/tiny-GGUF",
        {
            "README.md": b"# tiny\n",
            "tiny-F32.gguf": tiny_gguf_bytes(tmp_path, name="tiny"),
            "tiny-Q8_0.gguf": tiny_gguf_bytes(tmp_path, name="tiny", seed=1),
        },
        tags=["gguf"],
    )
    fake_hub.add_repo("acme/other", {"config.json": b"{}"})
    ws = main_window.services.workspace
    go_online(ws)
    pane = main_window.pane("models")
    dlg = pane.open_download_dialog()
    qtbot.waitExposed(dlg)
    assert dlg.pages.currentIndex() == 1
    assert not dlg.download_btn.isEnabled()

    dlg.query.setText("tiny")
    dlg.search_btn.click()
    qtbot.waitUntil(lambda: dlg.results.count() == 1, timeout=15_000)
    assert "acme/tiny-GGUF" in dlg.results.item(0).text()
    dlg.results.setCurrentRow(0)
    qtbot.waitUntil(lambda: dlg.files.count() == 3, timeout=15_000)
    labels = [dlg.files.item(i).text() for i in range(3)]
    q8 = next(t for t in labels if t.startswith("tiny-Q8_0.gguf"))
    size = human_size(len(repo.files["tiny-Q8_0.gguf"].data))
    assert q8 == f"tiny-Q8_0.gguf  —  {size}  —  GGUF Q8_0"
    assert "GGUF F32" in next(t for t in labels if t.startswith("tiny-F32.gguf"))
    assert "2 GGUF quantization(s)" in dlg.status.text()

    dlg.set_checked("tiny-Q8_0.gguf")
    assert dlg.download_btn.isEnabled()
    dlg.download_btn.click()
    qtbot.waitUntil(lambda: pane.model.rowCount() == 1, timeout=90_000)
    rec = pane.model.model_at(0)
    assert rec.name == "tiny-Q8_0" and rec.source_ref == f"acme/tiny-GGUF@{repo.sha}"
    assert ModelRegistry(ws).list()[0].id == rec.id
    # the list may show it (change broadcast) a moment before the finished job selects it
    qtbot.waitUntil(lambda: pane.selected_model() is not None, timeout=5000)
    assert pane.selected_model().id == rec.id


def test_failed_download_is_reported(qtbot, main_window, fake_hub, tmp_path, monkeypatch) -> None:
    import app.ui.panes.models.qt_models_pane as mod

    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(
        mod, "show_error", lambda parent, title, exc: shown.append((title, str(exc)))
    )
    data = tiny_gguf_bytes(tmp_path, name="bad")
    repo = fake_hub.add_repo("acme/bad-GGUF", {"bad-Q4_0.gguf": data})
    repo.files["bad-Q4_0.gguf"].served = b"\x00" * len(data)
    go_online(main_window.services.workspace)
    pane = main_window.pane("models")
    dlg = pane.open_download_dialog()
    dlg.select_repo("acme/bad-GGUF")
    qtbot.waitUntil(lambda: dlg.files.count() == 1, timeout=15_000)
    dlg.set_checked("bad-Q4_0.gguf")
    assert dlg.start_download() is not None
    qtbot.waitUntil(lambda: bool(shown), timeout=60_000)
    assert shown[0][0] == "Download failed" and "sha256" in shown[0][1]
    assert pane.model.rowCount() == 0
