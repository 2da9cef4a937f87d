"""Project rules checked over the source tree."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


def test_no_shell_in_subprocess_calls() -> None:
    offenders = [
        f"{p.relative_to(APP)}:{i}"
        for p in APP.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"shell\s*=\s*True", line) or re.search(r"\bos\.system\(", line)
    ]
    assert offenders == []


def test_no_pickle_loading_in_app() -> None:
    offenders = [
        f"{p.relative_to(APP)}:{i}"
        for p in APP.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\bpickle\.loads?\(|\bdill\.", line)
    ]
    assert offenders == []


def test_the_network_guard_blocks_non_loopback() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(AssertionError, match="offline"):
            s.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed
    finally:
        s.close()
