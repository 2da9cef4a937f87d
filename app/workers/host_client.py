"""Start, watch and restart the model host child process from the app."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from app.core.errors import DemoAIError
from app.workers.host import API_KEY_ENV

_REPO_ROOT = Path(__file__).resolve().parents[2]

ModelSpec = tuple[str | os.PathLike[str], str | None]


class HostStartError(DemoAIError):
    """The model host did not come up."""


class HostCallError(DemoAIError):
    """The model host answered an API call with an error (``status`` 0: no answer)."""

    def __init__(self, status: int, message: str, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class HostProcess:
    """The model host as a child process, with a fresh random token per start.

    ``start(models)`` spawns ``python -m app.workers.host`` (no shell) and waits
    until it listens; ``base_url`` (``http://127.0.0.1:PORT/v1``) and ``token`` are
    what an OpenAI client needs. ``ensure_running()`` restarts a dead host on the
    same port when it can. ``stop()`` terminates, then kills.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        threads: int = 0,
        n_ctx: int | None = None,
        request_log: Path | None = None,
        state_dir: Path | None = None,
        startup_timeout: float = 120.0,
        python: str = sys.executable,
        extra_args: Sequence[str] = (),
        accept_models: bool = False,
        memory_budget_mb: int | None = None,
        idle_unload_s: float | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.threads = threads
        self.n_ctx = n_ctx
        self.request_log = request_log
        self.startup_timeout = startup_timeout
        self.python = python
        #: More ``python -m app.workers.host`` options (limits, timeouts).
        self.extra_args = list(extra_args)
        #: Models may be added at run time (:meth:`register`); the app's own host.
        self.accept_models = accept_models
        self.memory_budget_mb = memory_budget_mb
        self.idle_unload_s = idle_unload_s
        #: What :meth:`register` added, registered again after a restart.
        self._registered: dict[str, dict[str, Any]] = {}
        self._own_dir = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="demoai-host-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.token = ""
        self.port = 0
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False
        self._models: dict[str, ModelSpec] = {}
        self._template: str | None = None

    # -- properties --------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (``.../v1``)."""
        return f"http://{self._url_host()}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        """The host's stdout/stderr."""
        return self.state_dir / "host.log"

    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    # -- lifecycle ---------------------------------------------------------------
    def start(self, models: Mapping[str, ModelSpec], template: str | None = None) -> None:
        """Spawn the host serving ``models`` (name -> (path, format or None)); wait until ready."""
        if self.is_alive():
            raise HostStartError("The model host is already running.", "Call stop() first.")
        if not models and not self.accept_models:
            raise HostStartError("The model host needs at least one model.")
        self._models = dict(models)
        self._template = template
        self._registered.clear()
        self._started = True
        self._spawn(self.requested_port)

    def _spawn(self, port: int) -> None:
        self.token = secrets.token_urlsafe(32)
        ready = self.state_dir / "ready.json"
        ready.unlink(missing_ok=True)
        cmd = [self.python, "-m", "app.workers.host", "--host", self.host, "--port", str(port)]
        cmd += ["--ready-file", str(ready), "--threads", str(self.threads)]
        cmd += ["--parent-pid", str(os.getpid())]  # a killed parent leaves no host behind
        for name, (path, fmt) in self._models.items():
            cmd += ["--model", f"{name}={os.fspath(path)}" + (f":{fmt}" if fmt else "")]
        if self._template:
            cmd += ["--template", self._template]
        if self.n_ctx:
            cmd += ["--n-ctx", str(self.n_ctx)]
        if self.request_log is not None:
            cmd += ["--request-log", str(self.request_log)]
        if self.accept_models:
            cmd.append("--accept-models")
        if self.memory_budget_mb is not None:
            cmd += ["--memory-budget-mb", str(self.memory_budget_mb)]
        if self.idle_unload_s is not None:
            cmd += ["--idle-unload", str(self.idle_unload_s)]
        cmd += self.extra_args
        env = dict(os.environ)
        env[API_KEY_ENV] = self.token  # not on the command line: ps would show it
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=_REPO_ROOT,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise HostStartError(
                    f"The model host exited with code {self._proc.returncode} while starting.",
                    f"Its log ends: {self._log_tail()}",
                )
            if ready.is_file():
                try:
                    info = json.loads(ready.read_text(encoding="utf-8"))
                except ValueError:
                    info = None
                if info and info.get("pid") == self._proc.pid:
                    self.port = int(info["port"])
                    self._register_again()
                    return
            time.sleep(0.05)
        self._terminate()
        raise HostStartError(
            f"The model host did not start within {self.startup_timeout:.0f} s.", self._log_tail()
        )

    def _register_again(self) -> None:
        """After a restart: serve again what :meth:`register` added (gone paths are dropped)."""
        for name, body in list(self._registered.items()):
            try:
                self.call("POST", "/v1/host/models", body)
            except HostCallError:
                del self._registered[name]

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def health(self, timeout: float = 2.0) -> bool:
        """True when the host answers ``/health``."""
        if not self.is_alive():
            return False
        url = f"http://{self._url_host()}:{self.port}/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def ensure_running(self) -> bool:
        """Restart the host if it died (same models, same port if free). True if it restarted."""
        if self.is_alive():
            return False
        if not self._started:
            raise HostStartError("The model host was never started.")
        self.restarts += 1
        old_port = self.port
        try:
            self._spawn(old_port)
        except HostStartError:
            if not old_port:
                raise
            self._spawn(0)  # the old port is taken: take any
        return True

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate the host (kill after ``timeout``); returns its exit code."""
        code = self._terminate(timeout)
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return code

    def request_stop(self) -> None:
        """Ask the host to stop (SIGTERM) without waiting; :meth:`stop` reaps it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def _terminate(self, timeout: float = 5.0) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    # -- the host's own API ------------------------------------------------------
    def call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        """One authenticated JSON request to the host (``path`` from the root, e.g.
        ``/v1/host/status``); an API error becomes :class:`HostCallError`."""
        url = f"http://{self._url_host()}:{self.port}{path}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read()).get("error") or {}
            except (ValueError, AttributeError, OSError):
                err = {}
            raise HostCallError(
                exc.code, str(err.get("message") or exc.reason), err.get("code")
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise HostCallError(
                0, f"The model host did not answer: {getattr(exc, 'reason', exc)}.", None
            ) from None

    def register(
        self,
        name: str,
        path: str | os.PathLike[str],
        fmt: str | None = None,
        *,
        template: str | None = None,
        aliases: Sequence[str] = (),
        pinned: bool = False,
    ) -> dict[str, Any]:
        """Serve ``path`` under ``name`` from now on (again after a restart); ``pinned``
        keeps it from being unloaded for idleness or memory. Needs ``accept_models``."""
        body: dict[str, Any] = {"name": name, "path": os.fspath(path), "pinned": pinned}
        if fmt:
            body["format"] = fmt
        if template:
            body["template"] = template
        if aliases:
            body["aliases"] = list(aliases)
        answer = self.call("POST", "/v1/host/models", body)
        self._registered[name] = body
        return dict(answer)

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """``GET /v1/host/status``: loaded models with the bytes each holds, the process RSS."""
        return dict(self.call("GET", "/v1/host/status", timeout=timeout))

    def unload(self, name: str | None = None) -> list[str]:
        """Unload one model (every one when ``name`` is None); returns the names unloaded."""
        answer = self.call("POST", "/admin/unload", {"model": name} if name else {})
        return list(answer.get("unloaded") or [])

    def __enter__(self) -> HostProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _log_tail(self, n: int = 2000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        return data[-n:].decode("utf-8", "replace").strip() or "(empty log)"
