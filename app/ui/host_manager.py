"""One model host process for a pane, (re)started when the set of models or the template changes.

Used by the Chat, Agents and Arena panes. The window never loads a model: it talks to
the host over HTTP. ``prepare`` may start a process and wait for it, so call it off the
UI thread.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from app.core.models.registry import ModelRecord

if TYPE_CHECKING:
    from app.ui.services import Services

#: model name on the API -> (path, format)
HostModels = Mapping[str, tuple[str, str]]


class HostManager:
    """Starts, reuses, restarts (when it died) and stops one ``HostProcess``."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._lock = threading.Lock()
        self._host: Any = None
        self._key: tuple[Any, ...] | None = None
        self.restarted = False

    def prepare_models(self, models: HostModels, template: str | None = None) -> tuple[str, str]:
        """Base URL and token of a host serving exactly ``models``."""
        from app.workers.host_client import HostProcess

        with self._lock:
            key = (tuple(sorted(models.items())), template)
            self.restarted = False
            if self._host is not None and self._key != key:
                self._host.stop()
                self._host = None
            if self._host is None:
                s = self.services.workspace.settings
                self._host = HostProcess(
                    threads=s.threads,
                    request_log=self.services.workspace.root / "logs" / "requests.jsonl",
                )
                self._host.start(dict(models), template=template)
                self._key = key
            elif self._host.ensure_running():
                self.restarted = True
            return self._host.base_url, self._host.token

    def prepare(self, model: ModelRecord, template: str | None = None) -> tuple[str, str]:
        """A host serving one library model under its id."""
        return self.prepare_models({model.id: (str(model.path), model.format)}, template)

    @property
    def pid(self) -> int | None:
        return self._host.pid if self._host is not None else None

    def stop(self) -> None:
        with self._lock:
            if self._host is not None:
                self._host.stop()
                self._host = None
