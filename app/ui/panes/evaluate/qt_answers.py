"""Answers from several models to a list of prompts, fetched from one model host.

The window never loads a model: one host process serves every chosen model
(each under its library id) and the answers come over HTTP with plain
``http.client``, on a background thread. Results arrive as Qt signals.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

from PySide6.QtCore import QObject, Signal


def ask(base_url: str, token: str, model: str, prompt: str, sampling: dict[str, Any]) -> str:
    """One non-streamed chat answer; raises RuntimeError with the host's message."""
    u = urlparse(base_url)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": False,
        **sampling,
    }
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=600)
    try:
        conn.request(
            "POST",
            u.path.rstrip("/") + "/chat/completions",
            body=json.dumps(body),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        data = resp.read().decode("utf-8", "replace")
    finally:
        conn.close()
    if resp.status != 200:
        try:
            msg = json.loads(data)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = f"HTTP {resp.status}: {data[:300]}"
        raise RuntimeError(msg)
    return str(json.loads(data)["choices"][0]["message"]["content"])


class AnswerFetcher(QObject):
    """``answered(index, prompt, {model: answer}, {model: error})`` per prompt, then
    ``finished(error)`` exactly once ("" when all went well or it was stopped)."""

    answered = Signal(int, str, dict, dict)
    finished = Signal(str)

    def __init__(
        self,
        prepare: Callable[[], tuple[str, str]],
        models: Sequence[str],
        prompts: Sequence[str],
        sampling: dict[str, Any],
    ) -> None:
        super().__init__()
        self._prepare = prepare
        self.models = list(models)
        self.prompts = list(prompts)
        self.sampling = sampling
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="arena-answers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the answer in progress."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        error = ""
        try:
            base_url, token = self._prepare()
            for i, prompt in enumerate(self.prompts):
                answers: dict[str, str] = {}
                errors: dict[str, str] = {}
                for model in self.models:
                    if self._stop.is_set():
                        return
                    try:
                        answers[model] = ask(base_url, token, model, prompt, self.sampling)
                    except (OSError, http.client.HTTPException, RuntimeError, ValueError) as exc:
                        errors[model] = str(exc) or type(exc).__name__
                self.answered.emit(i, prompt, answers, errors)
        except Exception as exc:  # the thread must always report back
            error = str(exc) or type(exc).__name__
            hint = getattr(exc, "hint", None)
            if hint:
                error += f" {hint}"
        finally:
            self.finished.emit(error)
