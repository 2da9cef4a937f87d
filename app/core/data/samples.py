"""The sample datasets: instruction rows a new workspace starts with, and a question/answer table.

``instructions`` (``instruction``, ``input``, ``output``, ``task``) is already a training
format; ``questions`` (``question``, ``answer``) is the kind of table an analyst brings,
whose columns are mapped to chat roles in the Fine-tune form. Both live in
``resources/samples`` (see its README).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.data.importers import import_dataset
from app.core.data.store import DatasetStore, VersionRecord
from app.core.errors import ConfigError

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

SAMPLES_DIR = Path(__file__).resolve().parents[3] / "resources" / "samples"
SAMPLE_FILE = "instructions.jsonl"
SAMPLE_NAME = "sample-instructions"
SAMPLE_SOURCE = "sample:instructions.jsonl"


@dataclass(frozen=True)
class Sample:
    file: str
    name: str
    format: str

    @property
    def source(self) -> str:
        return f"sample:{self.file}"


SAMPLES: dict[str, Sample] = {
    "instructions": Sample(SAMPLE_FILE, SAMPLE_NAME, "jsonl"),
    "questions": Sample("questions.csv", "sample-questions", "csv"),
}


def ensure_sample_dataset(
    workspace: Workspace, sample: str = "instructions"
) -> VersionRecord | None:
    """Import the sample dataset ``sample`` once (idempotent); None when its file is missing."""
    spec = SAMPLES.get(sample)
    if spec is None:
        raise ConfigError(
            f"Unknown sample dataset '{sample}'.", f"Use one of: {', '.join(SAMPLES)}."
        )
    store = DatasetStore(workspace)
    row = workspace.db.query_one("SELECT id FROM datasets WHERE source = ?", (spec.source,))
    if row is not None:
        return store.version(row["id"])
    path = SAMPLES_DIR / spec.file
    if not path.exists():
        return None
    res = import_dataset(workspace, path, name=spec.name, format=spec.format)
    workspace.db.execute(
        "UPDATE datasets SET source = ? WHERE id = ?", (spec.source, res.version.dataset_id)
    )
    return res.version
