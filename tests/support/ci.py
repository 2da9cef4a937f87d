"""What the installer provides must be there in CI: a missing piece fails there, skips elsewhere.

On a developer's machine a test whose prerequisite is missing (the llama.cpp
converter, a Docker engine) skips with the reason. With ``CI=true`` the same
test fails instead: ``.ci/run`` installs everything the tests need, so a missing
piece there is a broken install, and a skip would hide it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

F = TypeVar("F", bound=Callable[..., Any])

#: The marker that ``tests/conftest.py`` turns into a failure in CI.
MARK = "demoai_unavailable"


def unavailable(reason: str) -> NoReturn:
    """Skip the running test with ``reason``; in CI fail it instead."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run must provide this)", pytrace=False)
    pytest.skip(reason)


def needs(available: bool, reason: str) -> Callable[[F], F]:
    """A decorator: the test skips (fails in CI) with ``reason`` unless ``available``."""
    if available:
        return lambda test: test
    mark: Callable[[F], F] = getattr(pytest.mark, MARK)(reason)
    return mark


def _has_converter() -> bool:
    from app.core.export.gguf import llama_cpp_source

    try:
        llama_cpp_source()
    except Exception:
        return False
    return True


#: For tests that convert to GGUF with llama.cpp's converter (shipped by installers/setup.sh).
needs_converter = needs(_has_converter(), "llama.cpp converter missing: run installers/setup.sh")
