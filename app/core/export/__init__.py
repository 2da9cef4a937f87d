"""Export: verified GGUF files, Docker bundles for IT, portable model packages, SHA256SUMS.

Importing this package is cheap: torch, transformers and llama_cpp are imported
inside the functions that need them (which run in job processes).
"""

from app.core.export.checksums import (
    ChecksumError,
    ChecksumReport,
    check_sums,
    verify_sums,
    write_sums,
)
from app.core.export.docker import (
    DEFAULT_BASE_IMAGE,
    LOCAL_BASE_IMAGE,
    BundleResult,
    DockerError,
    build_bundle,
    docker_available,
    make_local_base_image,
)
from app.core.export.gguf import QUANT_TYPES, GGUFOutput, export_gguf
from app.core.export.package import PackageResult, export_package, import_package, is_package
from app.core.export.records import ExportRecord, ExportStore
from app.core.export.verify import THRESHOLDS, Verification

__all__ = [
    "DEFAULT_BASE_IMAGE",
    "LOCAL_BASE_IMAGE",
    "QUANT_TYPES",
    "THRESHOLDS",
    "BundleResult",
    "ChecksumError",
    "ChecksumReport",
    "DockerError",
    "ExportRecord",
    "ExportStore",
    "GGUFOutput",
    "PackageResult",
    "Verification",
    "build_bundle",
    "check_sums",
    "docker_available",
    "export_gguf",
    "export_package",
    "import_package",
    "is_package",
    "make_local_base_image",
    "verify_sums",
    "write_sums",
]
