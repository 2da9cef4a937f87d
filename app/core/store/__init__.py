"""SQLite store, atomic file writes and content hashes."""

from app.core.store.db import Database, SchemaTooNewError
from app.core.store.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)

__all__ = [
    "Database",
    "SchemaTooNewError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "sha256_file",
]
