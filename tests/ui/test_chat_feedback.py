"""Feedback in the Chat pane (real host, real Gemma 3 270M GGUF) becomes Collected rows."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QUrl
from PySide6.QtWidgets import QPlainTextEdit

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
    pane.max_tokens.setValue(16)
    pane.temperature.setValue(0.0)
    pane.seed.setValue(7)
    yield pane, rec
    pane.shutdown()


def test_thumbs_and_a_better_answer_become_rows_with_provenance(qtbot, chat, ui_watchdog) -> None:
    from app.core.data.collected import chat_examples, collected, preference_pairs
    from app.core.data.store import DatasetStore

    pane, rec = chat
    ws = pane.services.workspace
    pane.input.setPlainText("The capital of France is")
    pane.send()
    qtbot.waitUntil(lambda: pane.stream is None, timeout=120_000)
    store = ConversationStore(ws.db)
    user, reply = store.path(pane.conv.id)
    assert reply.content.strip()
    shown = pane.transcript.toPlainText()
    assert "👍" in shown and "👎" in shown and "better answer…" in shown

    with ui_watchdog.watch():
        pane._link(QUrl(f"good:{reply.id}"))
        qtbot.waitUntil(lambda: reply.id in pane.feedback_given, timeout=30_000)
    ui_watchdog.assert_no_stall()
    assert "👍 saved" in pane.transcript.toPlainText()
    assert "row 1 of the dataset Collected" in pane.stats.text()
    (row,) = collected(ws)
    assert (row.source, row.model_id, row.model_sha256) == ("chat", rec.id, rec.sha256)
    assert row.rating == 1 and row.reply == reply.content and row.better is None
    assert row.conversation_id == pane.conv.id and row.path == [user.id, reply.id]
    assert row.messages == [{"role": "user", "content": "The capital of France is"}]
    assert row.settings["seed"] == 7 and row.settings["temperature"] == 0.0

    pane._link(QUrl(f"good:{reply.id}"))  # the same rating again: no second row
    # A thumbs down and a better answer on the reply.
    pane._link(QUrl(f"bad:{reply.id}"))
    qtbot.waitUntil(lambda: len(collected(ws)) == 2, timeout=30_000)
    pane._link(QUrl(f"better:{reply.id}"))
    dlg = pane.better_dialog
    assert dlg is not None
    editor = dlg.findChild(QPlainTextEdit, "betterAnswerText")
    assert editor.toPlainText() == reply.content  # starts from the model's answer
    editor.setPlainText("Paris.")
    dlg.accept()
    qtbot.waitUntil(lambda: len(collected(ws)) == 3, timeout=30_000)
    qtbot.waitUntil(lambda: "better answer saved" in pane.transcript.toPlainText(), timeout=10_000)

    rows = collected(ws)
    assert [r.rating for r in rows] == [1, -1, 0] and rows[2].better == "Paris."
    assert pane.feedback_given[reply.id] == "👍 saved · 👎 saved · better answer saved"
    assert len(DatasetStore(ws).versions("Collected")) == 3
    pairs = preference_pairs(rows)
    assert {"prompt": row.messages, "chosen": "Paris.", "rejected": reply.content} in pairs
    examples = chat_examples(rows)
    assert examples[-1]["messages"][-1] == {"role": "assistant", "content": "Paris."}
    # The conversation itself is unchanged.
    assert [m.id for m in store.path(pane.conv.id)] == [user.id, reply.id]
    # Opened again (another session), the reply shows what was saved, read from Collected.
    pane.feedback_given.clear()
    pane.render_transcript()
    assert "better answer saved" not in pane.transcript.toPlainText()
    with ui_watchdog.watch():
        pane.open_conversation(pane.conv.id)
        qtbot.waitUntil(lambda: reply.id in pane.feedback_given, timeout=30_000)
    ui_watchdog.assert_no_stall()
    assert pane.feedback_given[reply.id] == "👍 saved · 👎 saved · better answer saved"
    assert "better answer saved" in pane.transcript.toPlainText()
