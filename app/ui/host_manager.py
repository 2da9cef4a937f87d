"""The window's one model host, shared by every pane (Chat, Agents, Arena).

The host process starts on the first request and stays up until the window
closes. Panes do not restart it: they *lease* a model (``lease(model, template)``),
which registers it in the running host (``POST /v1/host/models``) if needed and
keeps it from being unloaded; ``release(lease)`` when the pane switches model or
closes. The host loads a model once however many panes and templates use it,
unloads a model nobody leased after ``IDLE_UNLOAD_S`` seconds without a request,
and unloads the least recently used unleased models before a load would pass
the memory budget (half the machine's RAM). ``status()`` is the host's own
memory accounting (loaded models, bytes each, process RSS).

``lease``/``prepare`` may start the process and wait for it: call them off the
UI thread.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.core.models.registry import ModelRecord

if TYPE_CHECKING:
    from app.ui.services import Services

#: model name on the API -> (path, format)
HostModels = Mapping[str, tuple[str, str]]

#: A model no pane leased is unloaded after this many seconds without a request.
IDLE_UNLOAD_S = 600.0
#: Loads beyond this share of the machine's RAM first unload unleased models.
MEMORY_BUDGET_SHARE = 0.5


@dataclass(frozen=True)
class Lease:
    """A model kept loaded for one user of the host: where to send requests, and as what."""

    base_url: str
    token: str
    #: The name to put in requests' ``model`` field (the id, or ``id@template``).
    model: str
    model_id: str
    template: str | None
    serial: int


def api_name(model_id: str, template: str | None) -> str:
    """The host's name for a model with a template preset (the bare id without one)."""
    return model_id if not template else f"{model_id}@{template}"


def _memory_budget_mb() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total * MEMORY_BUDGET_SHARE) // 2**20
    except Exception:  # no reading: no budget, idle unload still applies
        return None


class HostManager:
    """Starts the shared ``HostProcess`` once, registers models in it, counts leases.

    Two locks: ``_lock`` is held while talking to the host (starting it can take
    seconds, so only worker threads take it); ``_state`` guards the lease counts and
    the process handle and is only ever held briefly, so the UI thread may take it.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self._lock = threading.RLock()
        self._state = threading.Lock()
        self._host: Any = None
        self._closed = False
        self._serial = 0
        #: api name -> (path, format, template, display name) as registered in the host
        self._known: dict[str, tuple[str, str | None, str | None, str]] = {}
        #: api name -> leases held
        self._leases: dict[str, set[int]] = {}
        #: True when the last call found the host dead and started it again.
        self.restarted = False
        self.idle_unload_s = IDLE_UNLOAD_S
        self.memory_budget_mb = _memory_budget_mb()

    # -- process -----------------------------------------------------------------
    def _ensure(self) -> Any:
        """The running host (started or restarted here); caller holds ``_lock``."""
        from app.workers.host_client import HostProcess, HostStartError

        self.restarted = False
        with self._state:
            host, closed = self._host, self._closed
        if closed:
            raise HostStartError("The window is closing: the model host is stopped.")
        if host is None:
            s = self.services.workspace.settings
            host = HostProcess(
                threads=s.threads,
                request_log=self.services.workspace.root / "logs" / "requests.jsonl",
                accept_models=True,
                memory_budget_mb=self.memory_budget_mb,
                idle_unload_s=self.idle_unload_s,
            )
            host.start({})
            with self._state:
                closed = self._closed
                if not closed:
                    self._host = host
                    self._known.clear()
            if closed:
                host.stop()
                raise HostStartError("The window is closing: the model host is stopped.")
        elif host.ensure_running():  # registrations and pins come back with it
            self.restarted = True
        return host

    def _register(
        self, host: Any, name: str, entry: tuple[str, str | None, str | None, str]
    ) -> None:
        """Register (or update) ``name`` in ``host``, pinned while leased (``_lock`` held)."""
        path, fmt, template, display = entry
        aliases = [display] if display and display != name and not template else []
        with self._state:
            pinned = bool(self._leases.get(name))
        host.register(name, path, fmt, template=template, aliases=aliases, pinned=pinned)
        self._known[name] = entry

    # -- leases ------------------------------------------------------------------
    def lease_path(
        self,
        model_id: str,
        path: str,
        fmt: str | None,
        template: str | None = None,
        display: str = "",
    ) -> Lease:
        """Keep ``path`` loaded as ``model_id`` (with ``template``) until :meth:`release`."""
        name = api_name(model_id, template)
        entry = (str(path), fmt, template, display)
        with self._lock:
            host = self._ensure()
            with self._state:
                self._serial += 1
                serial = self._serial
                held = self._leases.setdefault(name, set())
                first = not held
                held.add(serial)
            try:
                if first or self._known.get(name) != entry:
                    self._register(host, name, entry)  # now pinned
            except BaseException:
                with self._state:
                    self._leases[name].discard(serial)
                raise
            return Lease(host.base_url, host.token, name, model_id, template, serial)

    def lease(self, model: ModelRecord, template: str | None = None) -> Lease:
        """Keep a library model loaded (under its id, answering to its name too)."""
        return self.lease_path(model.id, str(model.path), model.format, template, model.name)

    def release(self, lease: Lease | None) -> None:
        """Give a lease back; the model stays loaded until idle or memory asks otherwise.

        Never waits for the host: safe on the UI thread."""
        if lease is None:
            return
        with self._state:
            held = self._leases.get(lease.model)
            if not held or lease.serial not in held:
                return
            held.discard(lease.serial)
            if held or self._host is None:
                return
            host = self._host
        name = lease.model

        def unpin() -> None:
            with self._lock:
                with self._state:
                    current, still = self._host, bool(self._leases.get(name))
                entry = self._known.get(name)
                if current is not host or still or entry is None or not host.is_alive():
                    return
                try:
                    self._register(host, name, entry)
                except Exception:  # the host went away: nothing left to unpin
                    pass

        threading.Thread(target=unpin, name="host-unpin", daemon=True).start()

    def leased(self) -> dict[str, int]:
        """Leases held per api name."""
        with self._state:
            return {k: len(v) for k, v in self._leases.items() if v}

    # -- the former API: a host serving these models -----------------------------
    def prepare_models(self, models: HostModels, template: str | None = None) -> tuple[str, str]:
        """Base URL and token of the host serving ``models`` under these names.

        Without a lease: the models stay until idle or memory unloads them (the host
        loads them again on the next request). A ``template`` applies to these names.
        """
        with self._lock:
            host = self._ensure()
            for name, (path, fmt) in models.items():
                entry = (str(path), fmt, template, "")
                if self._known.get(name) != entry:
                    self._register(host, name, entry)
            return host.base_url, host.token

    def prepare(self, model: ModelRecord, template: str | None = None) -> tuple[str, str]:
        """A host serving one library model under its id."""
        return self.prepare_models({model.id: (str(model.path), model.format)}, template)

    # -- status ------------------------------------------------------------------
    def endpoint(self) -> tuple[str, str] | None:
        """(base URL ending in /v1, token) of the running host; None when none runs.
        Never starts it (the Serving pane watches, it does not start a host)."""
        with self._state:
            host = self._host
        if host is None or not host.is_alive():
            return None
        return host.base_url, host.token

    @property
    def running(self) -> bool:
        host = self._host
        return host is not None and host.is_alive()

    @property
    def pid(self) -> int | None:
        host = self._host
        return host.pid if host is not None else None

    def status(self) -> dict[str, Any] | None:
        """The host's own accounting (``GET /v1/host/status``), None when it is not running.

        Blocks for at most a few seconds: call it off the UI thread."""
        host = self._host
        if host is None or not host.is_alive():
            return None
        return dict(host.status(timeout=3.0))

    def unload(self, name: str) -> list[str]:
        """Unload a model now (the next request loads it again)."""
        host = self._host
        if host is None or not host.is_alive():
            return []
        return list(host.unload(name))

    def display_name(self, name: str) -> str:
        """A person's name for an api name: the library name, with the template if any."""
        known = self._known.get(name)
        base = name
        if known is not None:
            _, _, template, display = known
            if not display:
                display = self._library_name(name.split("@", 1)[0])
            base = display or name
            return f"{base} ({template} template)" if template else base
        return self._library_name(name) or name

    def _library_name(self, model_id: str) -> str:
        try:
            from app.core.models.registry import ModelRegistry

            return ModelRegistry(self.services.workspace).get(model_id).name
        except Exception:
            return ""

    def stop(self, wait: bool = True) -> None:
        """Stop the host process; the next lease or prepare starts a fresh one.

        ``wait=False`` signals the process and returns at once (the UI thread)."""
        with self._state:
            host, self._host = self._host, None
            self._leases.clear()
        if host is None:
            return
        if wait:
            host.stop()
        else:
            host.request_stop()  # at once: the process may exit before the reaper runs
            threading.Thread(target=host.stop, name="host-stop", daemon=True).start()

    def close(self) -> None:
        """The window is closing: stop the host without waiting; later requests are refused."""
        with self._state:
            self._closed = True
        self.stop(wait=False)
