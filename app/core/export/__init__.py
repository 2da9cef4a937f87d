"""Export: verified GGUF files, Docker bundles for IT, portable model packages, SHA256SUMS.

Importing this package is cheap: torch, transformers and llama_cpp are imported
inside the functions that need them (which run in job processes).
"""

from importlib import import_module
from typing import Any

# Loaded on first use, so that opening a workspace (which imports this package's
# schema module) does not import every submodule.
_EXPORTS = {
    "BundleResult": "docker",
    "ChecksumError": "checksums",
    "ChecksumReport": "checksums",
    "DEFAULT_BASE_IMAGE": "docker",
    "DockerError": "docker",
    "ExportRecord": "records",
    "ExportStore": "records",
    "GGUFOutput": "gguf",
    "LOCAL_BASE_IMAGE": "docker",
    "PackageResult": "package",
    "QUANT_TYPES": "gguf",
    "THRESHOLDS": "verify",
    "Verification": "verify",
    "build_bundle": "docker",
    "check_sums": "checksums",
    "docker_available": "docker",
    "export_gguf": "gguf",
    "export_package": "package",
    "import_package": "package",
    "is_package": "package",
    "make_local_base_image": "docker",
    "verify_sums": "checksums",
    "write_sums": "checksums",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
