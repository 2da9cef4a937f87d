"""HostManager, the window's one model host: leases pin a model, releases never wait for
the host, the window's close refuses later leases. A real host process, no model load."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.ui.host_manager import HostManager, api_name
from app.workers.host_client import HostStartError


@pytest.fixture
def manager(workspace: Any) -> Iterator[HostManager]:
    m = HostManager(SimpleNamespace(workspace=workspace))  # type: ignore[arg-type]
    yield m
    m.stop()


def _pinned(m: HostManager) -> dict[str, bool]:
    status = m.status()
    assert status is not None
    return {x["id"]: x["pinned"] for x in status["models"]}


def _wait(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


def test_leases_pin_until_the_last_release(manager: HostManager, gemma_gguf: Path) -> None:
    a = manager.lease_path("gemma-1", str(gemma_gguf), "gguf", display="gemma")
    b = manager.lease_path("gemma-1", str(gemma_gguf), "gguf", display="gemma")
    hermes = manager.lease_path("gemma-1", str(gemma_gguf), "gguf", "hermes", display="gemma")
    assert (a.model, hermes.model) == ("gemma-1", api_name("gemma-1", "hermes"))
    assert a.base_url == hermes.base_url and a.token == hermes.token  # one process
    assert manager.leased() == {"gemma-1": 2, "gemma-1@hermes": 1}
    assert _pinned(manager) == {"gemma-1": True, "gemma-1@hermes": True}
    manager.release(a)
    manager.release(a)  # twice: no effect
    assert manager.leased() == {"gemma-1": 1, "gemma-1@hermes": 1}
    time.sleep(0.3)
    assert _pinned(manager)["gemma-1"] is True
    manager.release(b)
    assert _wait(lambda: _pinned(manager)["gemma-1"] is False)
    assert _pinned(manager)["gemma-1@hermes"] is True
    assert manager.display_name("gemma-1@hermes") == "gemma (hermes template)"


def test_release_never_waits_for_the_host(manager: HostManager, gemma_gguf: Path) -> None:
    lease = manager.lease_path("g", str(gemma_gguf), "gguf")
    busy = threading.Event()
    done = threading.Event()

    def hold() -> None:  # a worker thread starting or talking to the host
        with manager._lock:
            busy.set()
            done.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    busy.wait(5)
    t0 = time.monotonic()
    manager.release(lease)  # the UI thread
    assert time.monotonic() - t0 < 0.05
    assert manager.leased() == {}
    done.set()
    t.join(5)
    assert _wait(lambda: _pinned(manager)["g"] is False)


def test_a_missing_model_is_a_clear_error_and_holds_no_lease(
    manager: HostManager, tmp_path: Path
) -> None:
    with pytest.raises(Exception, match="no model file or folder"):
        manager.lease_path("gone", str(tmp_path / "gone.gguf"), "gguf")
    assert manager.leased() == {}


def test_close_stops_at_once_and_refuses_later_leases(
    manager: HostManager, gemma_gguf: Path
) -> None:
    manager.lease_path("g", str(gemma_gguf), "gguf")
    pid = manager.pid
    assert pid is not None and manager.running
    t0 = time.monotonic()
    manager.close()
    assert time.monotonic() - t0 < 0.5  # the window's close does not wait for the process
    assert manager.pid is None and manager.leased() == {}
    import psutil

    assert _wait(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")
    with pytest.raises(HostStartError, match="closing"):
        manager.lease_path("g", str(gemma_gguf), "gguf")
