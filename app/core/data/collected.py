"""Feedback on chat replies, collected into a dataset with provenance per row.

Thumbs up, thumbs down and "a better answer" given on an assistant reply become
one row of the dataset named ``Collected`` (each feedback is a new version, so
the history of the collection is kept like any other dataset's). A row carries
where it came from: the source (``chat``), the model (id and sha256), the
sampling settings, the conversation and the path of message ids that led to the
reply, the time, the prompt messages, the reply, the rating and the better answer.

Exports, in the formats training reads:

* chat messages (``{"messages": [...]}``, JSON lines): the prompt with the
  preferred answer: a better answer when one was written, else a reply rated up;
* preference pairs (``{"prompt": [...], "chosen": str, "rejected": str}``):
  a better answer against the reply it replaces, and, for one prompt, a reply
  rated up against a reply rated down (regenerations are siblings of one prompt).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from app.core.errors import ConfigError, NotFoundError
from app.core.store.files import atomic_open

if TYPE_CHECKING:
    from app.core.data.store import VersionRecord
    from app.core.workspace.workspace import Workspace

COLLECTED = "Collected"
SOURCE_CHAT = "chat"
#: A better answer may be long, but not unbounded.
MAX_TEXT = 200_000

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("created_at", pa.float64()),
        ("source", pa.string()),
        ("model_id", pa.string()),
        ("model_sha256", pa.string()),
        ("settings", pa.string()),  # JSON: the sampling settings of the reply
        ("conversation_id", pa.string()),
        ("path", pa.string()),  # JSON: message ids from the root to the reply
        ("messages", pa.string()),  # JSON: the prompt, [{"role", "content"}, ...]
        ("reply", pa.string()),
        ("rating", pa.int8()),  # 1 up, -1 down, 0 none (a better answer alone)
        ("better", pa.string()),  # the answer the user wrote, or null
    ]
)

Rating = Literal["up", "down"] | None
_lock = threading.Lock()


@dataclass
class Feedback:
    """One collected row, as stored."""

    id: str
    created_at: float
    source: str
    model_id: str | None
    model_sha256: str | None
    settings: dict[str, Any]
    conversation_id: str
    path: list[str]
    messages: list[dict[str, str]]
    reply: str
    rating: int
    better: str | None

    def row(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["settings"] = json.dumps(self.settings, sort_keys=True)
        d["path"] = json.dumps(self.path)
        d["messages"] = json.dumps(self.messages, ensure_ascii=False)
        return d

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Feedback:
        return cls(
            id=r["id"],
            created_at=float(r["created_at"]),
            source=r["source"],
            model_id=r["model_id"],
            model_sha256=r["model_sha256"],
            settings=json.loads(r["settings"] or "{}"),
            conversation_id=r["conversation_id"],
            path=json.loads(r["path"] or "[]"),
            messages=json.loads(r["messages"] or "[]"),
            reply=r["reply"],
            rating=int(r["rating"]),
            better=r["better"],
        )


def feedback_for_message(
    ws: Workspace, message_id: str, *, rating: Rating = None, better: str | None = None
) -> Feedback:
    """Build the row for feedback on the assistant reply ``message_id`` (not stored yet)."""
    from app.core.chat.conversations import ConversationStore

    if rating not in (None, "up", "down"):
        raise ConfigError(f"A rating is 'up' or 'down', not {rating!r}.")
    if better is not None:
        better = better.strip()
        if not better:
            better = None
        elif len(better) > MAX_TEXT:
            raise ConfigError(f"The better answer is longer than {MAX_TEXT} characters.")
    if rating is None and better is None:
        raise ConfigError("Give a rating or a better answer.")
    store = ConversationStore(ws.db)
    reply = store.message(message_id)
    if reply.role != "assistant":
        raise ConfigError("Feedback is given on an assistant's reply.")
    if reply.error or not reply.content.strip():
        raise ConfigError("This reply is empty or failed; there is nothing to rate.")
    conv = store.get(reply.conversation_id)
    path = store.path(conv.id, reply.id)
    prompt = [{"role": m.role, "content": m.content} for m in path[:-1]]
    if conv.system_prompt.strip():
        prompt.insert(0, {"role": "system", "content": conv.system_prompt})
    model_id = reply.model_id or conv.model_id
    sha = conv.model_sha256 if model_id == conv.model_id else None
    if model_id and sha is None:
        row = ws.db.query_one("SELECT sha256 FROM models WHERE id = ?", (model_id,))
        sha = row["sha256"] if row else None
    return Feedback(
        id=uuid.uuid4().hex[:16],
        created_at=time.time(),
        source=SOURCE_CHAT,
        model_id=model_id,
        model_sha256=sha,
        settings=dict(reply.sampling or conv.sampling or {}),
        conversation_id=conv.id,
        path=[m.id for m in path],
        messages=prompt,
        reply=reply.content,
        rating={"up": 1, "down": -1, None: 0}[rating],
        better=better,
    )


def record_feedback(
    ws: Workspace, message_id: str, *, rating: Rating = None, better: str | None = None
) -> tuple[Feedback, VersionRecord]:
    """Add feedback on a chat reply as a row of the ``Collected`` dataset (a new version)."""
    fb = feedback_for_message(ws, message_id, rating=rating, better=better)
    return fb, append(ws, [fb])


def append(ws: Workspace, rows: list[Feedback]) -> VersionRecord:
    """Append rows to ``Collected`` (created on first use) as one new version."""
    from app.core.data.store import DatasetStore

    store = DatasetStore(ws)
    new = pa.Table.from_pylist([r.row() for r in rows], schema=SCHEMA)
    with _lock:
        try:
            store.get(COLLECTED)
        except NotFoundError:
            return store.create_dataset(
                COLLECTED,
                new,
                message=f"feedback from {rows[0].source}",
                operation={"name": "collect", "params": {"rows": len(rows)}},
                source="feedback",
                schema=SCHEMA,
            )
        old = store.read_table(COLLECTED).select(SCHEMA.names).cast(SCHEMA)
        return store.create_version(
            COLLECTED,
            pa.concat_tables([old, new]),
            message=f"feedback from {rows[0].source}",
            operation={"name": "collect", "params": {"rows": len(rows)}},
            schema=SCHEMA,
        )


def collected(ws: Workspace, version: str | None = None) -> list[Feedback]:
    """The rows of ``Collected`` (its current version, or ``version``); none yet: []."""
    from app.core.data.store import DatasetStore

    store = DatasetStore(ws)
    try:
        store.get(COLLECTED)
    except NotFoundError:
        return []
    ref = COLLECTED + (f"@{version}" if version else "")
    return [Feedback.from_row(r) for r in store.read_table(ref).to_pylist()]


def saved_labels(rows: list[Feedback], conversation_id: str) -> dict[str, str]:
    """For the replies of one conversation, what feedback was saved ("👍 saved · ...")."""
    out: dict[str, list[str]] = {}
    for r in rows:
        if r.conversation_id != conversation_id or not r.path:
            continue
        parts = out.setdefault(r.path[-1], [])
        for label in (
            {1: "👍 saved", -1: "👎 saved"}.get(r.rating),
            "better answer saved" if r.better else None,
        ):
            if label and label not in parts:
                parts.append(label)
    return {k: " · ".join(v) for k, v in out.items() if v}


def chat_examples(rows: list[Feedback]) -> list[dict[str, Any]]:
    """Training examples ``{"messages": [...]}``: the prompt and the preferred answer."""
    out = []
    for r in rows:
        answer = r.better if r.better else (r.reply if r.rating > 0 else None)
        if answer is not None:
            out.append({"messages": [*r.messages, {"role": "assistant", "content": answer}]})
    return out


def preference_pairs(rows: list[Feedback]) -> list[dict[str, Any]]:
    """``{"prompt": [...], "chosen": str, "rejected": str}`` pairs (see the module doc)."""
    pairs: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    by_prompt: dict[str, dict[str, list[str]]] = {}

    def add(prompt_key: str, prompt: list[dict[str, str]], chosen: str, rejected: str) -> None:
        key = (prompt_key, chosen, rejected)
        if chosen != rejected and key not in seen:
            seen.add(key)
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})

    prompts: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        key = json.dumps(r.messages, sort_keys=True, ensure_ascii=False)
        prompts[key] = r.messages
        group = by_prompt.setdefault(key, {"good": [], "bad": []})
        if r.better:
            add(key, r.messages, r.better, r.reply)
            group["good"].append(r.better)
        if r.rating > 0:
            group["good"].append(r.reply)
        elif r.rating < 0:
            group["bad"].append(r.reply)
    for key, group in by_prompt.items():
        for bad in group["bad"]:
            for good in group["good"]:
                add(key, prompts[key], good, bad)
    return pairs


def redact_rows(rows: list[Feedback], counts: dict[str, int] | None = None) -> list[Feedback]:
    """Copies of ``rows`` with personal data (emails, phones, cards, IBANs, IPs) replaced
    by labels in every text a training export uses (see :mod:`app.core.data.pii`)."""
    from dataclasses import replace

    from app.core.data.pii import redact_text

    def red(text: str) -> str:
        return redact_text(text, counts=counts)

    return [
        replace(
            r,
            messages=[{**m, "content": red(m["content"])} for m in r.messages],
            reply=red(r.reply),
            better=red(r.better) if r.better else r.better,
        )
        for r in rows
    ]


def export_jsonl(
    ws: Workspace,
    out: Path,
    kind: Literal["chat", "preference"],
    version: str | None = None,
    *,
    redact: bool = False,
    counts: dict[str, int] | None = None,
) -> int:
    """Write the chat examples or preference pairs of ``Collected`` as JSON lines; the count.

    ``redact`` replaces personal data first (``counts`` receives how many of each kind)."""
    rows = collected(ws, version)
    if redact:
        rows = redact_rows(rows, counts)
    items = chat_examples(rows) if kind == "chat" else preference_pairs(rows)
    with atomic_open(out, "wb") as fh:
        for item in items:
            fh.write((json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8"))
    return len(items)
