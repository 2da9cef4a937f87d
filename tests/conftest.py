"""Test-wide setup: offscreen Qt, isolated user folders, test job kinds, workspaces."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["DEMOAI_JOB_PLUGINS"] = "tests.support.jobkinds"
os.environ["HF_HUB_OFFLINE"] = "1"
# Child processes (workers) must find the tests package too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked unavailable (``tests.support.ci.needs``) skips, or fails in CI."""
    from tests.support.ci import MARK, unavailable

    for mark in item.iter_markers(MARK):
        unavailable(str(mark.args[0]))


@pytest.fixture(autouse=True)
def _isolated_user_dirs(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-user config/data folders point into a temp dir: tests never touch the real ones."""
    base = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(base / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(base / "data"))
    monkeypatch.delenv("DEMOAI_WORKSPACE", raising=False)


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[object]:
    from app.core.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    yield ws
    ws.close()


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    """A small random Llama with a sentencepiece tokenizer, built once per cache."""
    from tests.support.models import tiny_llama_cached

    return tiny_llama_cached()


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF, assembled once into the test cache."""
    from tests.support.models import gemma_gguf_cached

    return gemma_gguf_cached()


def _guard_network() -> None:
    """Fail any connection to a non-loopback address made by the test process (offline by default)."""
    import ipaddress
    import socket

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def _check(sock: socket.socket, address: object) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        host = address[0] if isinstance(address, tuple) else str(address)
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = host == "localhost"
        if not ok:
            raise AssertionError(f"network call to {address!r} during tests: DemoAI is offline")

    def connect(self: socket.socket, address: object) -> None:
        _check(self, address)
        real_connect(self, address)  # type: ignore[arg-type]

    def connect_ex(self: socket.socket, address: object) -> int:
        _check(self, address)
        return real_connect_ex(self, address)  # type: ignore[arg-type]

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]


_guard_network()
