"""Feedback on chat replies: rows of the Collected dataset, provenance, training exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.core.chat.conversations import ConversationStore
from app.core.data.collected import (
    COLLECTED,
    chat_examples,
    collected,
    preference_pairs,
    record_feedback,
)
from app.core.errors import ConfigError


def _chat(ws: Any) -> tuple[str, str, str]:
    """A conversation: system prompt, a question, two sibling answers (a regeneration)."""
    store = ConversationStore(ws.db)
    conv = store.create(
        "t", model_id="m-1", model_sha256="ab" * 32, system_prompt="Be brief.",
        sampling={"temperature": 0.2},
    )  # fmt: skip
    q = store.add(conv.id, None, "user", "Capital of France?")
    a1 = store.add(conv.id, q.id, "assistant", "", model_id="m-1", sampling={"temperature": 0.2})
    store.finish(a1.id, "Lyon.")
    a2 = store.add(conv.id, q.id, "assistant", "", model_id="m-1", sampling={"temperature": 0.7})
    store.finish(a2.id, "Paris.")
    return conv.id, a1.id, a2.id


def test_feedback_rows_carry_provenance_and_version_the_dataset(workspace: Any) -> None:
    from app.core.data.store import DatasetStore

    conv_id, bad, good = _chat(workspace)
    fb1, v1 = record_feedback(workspace, bad, rating="down", better="Paris.")
    fb2, v2 = record_feedback(workspace, good, rating="up")
    assert v1.hash != v2.hash and v2.rows == 2
    versions = DatasetStore(workspace).versions(COLLECTED)
    assert len(versions) == 2
    rows = collected(workspace)
    assert [r.id for r in rows] == [fb1.id, fb2.id]
    r1 = rows[0]
    assert (r1.source, r1.model_id, r1.model_sha256) == ("chat", "m-1", "ab" * 32)
    assert r1.conversation_id == conv_id and r1.path[-1] == bad and len(r1.path) == 2
    assert r1.settings == {"temperature": 0.2} and rows[1].settings == {"temperature": 0.7}
    assert r1.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert (r1.reply, r1.rating, r1.better) == ("Lyon.", -1, "Paris.")
    assert rows[1].rating == 1 and rows[1].better is None and r1.created_at <= rows[1].created_at
    # The first version still holds only the first row.
    assert [r.id for r in collected(workspace, v1.hash)] == [fb1.id]


def test_exports_are_chat_messages_and_preference_pairs(workspace: Any, tmp_path: Path) -> None:
    from app.cli.main import main

    _, bad, good = _chat(workspace)
    record_feedback(workspace, bad, rating="down")
    record_feedback(workspace, good, rating="up")
    record_feedback(workspace, bad, better="Paris, on the Seine.")
    rows = collected(workspace)
    prompt = rows[0].messages
    assert chat_examples(rows) == [
        {"messages": [*prompt, {"role": "assistant", "content": "Paris."}]},
        {"messages": [*prompt, {"role": "assistant", "content": "Paris, on the Seine."}]},
    ]
    pairs = preference_pairs(rows)
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {
        ("Paris, on the Seine.", "Lyon."),
        ("Paris.", "Lyon."),
    }
    assert all(p["prompt"] == prompt for p in pairs) and len(pairs) == 2

    ws = str(workspace.root)
    out = tmp_path / "pairs.jsonl"
    assert main(["--workspace", ws, "feedback", "export", "--format", "preference",
                 "--out", str(out)]) == 0  # fmt: skip
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == pairs
    chat = tmp_path / "chat.jsonl"
    assert main(["--workspace", ws, "feedback", "export", "--format", "chat",
                 "--out", str(chat)]) == 0  # fmt: skip
    # Fine-tuning's own data check accepts the file as chat data.
    from app.core.train.data import check_data_file, detect_format, read_records

    assert check_data_file(chat, "chat") == []
    assert detect_format(read_records(chat)) == "chat" and len(read_records(chat)) == 2


def test_bad_feedback_is_refused(workspace: Any) -> None:
    _, bad, _good = _chat(workspace)
    store = ConversationStore(workspace.db)
    user_id = store.message(bad).parent_id
    assert user_id is not None
    with pytest.raises(ConfigError, match="assistant"):
        record_feedback(workspace, user_id, rating="up")
    with pytest.raises(ConfigError, match="rating or a better answer"):
        record_feedback(workspace, bad, better="   ")
    with pytest.raises(ConfigError):
        record_feedback(workspace, bad, rating="sideways")  # type: ignore[arg-type]
    assert collected(workspace) == []


def test_export_can_redact_personal_data(
    workspace: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli.main import main

    store = ConversationStore(workspace.db)
    conv = store.create("t", model_id="m-1")
    q = store.add(conv.id, None, "user", "Mail jane.doe@example.com about it")
    a = store.add(conv.id, q.id, "assistant", "", model_id="m-1")
    store.finish(a.id, "Call +44 20 7946 0958.")
    record_feedback(workspace, a.id, rating="down", better="Write to jane.doe@example.com.")
    out = tmp_path / "pairs.jsonl"
    argv = ["--workspace", str(workspace.root), "feedback", "export", "--format", "preference"]
    assert main([*argv, "--out", str(out), "--redact-pii"]) == 0
    assert "personal data redacted: 2 email, 1 phone" in capsys.readouterr().out
    (pair,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert pair == {
        "prompt": [{"role": "user", "content": "Mail [EMAIL] about it"}],
        "chosen": "Write to [EMAIL].",
        "rejected": "Call [PHONE].",
    }
    # Without the flag the export holds what was said; the dataset itself is unchanged.
    assert main([*argv, "--out", str(out)]) == 0
    assert "jane.doe@example.com" in out.read_text()
    assert collected(workspace)[0].better == "Write to jane.doe@example.com."
