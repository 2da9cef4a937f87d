"""Answers from several models to a list of prompts, fetched from one model host.

The window never loads a model: one host process serves every chosen model
(each under its library id) and the answers come over HTTP through
:class:`~app.core.openai_client.OpenAIClient`, on a background thread.
Results arrive as Qt signals.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.core.errors import DemoAIError
from app.core.openai_client import OpenAIClient, RequestCancelled


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
        self._client: OpenAIClient | None = None
        self._thread = threading.Thread(target=self._run, name="arena-answers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop now: the answer in progress is dropped, the prompts answered so far are kept."""
        self._stop.set()
        client = self._client
        if client is not None:
            client.close()

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        error = ""
        try:
            base_url, token = self._prepare()
            self._client = client = OpenAIClient(base_url, token)
            if self._stop.is_set():
                return
            for i, prompt in enumerate(self.prompts):
                answers: dict[str, str] = {}
                errors: dict[str, str] = {}
                for model in self.models:
                    if self._stop.is_set():
                        return
                    messages = [{"role": "user", "content": prompt}]
                    try:
                        answers[model] = client.chat(messages, model=model, **self.sampling).text
                    except RequestCancelled:
                        return
                    except DemoAIError as exc:
                        errors[model] = str(exc)
                self.answered.emit(i, prompt, answers, errors)
        except Exception as exc:  # the thread must always report back
            error = str(exc) or type(exc).__name__
        finally:
            self.finished.emit(error)
