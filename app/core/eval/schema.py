"""Tables of evaluation runs, their per-sample results and arena matches.

Imported by the workspace at open time: plain SQL strings only, no heavy imports.
"""

from __future__ import annotations

from app.core.store.db import register_migrations

register_migrations(
    "eval",
    [
        """
        CREATE TABLE eval_runs (
            id TEXT PRIMARY KEY,
            job_id TEXT,
            name TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            config TEXT NOT NULL,
            dataset_ref TEXT NOT NULL,
            dataset_version TEXT NOT NULL,
            models TEXT NOT NULL,
            metrics TEXT NOT NULL,
            summary TEXT,
            errors TEXT,
            judge_prompt TEXT,
            created_at REAL NOT NULL,
            finished_at REAL
        );
        CREATE INDEX eval_runs_created ON eval_runs(created_at);
        CREATE TABLE eval_samples (
            run_id TEXT NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE,
            model_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            input TEXT NOT NULL,
            prediction TEXT,
            reference TEXT,
            scores TEXT NOT NULL,
            error TEXT,
            latency_ms REAL,
            tokens INTEGER,
            extra TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (run_id, model_id, idx)
        );
        CREATE TABLE arena_matches (
            id TEXT PRIMARY KEY,
            prompt TEXT NOT NULL,
            model_a TEXT NOT NULL,
            model_b TEXT NOT NULL,
            answer_a TEXT NOT NULL,
            answer_b TEXT NOT NULL,
            blinding TEXT NOT NULL,
            vote TEXT,
            session TEXT,
            created_at REAL NOT NULL,
            voted_at REAL
        );
        CREATE INDEX arena_matches_created ON arena_matches(created_at)
        """
    ],
)
