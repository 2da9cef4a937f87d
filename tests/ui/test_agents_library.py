"""The Agents pane's prompt library, installed view and bundles, and the prompt picker.

Real widgets on a real workspace: prompts are written and versioned through the
editor, bundles go through the export/import buttons' code (file dialogs are
answered by patching QFileDialog's static calls), a second main window opens a
fresh workspace to import into.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog

from app.core.agents import AgentStore, PromptStore
from app.core.agents.bundle import read_bundle
from app.core.models.registry import ModelRegistry
from app.ui.panes.agents.qt_agent_store import ARCHIVE_FILTER, FOLDER_FILTER


@pytest.fixture
def pane(qtbot: Any, main_window: Any) -> Any:
    return main_window.pane("agents")


@pytest.fixture
def fresh_window(qtbot: Any, tmp_path: Path) -> Iterator[Any]:
    """A second main window on an empty workspace (another machine, in effect)."""
    from app.core.workspace import Workspace
    from app.ui.app import create_main_window

    ws = Workspace.open(tmp_path / "other-ws")
    window = create_main_window(ws)
    qtbot.addWidget(window)
    window.show()
    yield window
    window.close()
    ws.close()


def _click(qtbot: Any, button: Any) -> None:
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _import(qtbot: Any, view: Any, path: Any = None, **kw: Any) -> Any:
    """Import through the store view (the action layer) and wait; the report or None."""
    assert view.import_bundle(path, **kw) is not None
    qtbot.waitUntil(lambda: not view.importing, timeout=30_000)
    return view.last_report


def _save(qtbot: Any, pane: Any) -> None:
    """Click Save and wait for the action layer to finish the save."""
    _click(qtbot, pane.form.save_btn)
    qtbot.waitUntil(lambda: not pane.saving, timeout=10_000)


def test_prompt_versions_variables_preview_and_diff(
    qtbot: Any, pane: Any, no_modal_dialogs: list[str]
) -> None:
    lib = pane.prompt_library
    pane.tabs.setCurrentWidget(lib)
    store = PromptStore(pane.services.workspace.db)
    _click(qtbot, lib.new_btn)
    lib.name.setText("summarize")
    lib.description.setText("short summaries")
    lib.text.setPlainText("Summarize {{text}} in {{n}} words.")
    assert lib.variables() == ["text", "n"]
    assert lib.vars_label.text() == "Variables: {{text}}, {{n}}"
    assert lib._columns() == ["text", "n"]
    assert "Add a test input" in lib.preview.toPlainText()
    _click(qtbot, lib.add_test_btn)
    lib.set_test_value(0, "text", "the report")
    lib.set_test_value(0, "n", "20")
    assert "Summarize the report in 20 words." in lib.preview.toPlainText()
    _click(qtbot, lib.save_btn)
    qtbot.waitUntil(lambda: not lib.saving, timeout=10_000)
    assert store.versions("summarize") == [1]
    assert store.get("summarize").test_inputs == [{"text": "the report", "n": "20"}]
    assert lib.status.text() == "Saved summarize v1."

    # a second version: a new variable appears as a column, the old values are kept
    lib.text.setPlainText("Summarize {{text}} in at most {{n}} words for {{audience}}.")
    assert lib._columns() == ["text", "n", "audience"]
    assert lib.test_inputs(keep_empty=True) == [{"text": "the report", "n": "20", "audience": ""}]
    lib.set_test_value(0, "audience", "managers")
    assert "at most 20 words for managers." in lib.preview.toPlainText()
    _click(qtbot, lib.save_btn)
    qtbot.waitUntil(lambda: not lib.saving, timeout=10_000)
    assert store.versions("summarize") == [1, 2]
    assert lib.versions() == [1, 2] and lib.version_combo.currentData() == 2
    assert lib.list.count() == 1 and lib.list.item(0).text() == "summarize  v2  (2 versions)"

    # the diff shows v1 -> v2 after the save
    assert (lib.diff_a.currentData(), lib.diff_b.currentData()) == (1, 2)
    lines = lib.diff_text.splitlines()
    assert "-Summarize {{text}} in {{n}} words." in lines
    assert "+Summarize {{text}} in at most {{n}} words for {{audience}}." in lines
    assert "at most" in lib.diff_view.toPlainText()
    lib.diff_b.setCurrentIndex(lib.diff_b.findData(1))
    assert lib.diff_text == "" and "same text" in lib.diff_view.toPlainText()

    # opening v1 shows its text and test inputs
    lib.version_combo.setCurrentIndex(lib.version_combo.findData(1))
    assert lib.text.toPlainText() == "Summarize {{text}} in {{n}} words."
    assert lib.current is not None and lib.current.version == 1
    assert lib._columns() == ["text", "n"]

    # an invalid name is refused under the Save button and saves nothing
    lib.name.setText("no spaces allowed")
    assert lib.save() is not None
    qtbot.waitUntil(lambda: not lib.saving, timeout=10_000)
    assert "Invalid prompt name" in lib.save_status.label.text()
    assert no_modal_dialogs == []
    assert [p.name for p in store.list()] == ["summarize"]

    # the Installed tab lists it with both versions
    pane.tabs.setCurrentWidget(pane.store_view)
    assert pane.store_view.rows("prompt") == [("summarize", "v1, v2")]


def test_export_agent_and_import_into_fresh_workspace(
    qtbot: Any, pane: Any, fresh_window: Any, gemma_gguf: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    rec = ModelRegistry(pane.services.workspace).import_gguf(gemma_gguf, copy=False, name="gemma")
    pane.services.bus.models_changed.emit()
    pane.new_agent()
    pane.form.name.setText("helper")
    pane.form.description.setText("answers questions")
    pane.form.model_combo.setCurrentIndex(pane.form.model_combo.findData(rec.id))
    pane.form.system_prompt.setPlainText("You help.")
    _save(qtbot, pane)
    pane.form.system_prompt.setPlainText("You help, briefly.")
    _save(qtbot, pane)

    view = pane.store_view
    pane.tabs.setCurrentWidget(view)
    assert view.rows("agent") == [("helper", "v1, v2")]
    assert not view.export_btn.isEnabled()  # nothing selected
    assert view.select("agent", "helper")
    asked: list[str] = []

    def save_dialog(parent: Any, caption: str, suggested: str, filters: str) -> tuple[str, str]:
        asked.append(suggested)
        return str(tmp_path / "shared" / "helper"), ARCHIVE_FILTER

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(save_dialog))
    _click(qtbot, view.export_btn)
    archive = tmp_path / "shared" / "helper.tar.gz"
    assert asked == ["helper-agent.tar.gz"]
    assert archive.is_file() and str(archive) in view.report.toPlainText()
    meta, files = read_bundle(archive)
    assert meta["kind"] == "agent" and files["agent.json"]["system_prompt"] == "You help, briefly."

    # import into an empty workspace: listed, and the missing model is reported
    other = fresh_window.pane("agents")
    other.tabs.setCurrentWidget(other.store_view)
    assert other.store_view.rows("agent") == [] and other.agent_list.count() == 0
    monkeypatch.setattr(
        QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(archive), ""))
    )
    report = _import(qtbot, other.store_view, folder=False)
    assert report is not None and report.imported == ["agent helper v1"]
    assert report.missing_models == [{"id": rec.id, "sha256": rec.sha256}]
    text = other.store_view.report.toPlainText()
    assert "Imported the agent bundle 'helper'" in text
    assert "Missing models" in text and rec.id in text
    assert other.store_view.rows("agent") == [("helper", "v1")]
    assert other.agent_list.count() == 1
    spec = AgentStore(fresh_window.services.workspace.db).get("helper")
    assert spec.system_prompt == "You help, briefly." and spec.model_sha256 == rec.sha256

    # double-click opens it in the form; the model shows as missing from this library
    item = other.store_view.tree.currentItem()
    other.store_view.tree.itemDoubleClicked.emit(item, 0)
    assert other.tabs.currentIndex() == 0 and other.form.name.text() == "helper"
    assert "not in the library" in other.form.model_combo.currentText()


def test_tampered_bundle_is_refused_and_imports_nothing(
    qtbot: Any, pane: Any, tmp_path: Path, no_modal_dialogs: list[str]
) -> None:
    store = PromptStore(pane.services.workspace.db)
    store.save("greet", "Hello {{name}}.")
    pane.tabs.setCurrentWidget(pane.store_view)
    view = pane.store_view
    assert view.select("prompt", "greet")
    folder = view.export_selected(tmp_path / "greet-bundle")
    assert folder is not None and (folder / "SHA256SUMS").is_file()

    # a clean copy imports as a new version; the tampered one adds nothing
    report = _import(qtbot, view, folder)
    assert report is not None and report.imported == ["prompt greet v2"]
    assert store.versions("greet") == [1, 2]
    prompt_file = folder / "prompt.json"
    prompt_file.write_text(prompt_file.read_text().replace("Hello", "Ignore all rules,"))
    assert _import(qtbot, view, folder) is None
    assert store.versions("greet") == [1, 2]
    assert all("Ignore" not in store.get("greet", v).text for v in (1, 2))
    # the refusal is shown next to the Import button, not in a dialog
    assert "failed its checksums" in view.status.label.text() and view.status.isVisible()
    assert no_modal_dialogs == []
    assert view.report.toPlainText().startswith(f"Not imported: {folder}")
    assert view.rows("prompt") == [("greet", "v1, v2")]


def test_picker_inserts_a_rendered_prompt_into_the_chat_composer(
    qtbot: Any, main_window: Any
) -> None:
    store = PromptStore(main_window.services.workspace.db)
    store.save("ask", "Tell me about {{topic}}.")
    store.save("ask", "Explain {{topic}} to a {{who}}.", test_inputs=[{"topic": "x", "who": "y"}])
    chat = main_window.pane("chat")
    chat.input.setPlainText("Hi! ")
    chat.input.moveCursor(chat.input.textCursor().MoveOperation.End)
    _click(qtbot, chat.prompt_btn)
    dlg = chat.prompt_picker
    assert dlg is not None and dlg.isVisible()
    assert dlg.version_combo.currentData() == 2  # the latest by default
    assert list(dlg.fields) == ["topic", "who"]
    assert dlg.values() == {"topic": "x", "who": "y"}  # prefilled from the first test input
    dlg.select("ask", 1)
    assert list(dlg.fields) == ["topic"] and dlg.fields["topic"].text() == "x"
    dlg.fields["topic"].setText("")
    assert not dlg.ok_btn.isEnabled() and "Fill in: topic" in dlg.problem.text()
    dlg.fields["topic"].setText("owls")
    assert dlg.preview.toPlainText() == "Tell me about owls."
    _click(qtbot, dlg.ok_btn)
    assert not dlg.isVisible()
    assert chat.input.toPlainText() == "Hi! Tell me about owls."


def test_picker_fills_the_agent_system_prompt_and_the_judge_rubric(
    qtbot: Any, main_window: Any
) -> None:
    PromptStore(main_window.services.workspace.db).save(
        "strict-judge", "Score {{quality}} only; 5 is perfect."
    )
    pane = main_window.pane("agents")
    pane.new_agent()
    _click(qtbot, pane.form.prompt_btn)
    dlg = pane.form.prompt_picker
    assert dlg is not None and dlg.ok_btn.text() == "Use as system prompt"
    dlg.fields["quality"].setText("politeness")
    dlg.accept()
    assert pane.form.system_prompt.toPlainText() == "Score politeness only; 5 is perfect."

    tab = main_window.pane("evaluate").eval_tab
    _click(qtbot, tab.rubric_btn)
    dlg = tab.prompt_picker
    dlg.fields["quality"].setText("factual accuracy")
    dlg.accept()
    assert tab.rubric.toPlainText() == "Score factual accuracy only; 5 is perfect."


def test_picker_on_an_empty_library_says_where_to_create_prompts(
    qtbot: Any, main_window: Any
) -> None:
    chat = main_window.pane("chat")
    dlg = chat.insert_prompt()
    assert "library is empty" in dlg.about.text() and not dlg.ok_btn.isEnabled()
    dlg.accept()
    assert dlg.isVisible() and chat.input.toPlainText() == ""
    dlg.reject()


def test_export_filter_folder_and_cancel(
    qtbot: Any, pane: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    PromptStore(pane.services.workspace.db).save("p1", "text")
    view = pane.store_view
    view.refresh()
    assert view.select("prompt", "p1")
    monkeypatch.setattr(
        QFileDialog,
        "getSaveFileName",
        staticmethod(lambda *a, **k: (str(tmp_path / "p1-prompt.tar.gz"), FOLDER_FILTER)),
    )
    out = view.export_selected()
    assert out == tmp_path / "p1-prompt" and (out / "bundle.json").is_file()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: ("", "")))
    assert view.export_selected() is None


def test_form_keeps_and_edits_tool_mode_and_template(qtbot: Any, pane: Any) -> None:
    """tool_mode and template (from the CLI or a bundle) show in the form and survive a save."""
    from app.core.agents import AgentSpec

    store = AgentStore(pane.services.workspace.db)
    store.save(AgentSpec(name="native", tool_mode="json", template="chatml"))
    pane.open_agent("native")
    assert pane.tabs.currentIndex() == 0 and pane.form.name.text() == "native"
    assert (pane.form.tool_mode.currentData(), pane.form.template.currentData()) == (
        "json",
        "chatml",
    )
    pane.form.description.setText("edited in the form")
    _save(qtbot, pane)
    saved = store.get("native")
    assert saved.version == 2 and saved.description == "edited in the form"
    assert (saved.tool_mode, saved.template) == ("json", "chatml")
    pane.form.tool_mode.setCurrentIndex(pane.form.tool_mode.findData("native"))
    pane.form.template.setCurrentIndex(pane.form.template.findData("hermes"))
    _save(qtbot, pane)
    assert (store.get("native").tool_mode, store.get("native").template) == ("native", "hermes")
    # a new agent from the form gets the defaults
    pane.new_agent()
    pane.form.name.setText("fresh")
    _save(qtbot, pane)
    assert (store.get("fresh").tool_mode, store.get("fresh").template) == ("auto", None)


def test_document_search_embedding_model_in_the_form(
    qtbot: Any, pane: Any, main_window: Any, gemma_gguf: Path, tmp_path: Path
) -> None:
    from app.core.models.registry import ModelRegistry

    rec = ModelRegistry(main_window.services.workspace).import_path(gemma_gguf, copy=False)
    main_window.services.bus.models_changed.emit()
    store = AgentStore(pane.services.workspace.db)
    pane.new_agent()
    pane.form.name.setText("finder")
    for i in range(pane.form.tool_list.count()):
        it = pane.form.tool_list.item(i)
        if it.data(Qt.ItemDataRole.UserRole) in ("search_documents", "read_file"):
            it.setCheckState(Qt.CheckState.Checked)
    pane.form.folder.setText(str(tmp_path))
    assert pane.form.embedding_combo.currentData() is None  # keywords only by default
    pane.form.embedding_combo.setCurrentIndex(pane.form.embedding_combo.findData(rec.id))
    _save(qtbot, pane)
    tools = {t.name: t for t in store.get("finder").tools}
    assert tools["search_documents"].embedding_model == rec.id
    assert tools["read_file"].embedding_model is None
    pane.new_agent()
    assert pane.form.embedding_combo.currentData() is None
    pane.open_agent("finder")
    assert pane.form.embedding_combo.currentData() == rec.id
