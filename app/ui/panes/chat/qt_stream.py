"""Streams an answer from the model host on a background thread.

Through :class:`~app.core.openai_client.OpenAIClient` (httpx2 and its
server-sent events; no inference library in the window process). Chat mode
streams ``/v1/chat/completions``; completion mode streams ``/v1/completions``,
plain text continuation for a base model. Tokens arrive as Qt signals;
``stop()`` closes the client, which ends the stream at once and which the host
sees as a client that went away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.core.errors import DemoAIError
from app.core.openai_client import OpenAIClient


class ChatStream(QObject):
    """``leased(lease)``, ``capabilities(model_id, dict)``, ``token(str)``, then ``finished(usage,
    error)`` exactly once. ``usage`` has ``stopped: True`` when :meth:`stop` cut it short.

    ``prepare()`` runs on the stream's thread and returns the host lease (an object with
    ``base_url``, ``token`` and ``model``, the name to request); it may start the host.
    ``prompt`` set means completion mode (``messages`` are then ignored).
    """

    leased = Signal(object)
    capabilities = Signal(str, dict)  # model id, the host's capabilities of it
    token = Signal(str)
    first_token = Signal(float)  # seconds to the first token
    finished = Signal(dict, str)

    def __init__(
        self,
        prepare: Callable[[], Any],
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        *,
        prompt: str | None = None,
        ask_capabilities: bool = False,
    ) -> None:
        super().__init__()
        self._prepare = prepare
        self.messages = messages
        self.prompt = prompt
        self.sampling = sampling
        self.ask_capabilities = ask_capabilities
        self._stop = threading.Event()
        self._client: OpenAIClient | None = None
        self._thread = threading.Thread(target=self._run, name="chat-stream", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the answer now (any thread); the text so far is kept."""
        self._stop.set()
        client = self._client
        if client is not None:
            client.close()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread.ident is not None:  # never started: nothing to wait for
            self._thread.join(timeout)

    def _run(self) -> None:
        usage: dict[str, Any] = {}
        error = ""
        t0 = time.monotonic()
        complete = False
        try:
            lease = self._prepare()
            self.leased.emit(lease)
            self._client = client = OpenAIClient(lease.base_url, lease.token, model=lease.model)
            if self._stop.is_set():
                client.close()
            if self.ask_capabilities and not client.closed:
                caps = client.model_info().get("capabilities")
                if isinstance(caps, dict):
                    self.capabilities.emit(getattr(lease, "model_id", lease.model), caps)
            if self.prompt is not None:
                deltas = client.stream_complete(self.prompt, **self.sampling)
            else:
                deltas = client.stream_chat(self.messages, **self.sampling)
            got_first = False
            for delta in deltas:
                if delta.usage:
                    usage = dict(delta.usage)
                if delta.finish_reason:
                    complete = True
                if delta.text:
                    if not got_first:
                        got_first = True
                        self.first_token.emit(time.monotonic() - t0)
                    self.token.emit(delta.text)
        except DemoAIError as exc:
            if not self._stop.is_set():
                error = str(exc)
        except Exception as exc:  # the thread must always report back
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if self._stop.is_set() and not error and not complete:
                usage["stopped"] = True
            usage["elapsed_s"] = time.monotonic() - t0
            self.finished.emit(usage, error)
