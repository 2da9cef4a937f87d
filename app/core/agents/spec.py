"""Agent specs: versioned definitions (model, prompt, sampling, tools, limits), and their store.

Every :meth:`AgentStore.save` adds a new version; runs record the version they
used, so a run can be replayed against exactly the spec that produced it.
"""

from __future__ import annotations

import builtins
import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import app.core.agents.schema  # noqa: F401  (tables)
from app.core.errors import ConfigError, NotFoundError
from app.core.store.db import Database

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SPEC_FORMAT = 1


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"Invalid {kind} name {name!r}.",
            "Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
    return name


@dataclass(frozen=True)
class ToolGrant:
    """A tool the agent may use; file tools need ``folder`` (the granted folder).

    ``embedding_model`` (a library model id, ``search_documents`` only) turns on
    semantic search: chunks embedded by that model, fused with keyword ranking.

    ``writable`` (``run_python`` only) mounts the folder writable in the sandbox
    (read-only otherwise); it is part of the spec, so approvals bind to it.
    """

    name: str
    folder: str | None = None
    embedding_model: str | None = None
    writable: bool = False

    def __post_init__(self) -> None:
        if self.embedding_model is not None and self.name != "search_documents":
            raise ConfigError(
                f"Tool {self.name!r}: only search_documents takes an embedding_model."
            )
        if self.writable and self.name != "run_python":
            raise ConfigError(
                f"Tool {self.name!r}: only run_python takes 'writable'.",
                "Remove 'writable' from this tool (write_file writes by itself).",
            )
        if self.writable and not self.folder:
            raise ConfigError(
                "Tool 'run_python': 'writable' needs a folder.",
                "Give run_python the folder it may write in, or remove 'writable'.",
            )

    @classmethod
    def from_obj(cls, obj: Any) -> ToolGrant:
        if isinstance(obj, str):
            return cls(obj)
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            folder = obj.get("folder")
            if folder is not None and not isinstance(folder, str):
                raise ConfigError(f"Tool {obj['name']!r}: folder must be a path string.")
            emb = obj.get("embedding_model")
            if emb is not None and not isinstance(emb, str):
                raise ConfigError(f"Tool {obj['name']!r}: embedding_model must be a model id.")
            writable = obj.get("writable", False)
            if not isinstance(writable, bool):
                raise ConfigError(f"Tool {obj['name']!r}: writable must be true or false.")
            return cls(obj["name"], folder, emb or None, writable)
        raise ConfigError(f"A tool must be a name or {{'name': ..., 'folder': ...}}, got {obj!r}.")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "folder": self.folder}
        if self.embedding_model:
            d["embedding_model"] = self.embedding_model
        if self.writable:  # only when set: older specs keep their hash
            d["writable"] = True
        return d


@dataclass(frozen=True)
class McpServerConfig:
    """An MCP server started over stdio: ``command args...`` with extra ``env``.

    Its tools appear as ``<name>.<tool>``; they are side-effecting unless the
    server marks them ``readOnlyHint``.
    """

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout_s: float = 30.0

    @classmethod
    def from_obj(cls, obj: Any) -> McpServerConfig:
        if not isinstance(obj, dict) or not isinstance(obj.get("command"), str):
            raise ConfigError(f"An MCP server needs 'name' and 'command', got {obj!r}.")
        name = check_name("MCP server", obj.get("name", ""))
        args = obj.get("args") or []
        env = obj.get("env") or {}
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ConfigError(f"MCP server {name!r}: args must be a list of strings.")
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ConfigError(f"MCP server {name!r}: env must map names to strings.")
        if not all(isinstance(k, str) for k in env):
            raise ConfigError(f"MCP server {name!r}: env must map names to strings.")
        cwd = obj.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ConfigError(f"MCP server {name!r}: cwd must be a folder path.")
        timeout = obj.get("timeout_s", 30.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ConfigError(f"MCP server {name!r}: timeout_s must be a number of seconds.")
        if not obj["command"].strip():
            raise ConfigError(f"MCP server {name!r}: the command is empty.")
        return cls(
            name=name,
            command=obj["command"],
            args=tuple(args),
            env=dict(env),
            cwd=cwd,
            timeout_s=min(max(float(timeout), 1.0), 3600.0),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["args"] = list(self.args)
        return d


@dataclass(frozen=True)
class Limits:
    """How far one run may go."""

    max_steps: int = field(default=8, metadata={"help": "model turns per run"})
    max_tokens: int = field(default=512, metadata={"help": "tokens per model reply"})
    timeout_s: float = field(default=300.0, metadata={"help": "wall-clock limit of a run"})

    def __post_init__(self) -> None:
        if not 1 <= self.max_steps <= 200:
            raise ConfigError("limits.max_steps must be between 1 and 200.")
        if not 1 <= self.max_tokens <= 32768:
            raise ConfigError("limits.max_tokens must be between 1 and 32768.")
        if not 0 < self.timeout_s <= 24 * 3600:
            raise ConfigError("limits.timeout_s must be positive (at most a day).")


DEFAULT_SAMPLING: dict[str, Any] = {"temperature": 0.0, "seed": 0}

#: How the model is asked to call tools: ``native`` uses the chat template's own
#: tool format (the server must report one), ``json`` the constrained JSON
#: protocol, ``auto`` native when the server reports a format, else json.
TOOL_MODES = ("auto", "native", "json")


@dataclass(frozen=True)
class AgentSpec:
    """One version of an agent. ``version`` 0 means not saved yet."""

    name: str
    description: str = ""
    model_id: str | None = None
    model_sha256: str | None = None
    system_prompt: str = "You are a helpful assistant."
    sampling: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLING))
    tools: tuple[ToolGrant, ...] = ()
    limits: Limits = field(default_factory=Limits)
    mcp_servers: tuple[McpServerConfig, ...] = ()
    tool_mode: str = "auto"
    #: Chat template preset for the local model host (None: the model's own template).
    template: str | None = None
    version: int = 0
    created_at: float = 0.0

    def __post_init__(self) -> None:
        check_name("agent", self.name)
        if self.tool_mode not in TOOL_MODES:
            raise ConfigError(
                f"tool_mode must be one of {', '.join(TOOL_MODES)}, not {self.tool_mode!r}."
            )
        if self.template is not None:
            from app.core.infer.templates import PRESETS

            if self.template not in PRESETS:
                raise ConfigError(
                    f"Unknown chat template preset {self.template!r}.",
                    f"Choose one of: {', '.join(sorted(PRESETS))}, or leave it out.",
                )
        from app.core.infer.sampling import SamplingParams

        if not isinstance(self.sampling, dict):
            raise ConfigError("sampling must be an object.")
        SamplingParams.from_openai(self.sampling)  # validates
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ConfigError("A tool is listed twice in the agent spec.")
        servers = [s.name for s in self.mcp_servers]
        if len(set(servers)) != len(servers):
            raise ConfigError("Two MCP servers have the same name.")

    @property
    def seed(self) -> int | None:
        seed = self.sampling.get("seed")
        return int(seed) if isinstance(seed, int) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "model": {"id": self.model_id, "sha256": self.model_sha256},
            "system_prompt": self.system_prompt,
            "sampling": dict(self.sampling),
            "tools": [t.to_dict() for t in self.tools],
            "limits": asdict(self.limits),
            "mcp_servers": [s.to_dict() for s in self.mcp_servers],
            "tool_mode": self.tool_mode,
            "template": self.template,
            "created_at": self.created_at,
        }

    def content_dict(self) -> dict[str, Any]:
        """The definition without version bookkeeping (for comparing and hashing)."""
        d = self.to_dict()
        d.pop("version")
        d.pop("created_at")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentSpec:
        """Build and validate a spec from JSON/YAML data (unknown keys are refused)."""
        if not isinstance(d, dict):
            raise ConfigError("An agent spec must be an object.")
        known = {
            "format", "name", "version", "description", "model", "model_id", "model_sha256",
            "system_prompt", "sampling", "tools", "limits", "mcp_servers", "created_at",
            "tool_mode", "template",
        }  # fmt: skip
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"Unknown key(s) in the agent spec: {', '.join(unknown)}.")
        if int(d.get("format", SPEC_FORMAT)) > SPEC_FORMAT:
            raise ConfigError("The agent spec was written by a newer DemoAI.", "Update DemoAI.")
        model = d.get("model") or {}
        if isinstance(model, str):
            model = {"id": model}
        limits = d.get("limits") or {}
        if not isinstance(limits, dict):
            raise ConfigError("limits must be an object.")
        try:
            lim = Limits(**limits)
        except TypeError as exc:
            raise ConfigError(f"Bad limits: {exc}.") from None
        return cls(
            name=d.get("name", ""),
            description=str(d.get("description") or ""),
            model_id=d.get("model_id", model.get("id")),
            model_sha256=d.get("model_sha256", model.get("sha256")),
            system_prompt=str(d.get("system_prompt") or ""),
            sampling=dict(d.get("sampling") or DEFAULT_SAMPLING),
            tools=tuple(ToolGrant.from_obj(t) for t in d.get("tools") or []),
            limits=lim,
            mcp_servers=tuple(McpServerConfig.from_obj(s) for s in d.get("mcp_servers") or []),
            tool_mode=str(d.get("tool_mode") or "auto"),
            template=d.get("template") or None,
            version=int(d.get("version") or 0),
            created_at=float(d.get("created_at") or 0.0),
        )


class AgentStore:
    """Agent specs by name and version (approvals: :mod:`app.core.agents.approvals`)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, spec: AgentSpec, *, by_user: bool = True) -> AgentSpec:
        """Store ``spec`` as the next version of its agent; returns it with version set.

        ``by_user``: the user wrote this spec (the Agents pane, ``demoai agent
        create``), so its side-effecting tool grants are approved for exactly this
        content. An imported spec (``by_user=False``) waits for the user. MCP
        servers always wait for an explicit approval.
        """
        now = time.time()
        with self.db.transaction() as c:
            row = c.execute(
                "SELECT MAX(version) FROM agents WHERE name = ?", (spec.name,)
            ).fetchone()
            version = int(row[0] or 0) + 1
            saved = replace(spec, version=version, created_at=now)
            c.execute(
                "INSERT INTO agents(name, version, spec, created_at) VALUES (?, ?, ?, ?)",
                (spec.name, version, json.dumps(saved.to_dict()), now),
            )
        if by_user:
            from app.core.agents.approvals import ApprovalStore

            store = ApprovalStore(self.db)
            for grant in store.pending(saved):
                if grant.kind == "tool":
                    store.approve(saved, grant, by="saved by the user")
        return saved

    def get(self, name: str, version: int | None = None) -> AgentSpec:
        """A version of an agent (the latest when ``version`` is None)."""
        if version is None:
            row = self.db.query_one(
                "SELECT spec FROM agents WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
            )
        else:
            row = self.db.query_one(
                "SELECT spec FROM agents WHERE name = ? AND version = ?", (name, version)
            )
        if row is None:
            what = f"agent {name!r}" + (f" version {version}" if version is not None else "")
            raise NotFoundError(f"No {what}.", "See `demoai agent list`.")
        return AgentSpec.from_dict(json.loads(row["spec"]))

    def list(self) -> builtins.list[AgentSpec]:
        """The latest version of every agent, by name."""
        rows = self.db.query(
            "SELECT a.spec FROM agents a JOIN (SELECT name, MAX(version) v FROM agents "
            "GROUP BY name) m ON a.name = m.name AND a.version = m.v ORDER BY a.name"
        )
        return [AgentSpec.from_dict(json.loads(r["spec"])) for r in rows]

    def versions(self, name: str) -> builtins.list[int]:
        return [
            int(r["version"])
            for r in self.db.query(
                "SELECT version FROM agents WHERE name = ? ORDER BY version", (name,)
            )
        ]
