"""The prompt library: named, versioned prompts with ``{{variables}}``, diffs and test inputs.

Rendering is plain substitution (no template logic), so a prompt shared in a
bundle cannot run code; a variable without a value is an error naming it.
"""

from __future__ import annotations

import builtins
import difflib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import app.core.agents.schema  # noqa: F401  (tables)
from app.core.agents.spec import check_name
from app.core.errors import ConfigError, NotFoundError
from app.core.store.db import Database

_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def variables(text: str) -> list[str]:
    """The variable names used in ``text``, in order of first use."""
    return list(dict.fromkeys(_VAR.findall(text)))


def _lines(text: str) -> list[str]:
    """Lines for a diff, each ending in a newline (else a last line runs into the next one)."""
    return [line if line.endswith("\n") else line + "\n" for line in text.splitlines(True)]


def render(text: str, values: dict[str, Any]) -> str:
    """Substitute ``{{name}}`` placeholders; ConfigError listing every missing variable."""
    missing = [v for v in variables(text) if v not in values]
    if missing:
        raise ConfigError(
            f"Missing value(s) for prompt variable(s): {', '.join(missing)}.",
            "Pass them, e.g. --var name=value.",
        )
    return _VAR.sub(lambda m: str(values[m.group(1)]), text)


@dataclass(frozen=True)
class Prompt:
    """One version of a named prompt."""

    name: str
    version: int
    text: str
    description: str = ""
    test_inputs: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = 0.0

    @property
    def variables(self) -> list[str]:
        return variables(self.text)

    def render(self, values: dict[str, Any]) -> str:
        return render(self.text, values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "text": self.text,
            "description": self.description,
            "variables": self.variables,
            "test_inputs": self.test_inputs,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prompt:
        tests = d.get("test_inputs") or []
        if not isinstance(tests, list) or not all(isinstance(t, dict) for t in tests):
            raise ConfigError("test_inputs must be a list of objects (variable -> value).")
        return cls(
            name=check_name("prompt", d.get("name", "")),
            version=int(d.get("version") or 0),
            text=str(d.get("text") or ""),
            description=str(d.get("description") or ""),
            test_inputs=tests,
            created_at=float(d.get("created_at") or 0.0),
        )


class PromptStore:
    """Prompts by name and version; every save is a new version."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def save(
        self,
        name: str,
        text: str,
        *,
        description: str = "",
        test_inputs: builtins.list[dict[str, Any]] | None = None,
    ) -> Prompt:
        check_name("prompt", name)
        tests = list(test_inputs or [])
        for t in tests:  # a test input must give every variable a value
            render(text, t)
        now = time.time()
        with self.db.transaction() as c:
            row = c.execute("SELECT MAX(version) FROM prompts WHERE name = ?", (name,)).fetchone()
            version = int(row[0] or 0) + 1
            c.execute(
                "INSERT INTO prompts(name, version, text, description, test_inputs, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, version, text, description, json.dumps(tests), now),
            )
        return Prompt(name, version, text, description, tests, now)

    def get(self, name: str, version: int | None = None) -> Prompt:
        if version is None:
            row = self.db.query_one(
                "SELECT * FROM prompts WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
            )
        else:
            row = self.db.query_one(
                "SELECT * FROM prompts WHERE name = ? AND version = ?", (name, version)
            )
        if row is None:
            what = f"prompt {name!r}" + (f" version {version}" if version is not None else "")
            raise NotFoundError(f"No {what}.")
        return Prompt(
            row["name"],
            int(row["version"]),
            row["text"],
            row["description"],
            json.loads(row["test_inputs"]),
            float(row["created_at"]),
        )

    def list(self) -> builtins.list[Prompt]:
        """The latest version of every prompt."""
        names = [
            r["name"] for r in self.db.query("SELECT DISTINCT name FROM prompts ORDER BY name")
        ]
        return [self.get(n) for n in names]

    def versions(self, name: str) -> builtins.list[int]:
        return [
            int(r["version"])
            for r in self.db.query(
                "SELECT version FROM prompts WHERE name = ? ORDER BY version", (name,)
            )
        ]

    def diff(self, name: str, a: int, b: int) -> str:
        """A unified diff between two versions of a prompt."""
        pa, pb = self.get(name, a), self.get(name, b)
        return "".join(
            difflib.unified_diff(
                _lines(pa.text), _lines(pb.text), fromfile=f"{name}@v{a}", tofile=f"{name}@v{b}"
            )
        )

    def render_tests(self, name: str, version: int | None = None) -> builtins.list[str]:
        """The prompt rendered with each of its test inputs."""
        p = self.get(name, version)
        return [p.render(t) for t in p.test_inputs]
