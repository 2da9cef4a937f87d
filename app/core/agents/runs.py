"""Agent runs: a tree of steps persisted in SQLite, searchable, forkable.

A run starts with a ``system`` step (the full system prompt and the tool
descriptions the model saw) and a ``user`` step. Then, per turn: a ``model``
step (the raw reply, its parsed decision, the seed), optionally a
``correction`` (our request to fix an unparseable reply), an ``approval`` (for
side-effecting tools: once / always / deny, and who decided), a
``tool_result`` (marked untrusted when shown to the model), an ``error``, or a
``stop`` (the run reached one of its limits: not an error, the run is ``stopped``
and its ``error`` field holds the reason).
Forking adds a sibling branch; ``leaf_id`` is the branch shown.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import app.core.agents.schema  # noqa: F401  (tables)
from app.core.agents.spec import AgentSpec
from app.core.errors import ConfigError, NotFoundError
from app.core.store.db import Database

STEP_KINDS = (
    "system", "user", "model", "correction", "approval", "tool_result", "error", "stop",
)  # fmt: skip
# "max_steps" is how runs recorded before 2026-12 say "stopped at the step limit".
RUN_STATES = ("running", "succeeded", "failed", "stopped", "max_steps", "timeout", "diverged")
STOPPED_STATES = ("stopped", "max_steps")


@dataclass(frozen=True)
class Step:
    """One node of a run tree."""

    id: str
    run_id: str
    parent_id: str | None
    kind: str
    content: str
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def signature(self) -> dict[str, Any]:
        """What replay compares: kind, content, tool and arguments (no ids or times)."""
        return {
            "kind": self.kind,
            "content": self.content,
            "tool": self.tool,
            "arguments": self.arguments,
        }


@dataclass(frozen=True)
class Run:
    id: str
    agent: str
    agent_version: int
    spec: dict[str, Any]
    model_id: str | None
    model_sha256: str | None
    seed: int | None
    input: str
    status: str
    final: str | None
    error: str | None
    leaf_id: str | None
    replay_of: str | None
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def agent_spec(self) -> AgentSpec:
        return AgentSpec.from_dict(self.spec)


def _step(r: dict[str, Any]) -> Step:
    return Step(
        id=r["id"],
        run_id=r["run_id"],
        parent_id=r["parent_id"],
        kind=r["kind"],
        content=r["content"],
        tool=r["tool"],
        arguments=json.loads(r["arguments"]) if r["arguments"] else None,
        data=json.loads(r["data"] or "{}"),
        created_at=float(r["created_at"]),
    )


def _run(r: dict[str, Any]) -> Run:
    return Run(
        id=r["id"],
        agent=r["agent"],
        agent_version=int(r["agent_version"]),
        spec=json.loads(r["spec"]),
        model_id=r["model_id"],
        model_sha256=r["model_sha256"],
        seed=r["seed"],
        input=r["input"],
        status=r["status"],
        final=r["final"],
        error=r["error"],
        leaf_id=r["leaf_id"],
        replay_of=r["replay_of"],
        created_at=float(r["created_at"]),
        updated_at=float(r["updated_at"]),
    )


class RunStore:
    """Create, extend, branch and search agent runs."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        spec: AgentSpec,
        user_input: str,
        *,
        seed: int | None,
        replay_of: str | None = None,
        run_id: str | None = None,
    ) -> Run:
        rid = run_id or uuid.uuid4().hex[:12]
        now = time.time()
        self.db.execute(
            "INSERT INTO agent_runs(id, agent, agent_version, spec, model_id, model_sha256, seed,"
            " input, status, replay_of, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
            (
                rid,
                spec.name,
                spec.version,
                json.dumps(spec.to_dict()),
                spec.model_id,
                spec.model_sha256,
                seed,
                user_input,
                replay_of,
                now,
                now,
            ),
        )
        return self.get(rid)

    def add_step(
        self,
        run_id: str,
        parent_id: str | None,
        kind: str,
        content: str = "",
        *,
        tool: str | None = None,
        arguments: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        step_id: str | None = None,
    ) -> Step:
        """Append a step under ``parent_id`` and make it the run's shown leaf."""
        if kind not in STEP_KINDS:
            raise ConfigError(f"Unknown step kind {kind!r}.")
        sid = step_id or uuid.uuid4().hex[:16]
        now = time.time()
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO agent_steps(id, run_id, parent_id, kind, content, tool, arguments,"
                " data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sid,
                    run_id,
                    parent_id,
                    kind,
                    content,
                    tool,
                    json.dumps(arguments) if arguments is not None else None,
                    json.dumps(data or {}),
                    now,
                ),
            )
            c.execute(
                "UPDATE agent_runs SET leaf_id = ?, updated_at = ? WHERE id = ?",
                (sid, now, run_id),
            )
        return Step(sid, run_id, parent_id, kind, content, tool, arguments, data or {}, now)

    def finish(
        self, run_id: str, status: str, *, final: str | None = None, error: str | None = None
    ) -> Run:
        if status not in RUN_STATES:
            raise ConfigError(f"Unknown run state {status!r}.")
        self.db.execute(
            "UPDATE agent_runs SET status = ?, final = ?, error = ?, updated_at = ? WHERE id = ?",
            (status, final, error, time.time(), run_id),
        )
        return self.get(run_id)

    def set_leaf(self, run_id: str, step_id: str) -> None:
        """Show another branch (``step_id`` may be any step of the run)."""
        self.step(step_id, run_id=run_id)
        self.db.execute("UPDATE agent_runs SET leaf_id = ? WHERE id = ?", (step_id, run_id))

    # -- reading -------------------------------------------------------------------
    def get(self, run_id: str) -> Run:
        row = self.db.query_one("SELECT * FROM agent_runs WHERE id = ?", (run_id,))
        if row is None:
            raise NotFoundError(f"No agent run {run_id!r}.")
        return _run(row)

    def step(self, step_id: str, *, run_id: str | None = None) -> Step:
        row = self.db.query_one("SELECT * FROM agent_steps WHERE id = ?", (step_id,))
        if row is None or (run_id is not None and row["run_id"] != run_id):
            raise NotFoundError(f"No step {step_id!r}" + (f" in run {run_id}." if run_id else "."))
        return _step(row)

    def steps(self, run_id: str) -> builtins.list[Step]:
        """Every step of the run (all branches), oldest first."""
        rows = self.db.query(
            "SELECT * FROM agent_steps WHERE run_id = ? ORDER BY created_at, rowid", (run_id,)
        )
        return [_step(r) for r in rows]

    def children(self, step_id: str) -> builtins.list[Step]:
        rows = self.db.query(
            "SELECT * FROM agent_steps WHERE parent_id = ? ORDER BY created_at, rowid", (step_id,)
        )
        return [_step(r) for r in rows]

    def path(self, run_id: str, leaf_id: str | None = None) -> builtins.list[Step]:
        """Steps from the root to ``leaf_id`` (default: the run's shown leaf)."""
        leaf = leaf_id or self.get(run_id).leaf_id
        by_id = {s.id: s for s in self.steps(run_id)}
        out: builtins.list[Step] = []
        cur = by_id.get(leaf) if leaf else None
        if leaf and cur is None:
            raise NotFoundError(f"No step {leaf!r} in run {run_id}.")
        while cur is not None:
            out.append(cur)
            cur = by_id.get(cur.parent_id) if cur.parent_id else None
        return out[::-1]

    def list(
        self, *, agent: str | None = None, text: str | None = None, limit: int = 100
    ) -> builtins.list[Run]:
        """Runs, newest first; ``text`` searches the input, the answer and every step."""
        sql = "SELECT * FROM agent_runs r"
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if agent:
            where.append("r.agent = ?")
            params.append(agent)
        if text:
            like = f"%{text.lower()}%"
            where.append(
                "(lower(r.input) LIKE ? OR lower(coalesce(r.final, '')) LIKE ? OR EXISTS ("
                "SELECT 1 FROM agent_steps s WHERE s.run_id = r.id AND lower(s.content) LIKE ?))"
            )
            params += [like, like, like]
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.created_at DESC, r.id LIMIT ?"
        params.append(limit)
        return [_run(r) for r in self.db.query(sql, params)]

    def import_run(self, run: dict[str, Any], steps: builtins.list[dict[str, Any]]) -> Run:
        """Insert a run exported elsewhere (ids kept; refused if the id exists)."""
        if self.db.query_one("SELECT 1 FROM agent_runs WHERE id = ?", (run["id"],)):
            raise ConfigError(f"A run with id {run['id']!r} already exists in this workspace.")
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO agent_runs(id, agent, agent_version, spec, model_id, model_sha256,"
                " seed, input, status, final, error, leaf_id, replay_of, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run["id"], run["agent"], run["agent_version"], json.dumps(run["spec"]),
                    run.get("model_id"), run.get("model_sha256"), run.get("seed"), run["input"],
                    run["status"], run.get("final"), run.get("error"), run.get("leaf_id"),
                    run.get("replay_of"), run["created_at"], run["updated_at"],
                ),
            )  # fmt: skip
            for s in steps:
                c.execute(
                    "INSERT INTO agent_steps(id, run_id, parent_id, kind, content, tool,"
                    " arguments, data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        s["id"], run["id"], s.get("parent_id"), s["kind"], s["content"],
                        s.get("tool"),
                        json.dumps(s["arguments"]) if s.get("arguments") is not None else None,
                        json.dumps(s.get("data") or {}), s["created_at"],
                    ),
                )  # fmt: skip
        return self.get(run["id"])
