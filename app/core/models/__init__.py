"""The model library: registry, metadata readers, discovery, safety checks and Hub downloads."""

from app.core.models.metadata import (
    InvalidModelError,
    ModelMetadata,
    is_gguf_file,
    read_gguf_metadata,
    read_hf_metadata,
    read_metadata,
)
from app.core.models.registry import (
    DependantsError,
    Lineage,
    LineageEdge,
    ModelFile,
    ModelRecord,
    ModelRegistry,
    RemoveResult,
)
from app.core.models.safety import UnsafeWeightsError

__all__ = [
    "DependantsError",
    "InvalidModelError",
    "Lineage",
    "LineageEdge",
    "ModelFile",
    "ModelMetadata",
    "ModelRecord",
    "ModelRegistry",
    "RemoveResult",
    "UnsafeWeightsError",
    "is_gguf_file",
    "read_gguf_metadata",
    "read_hf_metadata",
    "read_metadata",
]
