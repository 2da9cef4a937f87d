"""Streams a chat completion from the model host on a background thread.

Plain ``http.client`` (no heavy imports in the window process). Tokens arrive
as Qt signals; ``stop()`` closes the connection, which the host sees as a
client that went away.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from PySide6.QtCore import QObject, Signal


class ChatStream(QObject):
    """``token(str)``, then ``finished(dict usage, str error)`` exactly once."""

    token = Signal(str)
    first_token = Signal(float)  # seconds to the first token
    finished = Signal(dict, str)

    def __init__(
        self,
        prepare: Callable[[], tuple[str, str]],
        model: str,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
    ) -> None:
        super().__init__()
        self._prepare = prepare  # -> (base_url, token); may start the host (slow)
        self.model = model
        self.messages = messages
        self.sampling = sampling
        self._stop = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="chat-stream", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(2)
            except OSError:
                pass

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        usage: dict[str, Any] = {}
        error = ""
        t0 = time.monotonic()
        try:
            base_url, token = self._prepare()
            u = urlparse(base_url)
            body = {
                "model": self.model,
                "messages": self.messages,
                "stream": True,
                "stream_options": {"include_usage": True},
                **self.sampling,
            }
            self._conn = conn = http.client.HTTPConnection(
                u.hostname or "127.0.0.1", u.port, timeout=600
            )
            conn.request(
                "POST",
                u.path.rstrip("/") + "/chat/completions",
                body=json.dumps(body),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            if resp.status != 200:
                data = resp.read().decode("utf-8", "replace")
                try:
                    error = json.loads(data)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    error = f"HTTP {resp.status}: {data[:300]}"
                return
            got_first = False
            for raw in resp:
                if self._stop.is_set():
                    break
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if chunk.get("error"):
                    error = str(chunk["error"].get("message", chunk["error"]))
                    break
                if chunk.get("usage"):
                    usage = dict(chunk["usage"])
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        if not got_first:
                            got_first = True
                            self.first_token.emit(time.monotonic() - t0)
                        self.token.emit(text)
            else:
                if not self._stop.is_set():
                    error = "The model host closed the connection before the answer was complete."
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if not self._stop.is_set():
                error = f"The model host stopped answering ({type(exc).__name__}: {exc})."
        except Exception as exc:  # the thread must always report back
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if self._conn is not None:
                self._conn.close()
            usage["elapsed_s"] = time.monotonic() - t0
            self.finished.emit(usage, error)
