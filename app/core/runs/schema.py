"""Tables of pipelines (specs, runs, steps, the step-output cache) and experiments.

Imported by the workspace at open time: plain SQL strings only, no heavy imports.
"""

from __future__ import annotations

from app.core.store.db import register_migrations

register_migrations(
    "runs",
    [
        """
        CREATE TABLE pipelines (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL
        );
        CREATE TABLE pipeline_versions (
            pipeline_id TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            spec TEXT NOT NULL,
            spec_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (pipeline_id, version)
        );
        CREATE TABLE pipeline_runs (
            id TEXT PRIMARY KEY,
            pipeline_id TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            snapshot TEXT NOT NULL,
            error TEXT,
            created_at REAL NOT NULL,
            finished_at REAL
        );
        CREATE INDEX pipeline_runs_pipeline ON pipeline_runs(pipeline_id, created_at);
        CREATE TABLE pipeline_run_steps (
            run_id TEXT NOT NULL REFERENCES pipeline_runs(id) ON DELETE CASCADE,
            step_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            state TEXT NOT NULL,
            job_id TEXT,
            output TEXT,
            detail TEXT,
            updated_at REAL NOT NULL,
            PRIMARY KEY (run_id, step_id)
        );
        CREATE TABLE pipeline_step_jobs (
            key TEXT PRIMARY KEY,
            job_id TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE pipeline_step_outputs (
            key TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            job_id TEXT,
            output TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE pipeline_made_versions (
            dataset_id TEXT NOT NULL,
            version_hash TEXT NOT NULL,
            key TEXT NOT NULL,
            PRIMARY KEY (dataset_id, version_hash)
        )
        """,
        """
        CREATE TABLE experiments (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            description TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL
        );
        CREATE TABLE experiment_members (
            experiment_id TEXT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
            ref TEXT NOT NULL,
            kind TEXT NOT NULL,
            label TEXT NOT NULL,
            control INTEGER NOT NULL DEFAULT 0,
            added_at REAL NOT NULL,
            PRIMARY KEY (experiment_id, ref)
        );
        ALTER TABLE pipeline_runs ADD COLUMN pid INTEGER;
        ALTER TABLE pipeline_runs ADD COLUMN pid_started REAL
        """,
    ],
)
