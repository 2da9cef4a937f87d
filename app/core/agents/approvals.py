"""What an agent version may do, and the user's approvals bound to exactly that.

An agent spec can start programs (its MCP servers, with their argv and
environment) and change things (side-effecting tools such as ``write_file`` in
a folder). Those are its *grants*. A grant is active only when the user
approved it for this agent and this exact spec content: an approval records
(agent, spec hash, grant kind, name, grant hash), where the spec hash is the
SHA-256 of the canonical spec content (not the version number) and the grant
hash covers exactly what was shown (argv + env + cwd, or the folder). Any
change to the spec - an edit, a new version, an imported bundle - has a new
hash, so nothing approved before carries over.

Kinds of approval:

* ``mcp_server`` - the server may be started. Always needs the user.
* ``tool`` - a side-effecting built-in tool is offered to the model. Saving a
  spec locally (the Agents pane, ``demoai agent create``) approves its tool
  grants, because the user wrote them; an imported spec's grants wait for the
  user. Each call of such a tool is still approved (once / always).
* ``always`` - calls of one tool run without asking (also unattended).

:func:`capabilities` computes everything a spec lets an agent do from the spec
itself, for the import report and for approving.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.core.agents.sandbox import GRANT_DIR
from app.core.agents.spec import AgentSpec, McpServerConfig, ToolGrant
from app.core.errors import NotFoundError
from app.core.store.db import Database

GrantKind = Literal["mcp_server", "tool"]
ApprovalKind = Literal["mcp_server", "tool", "always"]
#: Built-in tools that read inside the granted folder, and those that write there.
READ_TOOLS = ("read_file", "list_files", "search_files", "search_documents")
WRITE_TOOLS = ("write_file",)
#: How an interactive approver answers: run this time, remember for this version, refuse.
Decision = Literal["once", "always", "deny"]
GrantAsker = Callable[["Grant"], str]


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal content, equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(obj: Any) -> str:
    """Hex SHA-256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def spec_hash(spec: AgentSpec) -> str:
    """The hash approvals bind to: the spec's whole content, without version bookkeeping."""
    return digest(spec.content_dict())


def _side_effect(tool: str) -> bool | None:
    """Whether a built-in tool has side effects; None for a name that is not a built-in."""
    from app.core.agents.builtin_tools import BUILTIN_TOOLS, ToolContext

    factory = BUILTIN_TOOLS.get(tool)
    return None if factory is None else factory(ToolContext()).side_effect


@dataclass(frozen=True)
class Grant:
    """One thing an agent version may do that the user must approve: start a server, use a tool."""

    kind: GrantKind
    name: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return digest({"kind": self.kind, "name": self.name, "detail": self.detail})

    @classmethod
    def for_server(cls, server: McpServerConfig) -> Grant:
        detail = {
            "argv": [server.command, *server.args],
            "env": dict(server.env),
            "cwd": server.cwd,
            "timeout_s": server.timeout_s,
        }
        return cls("mcp_server", server.name, detail)

    @classmethod
    def for_tool(cls, grant: ToolGrant) -> Grant:
        folder = str(Path(grant.folder).expanduser()) if grant.folder else None
        detail: dict[str, Any] = {"folder": folder}
        if grant.writable:  # only when set, so read-only grants keep their digest
            detail["writable"] = True
        return cls("tool", grant.name, detail)

    def describe(self) -> str:
        """One paragraph saying exactly what approving allows."""
        d = self.detail
        if self.kind == "mcp_server":
            text = f"MCP server {self.name!r} starts the program: {shlex.join(d.get('argv') or [])}"
            env = d.get("env") or {}
            text += "\n    environment: " + (
                ", ".join(f"{k}={v}" for k, v in sorted(env.items())) if env else "(unchanged)"
            )
            if d.get("cwd"):
                text += f"\n    working folder: {d['cwd']}"
            return text + "\n    It runs with your user's permissions."
        folder = d.get("folder")
        if self.name in WRITE_TOOLS:
            return f"{self.name} may create and replace files in {folder or '(no folder granted)'}"
        if self.name == "run_python":
            return "run_python " + python_access(folder, bool(d.get("writable")))
        where = f" in {folder}" if folder else ""
        return f"{self.name} (changes things){where}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "detail": self.detail,
            "digest": self.digest,
            "description": self.describe(),
        }


def python_access(folder: str | None, writable: bool) -> str:
    """What run_python's code gets, in words (approval text and import report)."""
    if not folder:
        return "runs Python in a sandbox; no folder; no network"
    mode = "writable" if writable else "read-only"
    return f"runs Python in a sandbox; folder {folder} mounted at {GRANT_DIR}, {mode}; no network"


def grants(spec: AgentSpec) -> list[Grant]:
    """Everything in ``spec`` that needs approval: its MCP servers and side-effecting tools."""
    out = [Grant.for_server(s) for s in spec.mcp_servers]
    out += [Grant.for_tool(t) for t in spec.tools if _side_effect(t.name) is not False]
    return out


def tool_grant(spec: AgentSpec, tool: str, source: str = "builtin") -> Grant | None:
    """The grant a tool of ``spec`` comes from (``source`` ``mcp:<server>`` for MCP tools)."""
    if source.startswith("mcp:"):
        server = source.removeprefix("mcp:")
        return next((Grant.for_server(s) for s in spec.mcp_servers if s.name == server), None)
    return next((Grant.for_tool(t) for t in spec.tools if t.name == tool), None)


def capabilities(spec: AgentSpec, db: Database | None = None) -> dict[str, Any]:
    """Everything ``spec`` lets the agent do, computed from the spec alone.

    ``tools`` (name, side effect, folder, access), ``folders`` (path, read/write),
    ``mcp_servers`` (full argv, env, cwd), ``models`` (id, sha256, role), and
    ``grants`` (what needs approval).
    """
    tools: list[dict[str, Any]] = []
    folders: dict[str, set[str]] = {}
    for t in spec.tools:
        side = _side_effect(t.name)
        folder = str(Path(t.folder).expanduser()) if t.folder else None
        if t.name == "run_python":
            access = ("write" if t.writable else "read") if folder else None
        else:
            access = "write" if t.name in WRITE_TOOLS else "read" if t.name in READ_TOOLS else None
        if folder and access:
            folders.setdefault(folder, set()).add(access)
        tools.append({
            "name": t.name,
            "side_effect": True if side is None else side,
            "known": side is not None,
            "folder": folder if access else None,
            "access": access,
            "embedding_model": t.embedding_model,
            "writable": t.writable,
        })  # fmt: skip
    models: list[dict[str, Any]] = []
    if spec.model_id or spec.model_sha256:
        models.append({"id": spec.model_id, "sha256": spec.model_sha256, "role": "chat"})
    for mid in sorted({t.embedding_model for t in spec.tools if t.embedding_model}):
        row = db.query_one("SELECT sha256 FROM models WHERE id = ?", (mid,)) if db else None
        models.append({"id": mid, "sha256": row["sha256"] if row else None, "role": "embedding"})
    return {
        "agent": spec.name,
        "spec_hash": spec_hash(spec),
        "tools": tools,
        "folders": [
            {"path": p, "access": "write" if "write" in a else "read"}
            for p, a in sorted(folders.items())
        ],
        "mcp_servers": [
            {"name": s.name, "argv": [s.command, *s.args], "env": dict(s.env), "cwd": s.cwd}
            for s in spec.mcp_servers
        ],
        "models": models,
        "grants": [g.to_dict() for g in grants(spec)],
    }


def describe_capabilities(caps: dict[str, Any]) -> list[str]:
    """The capabilities as plain lines for a report (CLI and the Agents pane)."""
    lines = [f"What agent {caps['agent']} can do (computed from its spec):"]
    lines.append("  Tools:" if caps["tools"] else "  Tools: none")
    for t in caps["tools"]:
        if not t["known"]:
            what = "unknown tool (the agent will not start)"
        elif t["name"] == "run_python":
            what = python_access(t["folder"], t["access"] == "write")
            what = ("CHANGES FILES: " if t["access"] == "write" else "") + what
        elif t["access"] == "write":
            what = f"CHANGES FILES: creates and replaces files in {t['folder'] or '(no folder)'}"
        elif t["access"] == "read":
            what = f"reads files in {t['folder'] or '(no folder)'}"
        else:
            what = "changes things (each call is approved)" if t["side_effect"] else "read-only"
        lines.append(f"    {t['name']}: {what}")
    if caps["folders"]:
        lines.append("  Folders:")
        lines += [f"    {f['path']}: {f['access']}" for f in caps["folders"]]
    lines.append(
        "  MCP servers (programs it starts):" if caps["mcp_servers"] else "  MCP servers: none"
    )
    for s in caps["mcp_servers"]:
        lines.append(f"    {s['name']}: {shlex.join(s['argv'])}")
        env = s["env"]
        lines.append(
            "      environment: "
            + (", ".join(f"{k}={v}" for k, v in sorted(env.items())) if env else "(unchanged)")
        )
        if s["cwd"]:
            lines.append(f"      working folder: {s['cwd']}")
    if caps["models"]:
        lines.append("  Models:")
    for m in caps["models"]:
        sha = f" (sha256 {m['sha256']})" if m.get("sha256") else ""
        lines.append(f"    {m['role']}: {m['id'] or '?'}{sha}")
    return lines


@dataclass(frozen=True)
class Approval:
    """A recorded approval (see the module docs for the kinds)."""

    id: int
    agent: str
    spec_hash: str
    kind: str
    name: str
    grant_hash: str
    what: dict[str, Any]
    approved_by: str
    created_at: float
    versions: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.kind == "always":
            g = self.what.get("grant") or {}
            where = f" (grant: {Grant(g['kind'], g['name'], g['detail']).describe()})" if g else ""
            return f"calls of {self.name} run without asking{where}"
        return Grant(self.kind, self.name, self.what).describe()  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent,
            "versions": list(self.versions),
            "spec_hash": self.spec_hash,
            "kind": self.kind,
            "name": self.name,
            "grant_hash": self.grant_hash,
            "what": self.what,
            "approved_by": self.approved_by,
            "created_at": self.created_at,
            "description": self.describe(),
        }


class ApprovalStore:
    """Approvals by (agent, spec hash, kind, name, grant hash); list and revoke."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _has(self, agent: str, h: str, kind: str, name: str, grant_hash: str) -> bool:
        return (
            self.db.query_one(
                "SELECT 1 FROM agent_approvals WHERE agent = ? AND spec_hash = ? AND kind = ? "
                "AND name = ? AND grant_hash = ?",
                (agent, h, kind, name, grant_hash),
            )
            is not None
        )

    def _record(self, agent: str, h: str, kind: str, name: str, grant_hash: str,
                what: dict[str, Any], by: str) -> None:  # fmt: skip
        self.db.execute(
            "INSERT OR IGNORE INTO agent_approvals(agent, spec_hash, kind, name, grant_hash, "
            "what, approved_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (agent, h, kind, name, grant_hash, canonical_json(what), by, time.time()),
        )

    # -- grants (servers and side-effecting tools) ---------------------------------------
    def is_approved(self, spec: AgentSpec, grant: Grant) -> bool:
        return self._has(spec.name, spec_hash(spec), grant.kind, grant.name, grant.digest)

    def approve(self, spec: AgentSpec, grant: Grant, *, by: str = "user") -> None:
        """Record that ``grant`` of exactly this spec content is approved."""
        self._record(spec.name, spec_hash(spec), grant.kind, grant.name, grant.digest,
                     grant.detail, by)  # fmt: skip

    def pending(self, spec: AgentSpec) -> builtins.list[Grant]:
        """The grants of ``spec`` that are not approved (inactive)."""
        return [g for g in grants(spec) if not self.is_approved(spec, g)]

    def gate(self, spec: AgentSpec, ask: GrantAsker | None = None) -> Callable[[Grant], bool]:
        """The check :func:`app.core.agents.loop.agent_tools` calls before using a grant.

        An approved grant passes. Otherwise ``ask(grant)`` decides (``once``,
        ``always`` - recorded for this spec content - or ``deny``); with no
        ``ask`` (unattended) it does not pass.
        """

        def check(grant: Grant) -> bool:
            if self.is_approved(spec, grant):
                return True
            if ask is None:
                return False
            try:
                decision = ask(grant)
            except Exception:  # an asker that fails denies
                return False
            if decision == "always":
                self.approve(spec, grant, by="user")
            return decision in ("once", "always")

        return check

    # -- "always" for the calls of one tool ----------------------------------------------
    def allow_always(self, spec: AgentSpec, tool: str, grant: Grant | None) -> None:
        """Calls of ``tool`` (from ``grant``) run without asking, for this spec content."""
        what = {"grant": {"kind": grant.kind, "name": grant.name, "detail": grant.detail}
                if grant else None}  # fmt: skip
        self._record(spec.name, spec_hash(spec), "always", tool,
                     grant.digest if grant else "", what, "user")  # fmt: skip

    def always_allowed(self, spec: AgentSpec, tool: str, grant: Grant | None) -> bool:
        return self._has(spec.name, spec_hash(spec), "always", tool, grant.digest if grant else "")

    # -- listing and revoking ------------------------------------------------------------
    def list(self, agent: str | None = None) -> builtins.list[Approval]:
        """Every approval (of one agent), with the agent versions whose content it matches."""
        sql = "SELECT * FROM agent_approvals"
        params: tuple[Any, ...] = ()
        if agent is not None:
            sql, params = sql + " WHERE agent = ?", (agent,)
        rows = self.db.query(sql + " ORDER BY agent, created_at, id", params)
        hashes: dict[str, dict[str, list[int]]] = {}
        out = []
        for r in rows:
            if r["agent"] not in hashes:
                hashes[r["agent"]] = self._version_hashes(r["agent"])
            out.append(
                Approval(
                    id=int(r["id"]),
                    agent=r["agent"],
                    spec_hash=r["spec_hash"],
                    kind=r["kind"],
                    name=r["name"],
                    grant_hash=r["grant_hash"],
                    what=json.loads(r["what"]),
                    approved_by=r["approved_by"],
                    created_at=float(r["created_at"]),
                    versions=tuple(hashes[r["agent"]].get(r["spec_hash"], [])),
                )
            )
        return out

    def _version_hashes(self, agent: str) -> dict[str, builtins.list[int]]:
        out: dict[str, builtins.list[int]] = {}
        for r in self.db.query(
            "SELECT version, spec FROM agents WHERE name = ? ORDER BY version", (agent,)
        ):
            h = spec_hash(AgentSpec.from_dict(json.loads(r["spec"])))
            out.setdefault(h, []).append(int(r["version"]))
        return out

    def revoke(self, approval_id: int) -> Approval:
        """Forget one approval; returns what it was."""
        found = [a for a in self.list() if a.id == approval_id]
        if not found:
            raise NotFoundError(
                f"No approval with id {approval_id}.", "See `demoai agent approvals list`."
            )
        self.db.execute("DELETE FROM agent_approvals WHERE id = ?", (approval_id,))
        return found[0]

    def revoke_agent(self, agent: str) -> int:
        """Forget every approval of ``agent``; returns how many there were."""
        return self.db.execute("DELETE FROM agent_approvals WHERE agent = ?", (agent,))
