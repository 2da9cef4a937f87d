"""A model's request queue is served in arrival order (the host's FifoLock)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from app.workers.host import FifoLock
from app.workers.host_client import HostProcess


def test_the_lock_is_granted_in_the_order_it_was_asked_for() -> None:
    lock = FifoLock()
    order: list[int] = []
    lock.acquire()
    assert lock.locked() and not lock.acquire(blocking=False)
    threads = []
    for i in range(8):
        t = threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i), lock.release()))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5
        while lock._next != i + 2 and time.monotonic() < deadline:  # it holds ticket i + 1
            time.sleep(0.001)
        assert lock._next == i + 2
    lock.release()
    for t in threads:
        t.join(5)
    assert order == list(range(8))
    assert not lock.locked() and lock.acquire(blocking=False)
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


@pytest.fixture(scope="module")
def host(gemma_gguf: Path) -> Iterator[HostProcess]:
    h = HostProcess(threads=2, n_ctx=256)
    h.start({"gemma": (gemma_gguf, "gguf")})
    yield h
    h.stop()


def test_requests_for_a_busy_model_are_answered_in_arrival_order(host: HostProcess) -> None:
    client = openai.OpenAI(base_url=host.base_url, api_key=host.token, max_retries=0)
    client.completions.create(model="gemma", prompt="Hi", max_tokens=1)  # loaded
    done: list[int] = []
    lock = threading.Lock()

    def ask(i: int) -> None:
        client.completions.create(model="gemma", prompt=f"Count from {i}:", max_tokens=24,
                                  temperature=0)  # fmt: skip
        with lock:
            done.append(i)

    threads = []
    for i in range(5):  # each one sent while the first is still generating
        t = threading.Thread(target=ask, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(0.15)
    for t in threads:
        t.join(120)
    assert done == list(range(5))
