"""Database tables of the agents capability: agent and prompt versions, approvals, runs.

Agent runs have their own step tree (``agent_steps``) rather than reusing the chat
``messages`` table: a step carries a kind (model reply, tool call, approval,
tool result, error), the tool name and arguments, and replay data (seed, raw
reply) that chat messages have no columns for.
"""

from __future__ import annotations

from app.core.store.db import register_migrations

register_migrations(
    "agents",
    [
        """
        CREATE TABLE agents (
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            spec TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (name, version)
        );
        CREATE TABLE agent_approvals (
            agent TEXT NOT NULL,
            tool TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (agent, tool)
        );
        CREATE TABLE prompts (
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            text TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            test_inputs TEXT NOT NULL DEFAULT '[]',
            created_at REAL NOT NULL,
            PRIMARY KEY (name, version)
        );
        CREATE TABLE agent_runs (
            id TEXT PRIMARY KEY,
            agent TEXT NOT NULL,
            agent_version INTEGER NOT NULL,
            spec TEXT NOT NULL,
            model_id TEXT,
            model_sha256 TEXT,
            seed INTEGER,
            input TEXT NOT NULL,
            status TEXT NOT NULL,
            final TEXT,
            error TEXT,
            leaf_id TEXT,
            replay_of TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX agent_runs_agent ON agent_runs(agent);
        CREATE TABLE agent_steps (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES agent_runs(id) ON DELETE CASCADE,
            parent_id TEXT REFERENCES agent_steps(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            content TEXT NOT NULL DEFAULT '',
            tool TEXT,
            arguments TEXT,
            data TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL
        );
        CREATE INDEX agent_steps_run ON agent_steps(run_id);
        CREATE INDEX agent_steps_parent ON agent_steps(parent_id)
        """,
        # Approvals bind to exactly what was approved (see app.core.agents.approvals).
        # The old per-(agent name, tool) approvals would carry over to any later
        # version of the same name, e.g. an imported one with a wider grant: dropped.
        """
        DROP TABLE agent_approvals;
        CREATE TABLE agent_approvals (
            id INTEGER PRIMARY KEY,
            agent TEXT NOT NULL,
            spec_hash TEXT NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            grant_hash TEXT NOT NULL,
            what TEXT NOT NULL,
            approved_by TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (agent, spec_hash, kind, name, grant_hash)
        );
        CREATE INDEX agent_approvals_agent ON agent_approvals(agent)
        """,
    ],
)
