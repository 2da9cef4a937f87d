"""The Chat pane against the real model host and the real Gemma 3 270M GGUF."""

from __future__ import annotations

import os
import signal

import pytest

from app.core.chat import ConversationStore
from app.core.models.registry import ModelRegistry


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
    assert [m.id for m in store.path(pane.conv.id)] == [path[0].id, path[1].id]
    assert "1/2" in pane.transcript.toPlainText()

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
    assert pane.conv.id != conv_id
    pane.search.setText("zebras")
    assert pane.conv_list.count() == 1
    assert pane.conv_list.item(0).data(0x0100) == conv_id
