"""The dataset tables (a light module: the workspace imports it on every open)."""

from __future__ import annotations

from app.core.store.db import register_migrations

register_migrations(
    "datasets",
    [
        """
        CREATE TABLE datasets (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created_at REAL NOT NULL,
            current_version TEXT,
            source TEXT
        );
        CREATE INDEX datasets_name ON datasets(name);
        CREATE TABLE dataset_versions (
            hash TEXT NOT NULL,
            dataset_id TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
            parent_hash TEXT,
            message TEXT NOT NULL DEFAULT '',
            operation TEXT NOT NULL,
            created_at REAL NOT NULL,
            rows INTEGER NOT NULL,
            schema TEXT NOT NULL,
            path TEXT NOT NULL,
            PRIMARY KEY (dataset_id, hash)
        );
        CREATE TABLE dataset_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            dataset_id TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
            version_hash TEXT NOT NULL,
            action TEXT NOT NULL,
            message TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL
        )
        """
    ],
)
