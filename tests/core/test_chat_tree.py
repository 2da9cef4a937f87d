"""Conversation trees: branches by edit and regenerate, switching, search, export."""

from __future__ import annotations

import json

import pytest

from app.core.chat import ConversationStore
from app.core.errors import NotFoundError


def test_branching_by_edit_and_regenerate(workspace) -> None:
    store = ConversationStore(workspace.db)
    conv = store.create("Test", model_id="m1", model_sha256="abc", sampling={"seed": 7})
    u1 = store.add(conv.id, None, "user", "Hello")
    a1 = store.add(conv.id, u1.id, "assistant", "Hi there")
    u2 = store.add(conv.id, a1.id, "user", "What is 2+2?")
    a2 = store.add(conv.id, u2.id, "assistant", "4")
    assert [m.content for m in store.path(conv.id)] == ["Hello", "Hi there", "What is 2+2?", "4"]

    # edit the second user message: a sibling branch, the old one is kept
    u2b = store.edit(u2.id, "What is 3+3?")
    assert u2b.parent_id == a1.id
    assert [m.content for m in store.path(conv.id)] == ["Hello", "Hi there", "What is 3+3?"]
    a2b = store.add(conv.id, u2b.id, "assistant", "6")
    # regenerate the answer: another sibling
    a2c = store.add(conv.id, u2b.id, "assistant", "six")
    assert [m.id for m in store.siblings(a2b.id)] == [a2b.id, a2c.id]
    assert [m.id for m in store.siblings(u2.id)] == [u2.id, u2b.id]

    # switch back to the first branch: its newest leaf is shown
    path = store.switch_to(u2.id)
    assert [m.id for m in path] == [u1.id, a1.id, u2.id, a2.id]
    assert store.get(conv.id).current_leaf == a2.id
    # and forward again to the edited branch: newest descendant (the regenerated answer)
    assert store.switch_to(u2b.id)[-1].id == a2c.id


def test_partial_answer_kept_with_error(workspace) -> None:
    store = ConversationStore(workspace.db)
    conv = store.create()
    u = store.add(conv.id, None, "user", "Tell me a story")
    a = store.add(conv.id, u.id, "assistant", "")
    store.finish(a.id, "Once upon a", error="The model host stopped while answering.")
    m = store.path(conv.id)[-1]
    assert m.content == "Once upon a" and "stopped" in (m.error or "")


def test_search_rename_delete_export(workspace) -> None:
    store = ConversationStore(workspace.db)
    c1 = store.create("Budget", model_id="gemma", model_sha256="f00", sampling={"temperature": 0.2})
    store.add(c1.id, None, "user", "Quarterly numbers for the Zurich office")
    c2 = store.create("Other")
    store.add(c2.id, None, "user", "Nothing relevant")
    assert [c.id for c in store.list_conversations("zurich")] == [c1.id]
    assert [c.id for c in store.list_conversations("budget")] == [c1.id]
    store.rename(c2.id, "  ")
    assert store.get(c2.id).title == "Untitled"
    data = json.loads(json.dumps(store.export(c1.id)))
    assert data["model"] == {"id": "gemma", "sha256": "f00"}
    assert data["sampling"] == {"temperature": 0.2}
    assert data["messages"][0]["content"].startswith("Quarterly")
    store.delete(c2.id)
    with pytest.raises(NotFoundError):
        store.get(c2.id)
    assert (
        workspace.db.query(
            "SELECT COUNT(*) AS n FROM messages WHERE conversation_id = ?", (c2.id,)
        )[0]["n"]
        == 0
    )


def test_parent_from_another_conversation_is_refused(workspace) -> None:
    store = ConversationStore(workspace.db)
    a = store.create()
    b = store.create()
    m = store.add(a.id, None, "user", "x")
    with pytest.raises(ValueError, match="another conversation"):
        store.add(b.id, m.id, "assistant", "y")
