"""The Chat pane against the real model host and the real Gemma 3 270M GGUF."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QUrl
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QApplication

from app.core.chat import ConversationStore
from app.core.models.registry import ModelRegistry
from app.ui.panes.chat.qt_chat_pane import completion_prompt

SHOTS = os.environ.get("DEMOAI_SHOTS")  # a folder: the tests save screenshots of the pane there


def _shot(pane, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        if hasattr(pane, "splitter"):
            pane.window().resize(1280, 800)
            pane.splitter.setSizes([240, 760, 280])
            pane.render_transcript()
        QApplication.processEvents()
        pane.window().grab().save(str(Path(SHOTS) / f"{name}.png"))


def _paths_requested(pane) -> list[str]:
    log = pane.services.workspace.root / "logs" / "requests.jsonl"
    return [json.loads(line)["path"] for line in log.read_text().splitlines() if line.strip()]


@pytest.fixture
def chat(qtbot, main_window, gemma_gguf):
    rec = ModelRegistry(main_window.services.workspace).import_gguf(
        gemma_gguf, copy=False, name="gemma"
    )
    main_window.services.bus.models_changed.emit()
    pane = main_window.pane("chat")
    pane.refresh_models()
    pane.model_combo.setCurrentIndex(pane.model_combo.findData(rec.id))
    pane.max_tokens.setValue(24)
    pane.temperature.setValue(0.0)
    pane.seed.setValue(7)
    yield pane
    pane.shutdown()


def _send(qtbot, pane, text: str) -> None:
    pane.input.setPlainText(text)
    pane.send()
    qtbot.waitUntil(lambda: pane.stream is None, timeout=120_000)


def test_stream_branch_by_edit_and_switch(qtbot, chat) -> None:
    pane = chat
    seen_partial: list[str] = []
    pane.input.setPlainText("The capital of France is")
    pane.send()
    assert pane.stream is not None and pane.stop_btn.isEnabled()
    # tokens appear while streaming (before the stream finishes)
    qtbot.waitUntil(lambda: len(pane._answer_text) > 0 or pane.stream is None, timeout=120_000)
    if pane.stream is not None:
        seen_partial.append(pane._answer_text)
    qtbot.waitUntil(lambda: pane.stream is None, timeout=120_000)
    assert seen_partial, "no token arrived before the end of the stream"
    store = ConversationStore(pane.services.workspace.db)
    path = store.path(pane.conv.id)
    assert [m.role for m in path] == ["user", "assistant"]
    first_answer = path[1].content
    assert first_answer.strip() and path[1].usage["completion_tokens"] > 0
    assert " ".join(first_answer.split()) in " ".join(pane.transcript.toPlainText().split())
    assert "tokens/s" in pane.stats.text()
    assert path[1].sampling["seed"] == 7

    # edit the user message: a new branch, answered at once
    pane.edit_message(path[0].id, "The capital of Italy is")
    qtbot.waitUntil(lambda: pane.stream is None, timeout=120_000)
    path2 = store.path(pane.conv.id)
    assert path2[0].content == "The capital of Italy is"
    assert "1/2" not in pane.transcript.toPlainText() and "2/2" in pane.transcript.toPlainText()
    # switch back to the first branch through the transcript link
    from PySide6.QtCore import QUrl

    pane._link(QUrl(f"branch:{path[0].id}"))
    qtbot.waitUntil(lambda: "1/2" in pane.transcript.toPlainText(), timeout=5_000)
    assert [m.id for m in store.path(pane.conv.id)] == [path[0].id, path[1].id]

    # regenerate with the same seed and settings: same text, kept as a sibling
    pane.regenerate()
    qtbot.waitUntil(lambda: pane.stream is None, timeout=120_000)
    sibs = store.siblings(path[1].id)
    assert len(sibs) == 2 and sibs[1].content == first_answer


def test_killed_host_keeps_conversation_and_recovers(qtbot, chat) -> None:
    pane = chat
    _send(qtbot, pane, "Hello")
    pid = pane.host.pid
    assert pid is not None
    pane.max_tokens.setValue(400)
    pane.input.setPlainText("Write a long story about a cat")
    pane.send()
    qtbot.waitUntil(lambda: len(pane._answer_text) > 5, timeout=120_000)
    os.kill(pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: pane.stream is None, timeout=60_000)
    assert pane.banner.isVisible() and "kept" in pane.banner.text()
    store = ConversationStore(pane.services.workspace.db)
    path = store.path(pane.conv.id)
    assert len(path) == 4 and path[-1].error and path[-1].content  # partial answer kept
    # the next message restarts the host and works
    pane.max_tokens.setValue(8)
    _send(qtbot, pane, "Hello again")
    assert pane.host.pid != pid
    last = store.path(pane.conv.id)[-1]
    assert last.error is None and last.content.strip()


def test_conversations_persist_and_search(qtbot, chat) -> None:
    pane = chat
    _send(qtbot, pane, "Zebras are")
    conv_id = pane.conv.id
    pane.new_chat()
    assert pane.conv is None and "Start typing" in pane.transcript.toPlainText()
    assert not pane.conv_list.selectedItems()
    _send(qtbot, pane, "Giraffes are")  # a new chat is saved with its first message
    assert pane.conv.id != conv_id and pane.conv.title == "Giraffes are"
    assert pane.conv_list.count() == 2
    pane.search.setText("zebras")
    assert pane.conv_list.count() == 1
    assert pane.conv_list.item(0).data(0x0100) == conv_id


def test_base_model_gets_a_note_and_completion_mode(qtbot, chat, tiny_llama_dir) -> None:
    pane = chat
    gemma = pane.current_model()
    assert gemma is not None and not gemma.has_chat_template
    assert pane.model_note.isVisible() and "base model" in pane.model_note.text()
    assert gemma.name in pane.model_note.text() and "\n" not in pane.model_note.text()
    assert pane.current_mode() == "completion"
    # A model with a chat template of its own: no note, chat mode.
    tiny = ModelRegistry(pane.services.workspace).import_hf_folder(
        tiny_llama_dir, copy=False, name="tiny-chat"
    )
    pane.refresh_models()
    pane.model_combo.select(tiny.id)
    assert not pane.model_note.isVisible() and pane.current_mode() == "chat"
    pane.model_combo.select(gemma.id)
    assert pane.model_note.isVisible() and pane.current_mode() == "completion"

    _send(qtbot, pane, "The capital of France is")
    store = ConversationStore(pane.services.workspace.db)
    _user, answer = store.path(pane.conv.id)
    assert answer.content.strip() and answer.error is None
    assert answer.sampling["mode"] == "completion"
    assert _paths_requested(pane)[-1] == "/v1/completions"
    # The host confirms: its capabilities name no template of the model's own.
    assert pane.is_base_model(gemma) and pane._base[gemma.id] is True
    _shot(pane, "chat_base_model_note")

    # The user may switch to chat mode: the note says what that means; the chat endpoint is used.
    pane.mode.setCurrentIndex(pane.mode.findData("chat"))
    assert pane.model_note.isVisible() and "Completion mode suits it" in pane.model_note.text()
    _send(qtbot, pane, "And of Italy?")
    assert _paths_requested(pane)[-1] == "/v1/chat/completions"
    assert store.path(pane.conv.id)[-1].sampling["mode"] == "chat"
    # Reopening the conversation restores its mode.
    pane.mode.setCurrentIndex(pane.mode.findData("completion"))
    pane.open_conversation(pane.conv.id)
    assert pane.current_mode() == "chat"


def test_completion_prompt_is_the_conversation_as_text() -> None:
    msgs = [
        {"role": "system", "content": "Facts."},
        {"role": "user", "content": "Paris is"},
        {"role": "assistant", "content": " the capital of France."},
        {"role": "user", "content": "Rome is"},
    ]
    assert completion_prompt(msgs) == "Facts.\n\nParis is the capital of France.\nRome is"
    assert completion_prompt([{"role": "user", "content": "Once upon"}]) == "Once upon"


def test_stop_marks_the_partial_answer_and_keeps_the_mark(qtbot, chat) -> None:
    pane = chat
    pane.max_tokens.setValue(400)
    pane.temperature.setValue(0.8)
    pane.input.setPlainText("Once upon a time, in a small village by the sea,")
    pane.send()
    qtbot.waitUntil(lambda: len(pane._answer_text) > 10, timeout=120_000)
    t0 = time.monotonic()
    pane.stop()
    qtbot.waitUntil(lambda: pane.stream is None, timeout=5_000)
    assert time.monotonic() - t0 < 2.0
    store = ConversationStore(pane.services.workspace.db)
    answer = store.path(pane.conv.id)[-1]
    assert answer.usage["stopped"] is True and answer.error is None
    assert answer.content.strip() and "stopped" not in answer.content  # the text stays the model's
    assert answer.usage.get("completion_tokens", 0) < 400
    shown = pane.transcript.toPlainText()
    assert "— stopped" in shown and not pane.banner.isVisible()
    _shot(pane, "chat_stopped_answer")
    # Kept in the saved conversation: a fresh look at it shows the mark again.
    pane.new_chat()
    assert "— stopped" not in pane.transcript.toPlainText()
    pane.open_conversation(answer.conversation_id)
    assert "— stopped" in pane.transcript.toPlainText()
    exported = store.export(answer.conversation_id)
    assert "stopped" in json.dumps(exported)


def test_edit_dialog_is_sized_to_the_text_and_resizable(qtbot, chat) -> None:
    pane = chat
    _send(qtbot, pane, "Hello")
    user = ConversationStore(pane.services.workspace.db).path(pane.conv.id)[0]
    pane._link(QUrl(f"edit:{user.id}"))
    dlg = pane.edit_dialog
    assert dlg is not None and dlg.isVisible() and dlg.isSizeGripEnabled()
    assert dlg.width() >= 560 and dlg.height() >= 300
    assert dlg.maximumWidth() > 2000 and dlg.maximumHeight() > 2000  # not fixed
    dlg.reject()
    # A long message gets a larger editor, still within the screen.
    long_text = "\n".join(f"Line {i}: " + "word " * 25 for i in range(30))
    pane.edit_message(user.id, long_text)
    qtbot.waitUntil(lambda: pane.stream is None, timeout=120_000)
    edited = ConversationStore(pane.services.workspace.db).path(pane.conv.id)[0]
    dlg = pane.open_edit_dialog(edited.id)
    screen = pane.screen().availableGeometry()
    assert dlg.width() > 560 and dlg.height() > 300
    assert dlg.width() <= screen.width() and dlg.height() <= screen.height()
    _shot(dlg, "chat_edit_dialog")
    editor = dlg.findChild(type(pane.input), "editMessageText")
    editor.setPlainText("Hello there")
    dlg.accept()
    qtbot.waitUntil(lambda: pane.stream is None, timeout=120_000)
    assert ConversationStore(pane.services.workspace.db).path(pane.conv.id)[0].content == (
        "Hello there"
    )


def _link_spans(pane, prefix: str) -> list[tuple[int, int, str, str]]:
    doc = pane.transcript.document()
    spans = []
    block = doc.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            frag = it.fragment()
            fmt = frag.charFormat()
            if fmt.anchorHref().startswith(prefix):
                spans.append((frag.position(), frag.position() + frag.length(),
                              fmt.anchorHref(), fmt.toolTip()))  # fmt: skip
            it += 1
        block = block.next()
    return spans


def test_branch_links_are_wide_targets_with_tooltips(qtbot, chat) -> None:
    pane = chat
    pane.max_tokens.setValue(4)
    _send(qtbot, pane, "One")
    store = ConversationStore(pane.services.workspace.db)
    first = store.path(pane.conv.id)[0]
    pane.edit_message(first.id, "Two")
    qtbot.waitUntil(lambda: pane.stream is None, timeout=120_000)
    pane.edit_message(store.path(pane.conv.id)[0].id, "Three")
    qtbot.waitUntil(lambda: pane.stream is None, timeout=120_000)
    pane._link(QUrl(f"branch:{store.siblings(first.id)[1].id}"))  # the middle of three
    qtbot.waitUntil(lambda: "2/3" in pane.transcript.toPlainText(), timeout=5_000)
    spans = _link_spans(pane, "branch:")
    assert sorted(tip for *_, tip in spans) == ["next version 3/3", "previous version 1/3"]
    for start, end, href, _tip in spans:
        c0, c1 = QTextCursor(pane.transcript.document()), QTextCursor(pane.transcript.document())
        c0.setPosition(start)
        c1.setPosition(end)
        r0, r1 = pane.transcript.cursorRect(c0), pane.transcript.cursorRect(c1)
        assert r0.top() == r1.top() and r1.left() - r0.left() >= 24, href
        assert r0.height() >= 14
    assert "2/3" in pane.transcript.toPlainText()
    _shot(pane, "chat_branch_links")
    edit_tips = {tip for *_, tip in _link_spans(pane, "edit:")}
    assert edit_tips and all(t.startswith("Edit this message") for t in edit_tips)
    # Clicking "next ›" goes to version 3.
    nxt = next(href for *_, href, tip in spans if tip.startswith("next"))
    pane._link(QUrl(nxt))
    qtbot.waitUntil(lambda: "3/3" in pane.transcript.toPlainText(), timeout=5_000)
    assert store.path(pane.conv.id)[0].content == "Three"


def test_pane_uses_a_lease_of_the_shared_host(qtbot, chat) -> None:
    pane = chat
    _send(qtbot, pane, "Hi")
    host = pane.services.host
    assert pane._lease is not None and host.leased().get(pane._lease.model) == 1
    _send(qtbot, pane, "Again")
    assert host.leased().get(pane._lease.model) == 1  # the older lease was given back
    pane.shutdown()
    assert host.leased().get(pane.current_model().id, 0) == 0


def test_rename_delete_and_export_run_as_actions(qtbot, main_window, tmp_path) -> None:
    pane = main_window.pane("chat")
    store = ConversationStore(pane.services.workspace.db)
    keep = store.create("Keep me")
    conv = store.create("Old title")
    store.add(conv.id, None, "user", "Hello")
    pane.refresh_conversations()
    pane.open_conversation(conv.id)

    pane.rename_to("New title")
    qtbot.waitUntil(lambda: store.get(conv.id).title == "New title", timeout=5_000)
    qtbot.waitUntil(
        lambda: (
            "New title" in [pane.conv_list.item(i).text() for i in range(pane.conv_list.count())]
        ),
        timeout=5_000,
    )
    # the list may refresh (change broadcast) before the action reports; both come
    qtbot.waitUntil(lambda: pane.conv.title == "New title", timeout=5_000)

    out = tmp_path / "chat.json"
    pane.export_to(str(out))
    qtbot.waitUntil(out.exists, timeout=5_000)
    assert json.loads(out.read_text())["messages"][0]["content"] == "Hello"
    qtbot.waitUntil(lambda: "Exported" in pane.action_status.text, timeout=5_000)
    # A failure is shown next to the buttons, and nothing half-written is left.
    (tmp_path / "a-file").write_text("not a folder")
    bad = tmp_path / "a-file" / "chat.json"
    pane.export_to(str(bad))
    qtbot.waitUntil(lambda: pane.action_status.state == "error", timeout=5_000)
    assert pane.action_status.isVisible() and f"Cannot write {bad}" in pane.action_status.text
    assert "Choose another folder" in pane.action_status.text
    assert (tmp_path / "a-file").read_text() == "not a folder"

    pane.delete_chat()
    qtbot.waitUntil(lambda: pane.conv is None, timeout=5_000)
    assert [c.id for c in store.list_conversations()] == [keep.id]
    assert pane.conv_list.count() == 1


def test_sending_saves_off_the_ui_thread(qtbot, chat, ui_watchdog) -> None:
    """The message and the answer are written by the action layer; no stall on the UI thread."""
    pane = chat
    pane.max_tokens.setValue(4)
    with ui_watchdog.watch():
        pane.input.setPlainText("Hello")
        pane.send()
        assert pane.stream is not None and not pane.send_btn.isEnabled()  # busy at once
        qtbot.waitUntil(lambda: pane.stream is None, timeout=120_000)
        pane.regenerate()
        qtbot.waitUntil(lambda: pane.stream is None, timeout=120_000)
    ui_watchdog.assert_no_stall()
    store = ConversationStore(pane.services.workspace.db)
    path = store.path(pane.conv.id)
    assert [m.role for m in path] == ["user", "assistant"] and path[1].content.strip()
    assert len(store.siblings(path[1].id)) == 2


def test_stop_before_the_message_is_saved(qtbot, chat) -> None:
    pane = chat
    pane.input.setPlainText("Hello")
    pane.send()
    pane.stop()  # before the action saved the message: no model call at all
    qtbot.waitUntil(lambda: pane.stream is None, timeout=10_000)
    answer = ConversationStore(pane.services.workspace.db).path(pane.conv.id)[-1]
    assert answer.role == "assistant" and answer.usage["stopped"] is True
    assert answer.content == "" and "— stopped" in pane.transcript.toPlainText()
