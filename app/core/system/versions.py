"""Versions of DemoAI and the packages it runs on, read from package metadata (no imports)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

import app

PACKAGES = (
    "PySide6-Essentials",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "datasets",
    "llama_cpp_python",
    "pyqtgraph",
    "huggingface-hub",
    "safetensors",
    "gguf",
    "pyarrow",
)


def package_versions() -> dict[str, str | None]:
    """Installed version of each package of the stack (None when missing)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def versions() -> dict[str, object]:
    """DemoAI, Python, OS and package versions."""
    return {
        "demoai": app.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
    }
