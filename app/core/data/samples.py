"""The sample instruction dataset a new workspace starts with."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.core.data.importers import import_dataset
from app.core.data.store import DatasetStore, VersionRecord

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

SAMPLES_DIR = Path(__file__).resolve().parents[3] / "resources" / "samples"
SAMPLE_FILE = "instructions.jsonl"
SAMPLE_NAME = "sample-instructions"
SAMPLE_SOURCE = "sample:instructions.jsonl"


def ensure_sample_dataset(workspace: Workspace) -> VersionRecord | None:
    """Import the sample dataset once (idempotent); None when the sample file is missing."""
    store = DatasetStore(workspace)
    row = workspace.db.query_one("SELECT id FROM datasets WHERE source = ?", (SAMPLE_SOURCE,))
    if row is not None:
        return store.version(row["id"])
    path = SAMPLES_DIR / SAMPLE_FILE
    if not path.exists():
        return None
    res = import_dataset(workspace, path, name=SAMPLE_NAME, format="jsonl")
    workspace.db.execute(
        "UPDATE datasets SET source = ? WHERE id = ?", (SAMPLE_SOURCE, res.version.dataset_id)
    )
    return res.version
