"""Conversation trees in the workspace database.

Every message has a parent (None for the first). Editing a message or
regenerating an answer adds a *sibling* (same parent), so earlier branches are
kept; the conversation remembers which leaf is shown. Exported JSON carries the
model (id + sha256) and the sampling settings, so a conversation can be replayed.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from app.core.errors import NotFoundError
from app.core.store.db import Database, register_migrations

register_migrations(
    "chat",
    [
        """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            model_id TEXT,
            model_sha256 TEXT,
            system_prompt TEXT NOT NULL DEFAULT '',
            sampling TEXT NOT NULL DEFAULT '{}',
            current_leaf TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            parent_id TEXT REFERENCES messages(id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            model_id TEXT,
            sampling TEXT,
            usage TEXT,
            error TEXT,
            created_at REAL NOT NULL
        );
        CREATE INDEX messages_conv ON messages(conversation_id);
        CREATE INDEX messages_parent ON messages(parent_id)
        """
    ],
)

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    id: str
    conversation_id: str
    parent_id: str | None
    role: str
    content: str
    created_at: float
    model_id: str | None = None
    sampling: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Conversation:
    id: str
    title: str
    model_id: str | None
    model_sha256: str | None
    system_prompt: str
    sampling: dict[str, Any]
    current_leaf: str | None
    created_at: float
    updated_at: float


def _msg(r: dict[str, Any]) -> Message:
    return Message(
        id=r["id"],
        conversation_id=r["conversation_id"],
        parent_id=r["parent_id"],
        role=r["role"],
        content=r["content"],
        created_at=r["created_at"],
        model_id=r["model_id"],
        sampling=json.loads(r["sampling"]) if r["sampling"] else None,
        usage=json.loads(r["usage"]) if r["usage"] else None,
        error=r["error"],
    )


def _conv(r: dict[str, Any]) -> Conversation:
    return Conversation(
        id=r["id"],
        title=r["title"],
        model_id=r["model_id"],
        model_sha256=r["model_sha256"],
        system_prompt=r["system_prompt"],
        sampling=json.loads(r["sampling"] or "{}"),
        current_leaf=r["current_leaf"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


class ConversationStore:
    """Create, branch, search, export conversations."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- conversations -------------------------------------------------------------
    def create(
        self,
        title: str = "New chat",
        *,
        model_id: str | None = None,
        model_sha256: str | None = None,
        system_prompt: str = "",
        sampling: dict[str, Any] | None = None,
    ) -> Conversation:
        cid = uuid.uuid4().hex[:12]
        now = time.time()
        self.db.execute(
            "INSERT INTO conversations(id, title, model_id, model_sha256, system_prompt, sampling,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                cid,
                title,
                model_id,
                model_sha256,
                system_prompt,
                json.dumps(sampling or {}),
                now,
                now,
            ),
        )
        return self.get(cid)

    def get(self, conv_id: str) -> Conversation:
        row = self.db.query_one("SELECT * FROM conversations WHERE id = ?", (conv_id,))
        if row is None:
            raise NotFoundError(f"No conversation '{conv_id}'.")
        return _conv(row)

    def update(self, conv_id: str, **fields: Any) -> Conversation:
        """Change title, model_id, model_sha256, system_prompt or sampling."""
        allowed = {"title", "model_id", "model_sha256", "system_prompt", "sampling"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update {sorted(bad)}")
        if "sampling" in fields:
            fields["sampling"] = json.dumps(fields["sampling"])
        if fields:
            sets = ", ".join(f"{k} = ?" for k in fields)
            self.db.execute(
                f"UPDATE conversations SET {sets}, updated_at = ? WHERE id = ?",
                (*fields.values(), time.time(), conv_id),
            )
        return self.get(conv_id)

    def rename(self, conv_id: str, title: str) -> Conversation:
        return self.update(conv_id, title=title.strip() or "Untitled")

    def delete(self, conv_id: str) -> None:
        self.get(conv_id)
        with self.db.transaction() as c:
            c.execute("DELETE FROM messages WHERE conversation_id = ?", (conv_id,))
            c.execute("DELETE FROM conversations WHERE id = ?", (conv_id,))

    def list_conversations(self, search: str | None = None, limit: int = 500) -> list[Conversation]:
        """Newest first; ``search`` matches titles and message text (case-insensitive)."""
        if search:
            like = f"%{search}%"
            rows = self.db.query(
                "SELECT * FROM conversations WHERE title LIKE ? OR id IN "
                "(SELECT conversation_id FROM messages WHERE content LIKE ?) "
                "ORDER BY updated_at DESC LIMIT ?",
                (like, like, limit),
            )
        else:
            rows = self.db.query(
                "SELECT * FROM conversations ORDER BY updated_at DESC LIMIT ?", (limit,)
            )
        return [_conv(r) for r in rows]

    # -- messages ----------------------------------------------------------------------
    def message(self, msg_id: str) -> Message:
        row = self.db.query_one("SELECT * FROM messages WHERE id = ?", (msg_id,))
        if row is None:
            raise NotFoundError(f"No message '{msg_id}'.")
        return _msg(row)

    def add(
        self,
        conv_id: str,
        parent_id: str | None,
        role: str,
        content: str,
        *,
        model_id: str | None = None,
        sampling: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Message:
        """Append a message under ``parent_id`` and make it the shown leaf."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if parent_id is not None and self.message(parent_id).conversation_id != conv_id:
            raise ValueError("parent belongs to another conversation")
        mid = uuid.uuid4().hex[:16]
        now = time.time()
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO messages(id, conversation_id, parent_id, role, content, model_id,"
                " sampling, usage, error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    mid,
                    conv_id,
                    parent_id,
                    role,
                    content,
                    model_id,
                    json.dumps(sampling) if sampling is not None else None,
                    json.dumps(usage) if usage is not None else None,
                    error,
                    now,
                ),
            )
            c.execute(
                "UPDATE conversations SET current_leaf = ?, updated_at = ? WHERE id = ?",
                (mid, now, conv_id),
            )
        return self.message(mid)

    def finish(
        self,
        msg_id: str,
        content: str,
        *,
        usage: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Message:
        """Store the final (or, on error, partial) text of a streamed answer."""
        self.db.execute(
            "UPDATE messages SET content = ?, usage = ?, error = ? WHERE id = ?",
            (content, json.dumps(usage) if usage is not None else None, error, msg_id),
        )
        return self.message(msg_id)

    def edit(self, msg_id: str, content: str) -> Message:
        """A new sibling of ``msg_id`` with new text (the original branch is kept)."""
        old = self.message(msg_id)
        return self.add(old.conversation_id, old.parent_id, old.role, content)

    def children(self, msg_id: str | None, conv_id: str) -> list[Message]:
        if msg_id is None:
            rows = self.db.query(
                "SELECT * FROM messages WHERE conversation_id = ? AND parent_id IS NULL "
                "ORDER BY created_at, rowid",
                (conv_id,),
            )
        else:
            rows = self.db.query(
                "SELECT * FROM messages WHERE parent_id = ? ORDER BY created_at, rowid", (msg_id,)
            )
        return [_msg(r) for r in rows]

    def siblings(self, msg_id: str) -> list[Message]:
        """The message and its siblings (same parent), oldest first."""
        m = self.message(msg_id)
        return self.children(m.parent_id, m.conversation_id)

    def path(self, conv_id: str, leaf_id: str | None = None) -> list[Message]:
        """Messages from the root to ``leaf_id`` (default: the shown leaf)."""
        leaf = leaf_id if leaf_id is not None else self.get(conv_id).current_leaf
        out: list[Message] = []
        while leaf is not None:
            m = self.message(leaf)
            out.append(m)
            leaf = m.parent_id
        return out[::-1]

    def switch_to(self, msg_id: str) -> list[Message]:
        """Show the branch through ``msg_id``: its newest descendant becomes the leaf."""
        m = self.message(msg_id)
        leaf = m
        while kids := self.children(leaf.id, m.conversation_id):
            leaf = kids[-1]
        self.db.execute(
            "UPDATE conversations SET current_leaf = ?, updated_at = ? WHERE id = ?",
            (leaf.id, time.time(), m.conversation_id),
        )
        return self.path(m.conversation_id, leaf.id)

    # -- export ---------------------------------------------------------------------------
    def export(self, conv_id: str) -> dict[str, Any]:
        """The whole tree as JSON-ready data, with model identity and sampling for replay."""
        conv = self.get(conv_id)
        rows = self.db.query(
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY created_at, rowid",
            (conv_id,),
        )
        return {
            "format": "demoai.conversation/1",
            "id": conv.id,
            "title": conv.title,
            "model": {"id": conv.model_id, "sha256": conv.model_sha256},
            "system_prompt": conv.system_prompt,
            "sampling": conv.sampling,
            "current_leaf": conv.current_leaf,
            "created_at": conv.created_at,
            "messages": [_msg(r).to_dict() for r in rows],
        }
