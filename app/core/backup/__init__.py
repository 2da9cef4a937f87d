"""Workspace backup and restore: one verified tar file, incremental against a base."""

from app.core.backup.archive import (
    BackupError,
    BaseMissingError,
    CreateResult,
    RestoreResult,
    Verified,
    create_backup,
    last_backup,
    reminder_due,
    resolve_chain,
    restore_backup,
    verify_backup,
    workspace_created_at,
)

__all__ = [
    "BackupError",
    "BaseMissingError",
    "CreateResult",
    "RestoreResult",
    "Verified",
    "create_backup",
    "last_backup",
    "reminder_due",
    "resolve_chain",
    "restore_backup",
    "verify_backup",
    "workspace_created_at",
]
