"""The model host: an OpenAI-compatible HTTP server over our inference engines.

Run as ``python -m app.workers.host --model NAME=PATH[:FORMAT] ... --port N``.
A stdlib ``ThreadingHTTPServer``; every ``/v1`` route needs the bearer token
(``--api-key`` or the ``DEMOAI_HOST_API_KEY`` environment variable, which keeps
it out of the process list). Models load on first use; one request at a time
runs per model (its lock is the queue). Each request is logged as a JSON line.

What a client cannot do to it (see docs/security.md): hold a thread (idle,
header and body deadlines enforced by a reaper thread that shuts the socket
down; a connection cap answered with 503), send an unbounded or unframed body
(``Content-Length`` required, at most MAX_BODY; chunked bodies get 411), hold a
model with a prompt that cannot fit (refused by size, then by token count,
before the model's lock), or hold it with a hostile chat template (rendered
before the lock, under a budget, in a worker process). Malformed input of any
shape is a 4xx, never a 500.
"""

from __future__ import annotations

import argparse
import collections
import hmac
import ipaddress
import itertools
import json
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from app.core.errors import ConfigError, DemoAIError
from app.workers.host_metrics import HostMetrics

API_KEY_ENV = "DEMOAI_HOST_API_KEY"
FORMATS = ("hf", "gguf", "lora")
MAX_BODY = 32 * 1024 * 1024
#: A token is never longer than this many characters in any vocabulary we know, so a
#: prompt longer than n_ctx times this cannot fit, whatever the tokenizer says.
MAX_CHARS_PER_TOKEN = 256
#: Embedding contexts hold at most this many tokens (see LlamaEngine.embeddings).
EMBED_MAX_TOKENS = 2048
#: Names a host started with ``accept_models`` serves at most (models and template views).
MAX_MODELS = 256
_CONTENT_LENGTH = re.compile(r"[0-9]{1,15}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,199}")
#: An alias is a library model's display name as a person typed it ("tiny-faq Q8_0"):
#: printable, no leading or trailing space, at most 200 characters.
_ALIAS = re.compile(r"[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]{0,198}[^\s\x00-\x1f\x7f])?")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class HostError(DemoAIError):
    """An API error with its HTTP status, OpenAI error type and code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.code = code


def error_body(
    message: str, error_type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def as_host_error(exc: BaseException) -> HostError:
    """Map our errors (with ``http_status``/``error_type``/``code``) to an API error."""
    if isinstance(exc, HostError):
        return exc
    if isinstance(exc, DemoAIError):
        status = int(getattr(exc, "http_status", 400 if isinstance(exc, ConfigError) else 500))
        etype = str(
            getattr(exc, "error_type", "invalid_request_error" if status < 500 else "server_error")
        )
        code = getattr(exc, "code", None)
        return HostError(
            status, str(exc), error_type=etype, code=code if isinstance(code, str) else None
        )
    return HostError(
        500, f"{type(exc).__name__}: {exc}", error_type="server_error", code="internal_error"
    )


# --------------------------------------------------------------------------- models


def parse_model_spec(spec: str) -> tuple[str, Path, str | None]:
    """``NAME=PATH[:FORMAT]`` or ``PATH[:FORMAT]`` -> (name, path, format or None)."""
    name, sep, rest = spec.partition("=")
    if not sep:
        name, rest = "", spec
    fmt: str | None = None
    head, colon, tail = rest.rpartition(":")
    if colon and tail in FORMATS:
        rest, fmt = head, tail
    path = Path(rest).expanduser()
    if not rest:
        raise ConfigError(f"Bad model spec {spec!r}.", "Use NAME=PATH[:hf|gguf|lora] or a path.")
    if not name:
        name = path.stem if path.suffix.lower() == ".gguf" else path.name
    return name, path, fmt


def resolve_slot(models: Mapping[str, ModelSlot], name: Any) -> ModelSlot:
    """The served model a request's ``model`` names: its id, else one model's alias.

    An alias that several models share is a 400 naming them (the client must pick an
    id); an unknown name is a 404 naming what is served.
    """
    if isinstance(name, str) and name in models:
        return models[name]
    matches = [s for s in models.values() if isinstance(name, str) and name in s.aliases]
    if len(matches) == 1:
        return matches[0]
    if matches:
        ids = ", ".join(sorted(s.name for s in matches))
        raise HostError(
            400,
            f"The model name {name!r} is ambiguous: it names {ids}. Use one of these ids.",
            code="model_ambiguous",
        )
    served = ", ".join(
        s.name + (f" (also {', '.join(s.aliases)})" if s.aliases else "")
        for s in sorted(models.values(), key=lambda s: s.name)
    )
    shown = repr(name)[:200]
    raise HostError(
        404, f"The model {shown} does not exist. Served: {served}.", code="model_not_found"
    )


def _size_on_disk(path: Path, limit: int = 10_000) -> int:
    """Bytes of a model file, or of the files in a model folder (at most ``limit`` files)."""
    try:
        if path.is_file():
            return path.stat().st_size
        total = 0
        for n, f in enumerate(path.rglob("*")):
            if n >= limit:
                break
            if f.is_file():
                total += f.stat().st_size
        return total
    except OSError:
        return 0


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class FifoLock:
    """A lock granted in the order it was asked for: a model's request queue.

    ``threading.Lock`` is not fair: a request that arrived later could take a busy model
    first, and under load one client could wait for many others' answers. Here each
    ``acquire`` takes a ticket and waits for its turn (``acquire(blocking=False)`` only
    succeeds when nobody holds or waits for the lock). Waits have no timeout: a ticket
    is always used.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0  # the next ticket to hand out
        self._turn = 0  # the ticket whose turn it is (held, or about to be)

    def acquire(self, blocking: bool = True) -> bool:
        with self._cond:
            if not blocking and self._next != self._turn:
                return False
            ticket = self._next
            self._next += 1
            while ticket != self._turn:
                self._cond.wait()
            return True

    def release(self) -> None:
        with self._cond:
            if self._turn >= self._next:
                raise RuntimeError("release of an unlocked FifoLock")
            self._turn += 1
            self._cond.notify_all()

    def locked(self) -> bool:
        with self._cond:
            return self._next != self._turn

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class Weights:
    """A model in memory, loaded once whatever names and templates serve it.

    Its ``lock`` is the request queue; ``prep_lock`` is held while the engine is used
    outside ``lock`` (counting a prompt's tokens), so unload takes both.
    """

    path: Path
    fmt: str | None
    options: Any
    engine: Any = None
    #: The request queue: granted in arrival order.
    lock: FifoLock = field(default_factory=FifoLock)
    prep_lock: threading.Lock = field(default_factory=threading.Lock)
    #: Memory the load took (process RSS after minus before), measured at load.
    bytes: int = 0
    #: When it was last asked for (``time.monotonic()``).
    last_used: float = field(default_factory=time.monotonic)
    #: Names of the slots that a client leased: never unloaded for idleness or memory.
    pinned_by: set[str] = field(default_factory=set)
    pool: WeightsPool | None = None

    def get_engine(self) -> Any:
        """The loaded engine (caller holds ``lock``)."""
        self.last_used = time.monotonic()
        if self.engine is None:
            if self.pool is not None:
                self.engine = self.pool.load(self)
            else:
                from app.core.infer import open_engine

                self.engine = open_engine(self.path, self.fmt, self.options)
        return self.engine

    def close_engine(self) -> bool:
        """Close the engine (caller holds both locks); True when one was loaded."""
        engine, self.engine = self.engine, None
        self.bytes = 0
        if engine is not None:
            engine.close()
            return True
        return False

    def unload(self) -> bool:
        with self.lock, self.prep_lock:
            return self.close_engine()

    def try_unload(self) -> bool:
        """Unload unless a request holds it right now (never waits)."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if not self.prep_lock.acquire(blocking=False):
                return False
            try:
                return self.close_engine()
            finally:
                self.prep_lock.release()
        finally:
            self.lock.release()


class WeightsPool:
    """Every model's weights: one copy per (path, format, options), a memory budget, idle unload.

    Loading a model that would take the loaded total past ``budget`` bytes first
    unloads the least recently used models that no client leased. The budget
    decides what to evict, never whether to answer: with every loaded model leased,
    the load goes ahead over budget. ``unload_idle`` drops unleased models not asked
    for in ``idle_s`` seconds.
    """

    def __init__(self, budget: int | None = None, idle_s: float | None = None) -> None:
        self.budget = budget
        self.idle_s = idle_s
        self._all: list[Weights] = []
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one load at a time: RSS deltas stay per model

    def weights_for(self, path: Path, fmt: str | None, options: Any) -> Weights:
        with self._lock:
            for w in self._all:
                if w.path == path and w.fmt == fmt and w.options == options:
                    return w
            w = Weights(path, fmt, options, pool=self)
            self._all.append(w)
            return w

    def all(self) -> list[Weights]:
        with self._lock:
            return list(self._all)

    def loaded_bytes(self, but: Weights | None = None) -> int:
        return sum(w.bytes for w in self.all() if w.engine is not None and w is not but)

    def load(self, w: Weights) -> Any:
        """Open ``w``'s engine (caller holds ``w.lock``), making room under the budget first."""
        from app.core.infer import open_engine

        with self._load_lock:
            if self.budget is not None:
                self._make_room(w, _size_on_disk(w.path))
            before = _rss()
            engine = open_engine(w.path, w.fmt, w.options)
            w.bytes = max(_rss() - before, 0)
            return engine

    def _make_room(self, loading: Weights, needed: int) -> list[Weights]:
        assert self.budget is not None
        freed = []
        candidates = sorted(
            (
                w
                for w in self.all()
                if w is not loading and w.engine is not None and not w.pinned_by
            ),
            key=lambda w: w.last_used,
        )
        for w in candidates:
            if self.loaded_bytes(but=loading) + needed <= self.budget:
                break
            if w.try_unload():
                freed.append(w)
        return freed

    def unload_idle(self, now: float | None = None) -> list[Weights]:
        """Unload unleased models idle for ``idle_s`` seconds; returns those unloaded."""
        if self.idle_s is None:
            return []
        now = time.monotonic() if now is None else now
        return [
            w
            for w in self.all()
            if w.engine is not None
            and not w.pinned_by
            and now - w.last_used >= self.idle_s
            and w.try_unload()
        ]


@dataclass
class ModelSlot:
    """One served model name: its weights (shared with other names of the same model)
    and, optionally, its own chat template preset."""

    name: str
    path: Path
    fmt: str | None
    options: Any
    #: Other names clients may use for it (a library model's name beside its id).
    aliases: tuple[str, ...] = ()
    #: A chat template preset for this name only (the weights' own options may hold another).
    template: str | None = None
    weights: Weights = None  # type: ignore[assignment]
    created: int = field(default_factory=lambda: int(time.time()))
    _template_obj: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.weights is None:
            self.weights = Weights(self.path, self.fmt, self.options)

    @property
    def engine(self) -> Any:
        return self.weights.engine

    @property
    def lock(self) -> FifoLock:
        return self.weights.lock

    @property
    def prep_lock(self) -> threading.Lock:
        return self.weights.prep_lock

    def get_engine(self) -> Any:
        """The loaded engine (caller holds ``lock``)."""
        return self.weights.get_engine()

    def chat_template(self, engine: Any) -> Any:
        """This name's template: its own preset, else the engine's (caller holds ``lock``)."""
        if self.template is None:
            return engine.chat_template
        if self._template_obj is None or self._template_obj[0] is not engine:
            from app.core.infer.templates import preset

            bos, eos = engine.special_tokens()
            tpl = preset(self.template, bos_token=bos or None, eos_token=eos or None)
            self._template_obj = (engine, tpl)
        return self._template_obj[1]

    def tool_format(self, engine: Any) -> str | None:
        if self.template is None:
            return str(engine.tool_format) if engine.tool_format else None
        from app.core.infer.tool_calls import detect_tool_format

        return detect_tool_format(self.chat_template(engine).source)

    def unload(self) -> bool:
        return self.weights.unload()


#: Requests kept for GET /v1/host/requests.
RECENT = 200
#: Reads by the window and by monitoring: counted in the metrics' totals, not as requests
#: in progress nor in the recent list.
WATCH_ROUTES = ("/health", "/metrics", "/v1/host/requests", "/v1/host/status")


def timed(record: dict[str, Any], chunks: Iterator[Any], t0: float) -> Iterator[Any]:
    """Pass ``chunks`` through, noting in ``record`` the time to the first generated text
    (``ttft_ms``, from the request's start ``t0``) and the generation time after it."""
    first = None
    for c in chunks:
        text = getattr(c, "text", None)
        if first is None and text:
            first = time.perf_counter()
            record["ttft_ms"] = round((first - t0) * 1000, 1)
        yield c
    if first is not None:
        record["generation_ms"] = round((time.perf_counter() - first) * 1000, 1)


class RequestLog:
    """Appends one JSON line per request."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)


@dataclass
class HostConfig:
    models: dict[str, ModelSlot]
    api_key: str
    host: str = "127.0.0.1"
    port: int = 0
    request_log: Path | None = None
    ready_file: Path | None = None
    #: Connections served at once; more get a 503 (idle keep-alive ones are closed first).
    max_connections: int = 64
    #: Seconds a kept-alive connection may wait for its next request.
    idle_timeout: float = 30.0
    #: Seconds from a request's first byte to the end of its headers.
    header_timeout: float = 10.0
    #: Seconds to receive a body once the headers are in.
    body_timeout: float = 30.0
    #: Seconds any single send or receive may block (a client that stops reading).
    io_timeout: float = 60.0
    #: Accept ``POST /v1/host/models`` (models added at run time). Only the app's own
    #: host (``HostProcess(accept_models=True)``) turns it on, never ``demoai serve``.
    accept_models: bool = False
    #: The weights of every model: budget, idle unload, one copy per model.
    pool: WeightsPool = field(default_factory=WeightsPool)
    #: Engine options (threads, context) of models added at run time.
    default_options: Any = None
    #: Stop when this process ends (``--parent-pid``); None: run until signalled.
    parent_pid: int | None = None

    def __post_init__(self) -> None:
        for slot in self.models.values():  # models named twice share one copy
            slot.weights = self.pool.weights_for(slot.path, slot.fmt, slot.options)


# --------------------------------------------------------------------------- HTTP


@dataclass
class _Conn:
    """A connection's phase: ``idle`` (between requests), ``read`` (a request arriving),
    ``busy`` (being answered, no deadline); the reaper shuts down the late ones."""

    sock: socket.socket
    phase: str = "idle"
    deadline: float | None = None
    reaped: bool = False


class HostServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, config: HostConfig) -> None:
        self.config = config
        self.register_lock = threading.Lock()
        self.log = RequestLog(config.request_log)
        #: Prometheus figures (GET /metrics) and the last requests (GET /v1/host/requests)
        self.metrics = HostMetrics(self._model_figures)
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.address_family = family
        self._conns: dict[socket.socket, _Conn] = {}
        self._conns_lock = threading.Lock()
        self._closing = threading.Event()
        super().__init__((config.host, config.port), Handler)
        threading.Thread(target=self._reap, name="host-reaper", daemon=True).start()
        if config.pool.idle_s is not None:
            threading.Thread(target=self._unload_idle, name="host-idle", daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def _model_figures(self) -> list[tuple[str, bool, int]]:
        """(name, loaded, bytes) of each served model, for the metrics."""
        out = []
        for s in list(self.config.models.values()):
            w = s.weights
            out.append((s.name, w.engine is not None, w.bytes if w.engine is not None else 0))
        return out

    @property
    def open_connections(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    # -- connection cap and deadlines --------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        cap = self.config.max_connections
        with self._conns_lock:
            room = len(self._conns) < cap or self._evict_idle()
            if room:
                deadline = time.monotonic() + self.config.idle_timeout
                self._conns[request] = _Conn(request, "idle", deadline)
        if not room:
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def _evict_idle(self) -> bool:
        """Close the connection idle the longest (caller holds the lock)."""
        idle = [c for c in self._conns.values() if c.phase == "idle" and not c.reaped]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.deadline or 0.0)
        victim.reaped = True
        del self._conns[victim.sock]
        try:
            victim.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    def _refuse(self, sock: socket.socket) -> None:
        """503 with a JSON body, sent without a thread."""
        body = json.dumps(
            error_body(
                f"The server is at its limit of {self.config.max_connections} connections.",
                "server_error",
                "too_many_connections",
            )
        ).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        try:
            sock.settimeout(0.5)
            sock.sendall(head.encode() + body)
            sock.setblocking(False)
            try:
                sock.recv(65536)  # what the client already sent: closing over it would reset
            except OSError:
                pass
        except OSError:
            pass
        self.shutdown_request(sock)

    def set_phase(self, sock: socket.socket, phase: str, timeout: float | None) -> None:
        with self._conns_lock:
            conn = self._conns.get(sock)
            if conn is not None:
                conn.phase = phase
                conn.deadline = None if timeout is None else time.monotonic() + timeout

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.pop(request, None)
        super().shutdown_request(request)

    def _reap(self) -> None:
        """Shut down the reading side of connections past their deadline.

        A blocked read then returns end-of-file: an idle connection ends, a slow
        request gets a 408. Socket timeouts alone would restart with every byte.
        """
        while not self._closing.wait(0.2):
            now = time.monotonic()
            with self._conns_lock:
                late = [
                    c
                    for c in self._conns.values()
                    if not c.reaped and c.deadline is not None and c.deadline < now
                ]
                for c in late:
                    c.reaped = True
            for c in late:
                try:
                    c.sock.shutdown(socket.SHUT_RD if c.phase == "read" else socket.SHUT_RDWR)
                except OSError:
                    pass

    def _unload_idle(self) -> None:
        idle = self.config.pool.idle_s or 1.0
        while not self._closing.wait(min(5.0, max(idle / 4, 0.1))):
            self.config.pool.unload_idle()

    def server_close(self) -> None:
        self._closing.set()
        super().server_close()

    def close_models(self) -> None:
        for w in self.config.pool.all():
            w.unload()


class Handler(BaseHTTPRequestHandler):
    server: HostServer
    protocol_version = "HTTP/1.1"
    _t0 = 0.0
    server_version = "DemoAIHost/1"

    _body_pending = False

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.config.io_timeout)  # per send or receive
        # Streamed tokens are tiny writes: without this, Nagle + delayed ACK add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        """Wait (idle deadline) for a request's first byte, then read it (header deadline)."""
        cfg = self.server.config
        self.server.set_phase(self.connection, "idle", cfg.idle_timeout)
        try:
            first = self.rfile.peek(1)  # type: ignore[attr-defined]
        except OSError:
            first = b""
        if not first:
            self.close_connection = True
            return
        self.server.set_phase(self.connection, "read", cfg.header_timeout)
        try:
            super().handle_one_request()
        except OSError:  # the reaper or the client cut a request short
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests go to the JSON request log instead

    # -- plumbing ----------------------------------------------------------------
    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: HostError) -> None:
        self._send_json(err.status, error_body(err.message, err.error_type, err.code))

    def _send_error_safely(self, err: HostError) -> None:
        try:
            self._send_error(err)
        except OSError:
            self.close_connection = True

    def _body_length(self, method: str) -> int:
        """The declared body length, validated: framing errors close the connection."""
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            raise HostError(
                411,
                "Chunked request bodies are not accepted: send a Content-Length.",
                code="length_required",
            )
        values = self.headers.get_all("Content-Length") or []
        if not values:
            if method == "POST":
                self.close_connection = True
                raise HostError(
                    411, "A POST request needs a Content-Length.", code="length_required"
                )
            return 0
        if len(set(values)) > 1 or not _CONTENT_LENGTH.fullmatch(values[0].strip()):
            self.close_connection = True
            raise HostError(
                400, "Bad Content-Length: expected one non-negative integer.",
                code="bad_content_length",
            )  # fmt: skip
        length = int(values[0])
        if length > MAX_BODY:
            self.close_connection = True
            raise HostError(
                413, f"Request body too large (at most {MAX_BODY // 2**20} MB).",
                code="body_too_large",
            )  # fmt: skip
        self._body_pending = length > 0
        return length

    def _read_body(self) -> dict[str, Any]:
        length = self._body_length("POST")
        self.server.set_phase(self.connection, "read", self.server.config.body_timeout)
        try:
            raw = self.rfile.read(length) if length else b""
        except OSError:
            raw = b""
        if len(raw) < length:
            self.close_connection = True
            raise HostError(
                408,
                f"The request body did not arrive in time ({len(raw)} of {length} bytes).",
                code="request_timeout",
            )
        self._body_pending = False
        self.server.set_phase(self.connection, "busy", None)
        return parse_body(raw)

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        expected = self.server.config.api_key.encode("utf-8")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("utf-8"), expected
        )

    def _slot(self, body: Mapping[str, Any]) -> ModelSlot:
        models = self.server.config.models
        name = body.get("model")
        if name is None and len(models) == 1:
            return next(iter(models.values()))
        return resolve_slot(models, name)

    # -- routing -----------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        t0 = self._t0 = time.perf_counter()
        #: requests people sent, not the watchers' own reads
        counted = path not in WATCH_ROUTES
        if counted:
            self.server.metrics.in_progress.inc()
        record: dict[str, Any] = {
            "path": path,
            "model": None,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        status = 200
        self._body_pending = False
        try:
            if not self._body_length(method):
                self.server.set_phase(self.connection, "busy", None)
            if path == "/health" and method == "GET":
                self._send_json(200, {"status": "ok", "pid": os.getpid()})
                return
            if not (
                path.startswith(("/v1/", "/admin/"))
                or path == "/metrics"
                or path in TOKENIZER_ROUTES
            ):
                raise HostError(404, f"Unknown route {path}.", code="not_found")
            if not self._authorised():
                raise HostError(
                    401,
                    "Missing or invalid API key (Authorization: Bearer ...).",
                    code="invalid_api_key",
                )
            routes: dict[tuple[str, str], Callable[[dict[str, Any]], int]] = {
                ("GET", "/v1/models"): self._models,
                ("POST", "/v1/chat/completions"): self._chat,
                ("POST", "/v1/completions"): self._completions,
                ("GET", "/tokenizer_info"): self._tokenizer_info,
                ("POST", "/tokenize"): self._tokenize,
                ("POST", "/detokenize"): self._detokenize,
                ("POST", "/v1/embeddings"): self._embeddings,
                ("POST", "/admin/unload"): self._unload,
                ("GET", "/v1/host/status"): self._status,
                ("POST", "/v1/host/models"): self._register,
                ("GET", "/v1/host/requests"): self._recent,
                ("GET", "/metrics"): self._metrics,
            }
            route = routes.get((method, path))
            if route is None and method == "GET" and path.startswith("/v1/models/"):
                name = path.removeprefix("/v1/models/")
                route = lambda record: self._model_info(record, name)  # noqa: E731
            if route is None:
                raise HostError(404, f"Unknown route {method} {path}.", code="not_found")
            status = route(record)
        except HostError as exc:
            status = exc.status
            record["error"] = exc.code
            self._send_error_safely(exc)
        except RecursionError:
            err = HostError(400, "The request is nested too deeply.", code="too_deep")
            status, record["error"] = 400, err.code
            self._send_error_safely(err)
        except OSError:  # the client went away or stopped reading
            status = 499
            self.close_connection = True
        except Exception as exc:
            err = as_host_error(exc)
            status = err.status
            record["error"] = err.code
            self._send_error_safely(err)
        finally:
            if counted:
                self.server.metrics.in_progress.dec()
            if self._body_pending:  # answered without reading the body: the stream is out of step
                self.close_connection = True
            if path != "/health":
                record.update(
                    time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    status=status,
                    latency_ms=round((time.perf_counter() - t0) * 1000, 1),
                )
                self.server.log.write(record)
                self.server.metrics.observe(record)
                if counted:
                    self.server.recent.append(dict(record))

    # -- endpoints ---------------------------------------------------------------
    def _metrics(self, record: dict[str, Any]) -> int:
        """The Prometheus text format (app/workers/host_metrics.py)."""
        data, ctype = self.server.metrics.render()
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return 200

    def _recent(self, record: dict[str, Any]) -> int:
        """The last requests, newest first: route, model, tokens, status, timings (the host
        never keeps prompt or answer text)."""
        self._send_json(200, {"object": "list", "data": list(reversed(self.server.recent))})
        return 200

    def _models(self, record: dict[str, Any]) -> int:
        data = [
            {
                "id": s.name,
                "object": "model",
                "created": s.created,
                "owned_by": "demoai",
                "loaded": s.engine is not None,
                "aliases": list(s.aliases),
            }
            for s in self.server.config.models.values()
        ]
        self._send_json(200, {"object": "list", "data": data})
        return 200

    def _model_info(self, record: dict[str, Any], name: str) -> int:
        """One model with what it can do; loads it (its chat template lives in the weights file)."""
        slot = self._slot({"model": name})
        record["model"] = slot.name
        with self.server.metrics.locked(slot.lock, record):
            engine = slot.get_engine()
            template = slot.chat_template(engine)
            caps = {
                "chat_template": template.name,
                "tools": slot.tool_format(engine),
                "response_format": hasattr(engine, "set_grammar"),
                "context_length": engine.context_length,
            }
        info = {"id": slot.name, "object": "model", "created": slot.created,
                "owned_by": "demoai", "loaded": True, "capabilities": caps}  # fmt: skip
        self._send_json(200, info)
        return 200

    def _unload(self, record: dict[str, Any]) -> int:
        body = self._read_body()
        name = body.get("model")
        slots = [self._slot(body)] if name is not None else list(self.server.config.models.values())
        unloaded = [s.name for s in slots if s.unload()]
        self._send_json(200, {"unloaded": unloaded})
        return 200

    def _status(self, record: dict[str, Any]) -> int:
        """What is loaded and the memory it holds (the host's own accounting)."""
        pool = self.server.config.pool
        models = []
        for s in list(self.server.config.models.values()):
            w = s.weights
            models.append(
                {
                    "id": s.name,
                    "aliases": list(s.aliases),
                    "path": str(s.path),
                    "format": s.fmt,
                    "template": s.template or getattr(s.options, "template", None),
                    "loaded": w.engine is not None,
                    "bytes": w.bytes if w.engine is not None else 0,
                    "pinned": s.name in w.pinned_by,
                    "idle_s": round(time.monotonic() - w.last_used, 1),
                    # names sharing one copy of the weights have the same number
                    "weights": pool.all().index(w) if w in pool.all() else -1,
                }
            )
        loaded = [w for w in pool.all() if w.engine is not None]
        self._send_json(
            200,
            {
                "pid": os.getpid(),
                "rss_bytes": _rss(),
                "loaded_copies": len(loaded),
                "loaded_bytes": sum(w.bytes for w in loaded),
                "memory_budget_bytes": pool.budget,
                "idle_unload_s": pool.idle_s,
                "models": models,
            },
        )
        return 200

    def _register(self, record: dict[str, Any]) -> int:
        """Add (or update) a served model at run time: the app's host only."""
        if not self.server.config.accept_models:
            raise HostError(
                403,
                "This host does not accept models at run time: its models are fixed when it "
                "starts. Restart it with the models you want (demoai serve --model ...).",
                code="registration_disabled",
            )
        body = self._read_body()
        slot, pinned = registration_from_body(body, self.server.config)
        record["model"] = slot.name
        with self.server.register_lock:
            models = self.server.config.models
            old = models.get(slot.name)
            if old is not None and (old.path, old.fmt) != (slot.path, slot.fmt):
                raise HostError(
                    409,
                    f"The name {slot.name!r} already serves {old.path}; pick another name.",
                    code="model_exists",
                )
            if old is None:
                if len(models) >= MAX_MODELS:
                    raise HostError(
                        400, f"The host serves at most {MAX_MODELS} names.", code="too_many_models"
                    )
                # A new dict, swapped in whole: requests iterating the old one are unaffected.
                self.server.config.models = {**models, slot.name: slot}
                old = slot
            else:
                old.aliases = slot.aliases
                if old.template != slot.template:
                    old.template, old._template_obj = slot.template, None
            if pinned:
                old.weights.pinned_by.add(old.name)
            else:
                old.weights.pinned_by.discard(old.name)
        self._send_json(
            200,
            {"id": old.name, "loaded": old.engine is not None, "pinned": pinned,
             "template": old.template},
        )  # fmt: skip
        return 200

    def _embeddings(self, record: dict[str, Any]) -> int:
        body = self._read_body()
        slot = self._slot(body)
        record["model"] = slot.name
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise HostError(
                400, "input must be a string or a list of strings.", code="invalid_input"
            )
        longest = max(len(t) for t in texts)
        if longest > EMBED_MAX_TOKENS * MAX_CHARS_PER_TOKEN:  # refused before the model's lock
            raise HostError(
                400,
                f"An input has {longest:,} characters, more than {EMBED_MAX_TOKENS} tokens.",
                code="context_length_exceeded",
            )
        with self.server.metrics.locked(slot.lock, record):
            engine = slot.get_engine()
            vectors = engine.embeddings(texts)
            n = sum(engine.count_tokens(t) for t in texts)
        record["prompt_tokens"] = n
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        usage = {"prompt_tokens": n, "total_tokens": n}
        self._send_json(200, {"object": "list", "data": data, "model": slot.name, "usage": usage})
        return 200

    # -- the tokenizer (lm-eval's "remote" tokenizer backend, llama.cpp's and vLLM's routes) --
    def _tokenizer_slot(self, body: Mapping[str, Any]) -> ModelSlot:
        """The model named by ``model`` in the body or the query, else the only one."""
        from urllib.parse import parse_qs

        name = body.get("model")
        if name is None:
            query = parse_qs(self.path.partition("?")[2])
            names = query.get("model")
            name = names[0] if names else None
        if name is None and len(self.server.config.models) > 1:
            raise HostError(
                400,
                "This host serves several models: name one (model in the body, or ?model=).",
                code="model_required",
            )
        return self._slot({"model": name} if name is not None else {})

    def _tokenizer_info(self, record: dict[str, Any]) -> int:
        slot = self._tokenizer_slot({})
        record["model"] = slot.name
        with slot.lock:
            engine = slot.get_engine()
            bos, eos = engine.special_tokens()
            info = {
                "model": slot.name,
                "bos_token": bos or None,
                "eos_token": eos or None,
                "pad_token": None,
                "vocab_size": engine.vocab_size,
                "max_model_len": int(engine.context_length),
            }
        self._send_json(200, info)
        return 200

    def _tokenize(self, record: dict[str, Any]) -> int:
        """``{"prompt" | "text", "add_special_tokens"?}`` -> ``{"tokens", "count", "max_model_len"}``."""
        body = self._read_body()
        _field(body, "model", (str,), "a string")
        text = body.get("prompt", body.get("text", body.get("content")))
        if not isinstance(text, str):
            raise HostError(400, "prompt must be a string.", code="invalid_prompt")
        if len(text) > MAX_TOKENIZE_CHARS:
            raise HostError(
                400,
                f"prompt has {len(text):,} characters; at most {MAX_TOKENIZE_CHARS:,} are tokenized.",
                code="prompt_too_long",
            )
        special = _field(body, "add_special_tokens", (bool,), "true or false")
        slot = self._tokenizer_slot(body)
        record["model"] = slot.name
        with slot.lock:
            engine = slot.get_engine()
            tokens = engine.tokenize(text, add_special=True if special is None else special)
            n_ctx = int(engine.context_length)
        self._send_json(200, {"tokens": tokens, "count": len(tokens), "max_model_len": n_ctx})
        return 200

    def _detokenize(self, record: dict[str, Any]) -> int:
        """``{"tokens": [ids]}`` -> ``{"prompt": text}``."""
        from app.core.infer.engines import check_token_ids

        body = self._read_body()
        _field(body, "model", (str,), "a string")
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise HostError(400, "tokens must be a list of token ids.", code="invalid_tokens")
        if len(tokens) > MAX_TOKENIZE_CHARS // 4:
            raise HostError(400, "Too many tokens.", code="invalid_tokens")
        slot = self._tokenizer_slot(body)
        record["model"] = slot.name
        with slot.lock:
            engine = slot.get_engine()
            if tokens:  # checked first: llama.cpp aborts the process on an unknown id
                check_token_ids(tokens, engine.vocab_size)
            text = engine.detokenize(tokens)
        self._send_json(200, {"prompt": text})
        return 200

    def _chat(self, record: dict[str, Any]) -> int:
        body = self._read_body()
        validate_messages(body.get("messages"))
        return self._generate(record, body, chat=True)

    def _completions(self, record: dict[str, Any]) -> int:
        body = self._read_body()
        prompts = completion_prompts(body.get("prompt"))
        top, echo = validate_logprob_fields(body, chat=False)
        plain = top is None and not echo and body.get("max_tokens") != 0
        if len(prompts) == 1 and isinstance(prompts[0], str) and plain:
            body["prompt"] = prompts[0]
            return self._generate(record, body, chat=False)
        return self._legacy(record, body, prompts, top, echo)

    def _legacy(
        self,
        record: dict[str, Any],
        body: dict[str, Any],
        prompts: list[str | list[int]],
        top: int | None,
        echo: bool,
    ) -> int:
        """``/v1/completions`` with logprobs, echo, token-id prompts or several prompts.

        Each prompt is one choice, run under the model's lock on its own (a long
        batch does not hold the queue between prompts). With ``echo`` the prompt's
        text comes first and, with ``logprobs``, its tokens' scores (the first is
        null); ``max_tokens: 0`` with ``echo`` only scores the prompt.
        """
        from app.core.infer import ContextOverflowError, SamplingParams
        from app.core.infer.engines import check_token_ids

        stream, include_usage = validate_generation_fields(body)
        if stream and len(prompts) > 1:
            raise HostError(400, "stream works with one prompt at a time.", code="invalid_prompt")
        score_only = body.get("max_tokens") == 0 and not isinstance(body.get("max_tokens"), bool)
        if score_only and not echo:
            raise HostError(
                400,
                "max_tokens 0 generates nothing: it needs echo: true (to score the prompt).",
                code="invalid_max_tokens",
            )
        slot = self._slot(body)
        record["model"] = slot.name
        params = SamplingParams.from_openai({**body, "max_tokens": 1} if score_only else body)
        grammar = response_format_grammar(body.get("response_format"))
        with self.server.metrics.locked(slot.lock, record):
            engine = slot.get_engine()
            n_ctx = int(engine.context_length)
        for p in prompts:
            if isinstance(p, str):
                check_prompt_fits(slot, engine, p, n_ctx)
            elif len(p) > n_ctx or (len(p) == n_ctx and not score_only):
                raise ContextOverflowError(len(p), n_ctx)
        rid = "cmpl-" + uuid.uuid4().hex[:24]
        record["id"] = rid
        created = int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": slot.name}

        def run(prompt: str | list[int]) -> Generator[tuple[str, Any, str | None, Any]]:
            """(text, logprobs block or None, finish_reason, usage) pieces of one choice."""
            with self.server.metrics.locked(slot.lock, record):
                engine = slot.get_engine()
                if grammar is not None:
                    if not hasattr(engine, "set_grammar"):
                        raise HostError(
                            400,
                            "response_format json_object/json_schema is supported for GGUF "
                            "models only.",
                            code="unsupported_response_format",
                        )
                    engine.set_grammar(grammar)
                try:
                    if isinstance(prompt, str):
                        tokens = engine.prompt_tokens(prompt)
                    else:  # checked first: llama.cpp aborts the process on an unknown id
                        tokens = list(prompt)
                        check_token_ids(tokens, engine.vocab_size)
                    scored = engine.score_tokens(tokens, top) if echo and top is not None else []
                    if isinstance(prompt, str):
                        text0 = prompt
                    elif scored:
                        text0 = b"".join(e.piece for e in scored).decode("utf-8", "replace")
                    else:
                        text0 = engine.detokenize(tokens)
                    offsets = LegacyLogprobs(0 if echo else len(text0))
                    if echo:
                        yield text0, offsets.block(scored) if top is not None else None, None, None
                    if score_only:
                        from app.core.infer import Usage

                        yield "", None, "length", Usage(len(tokens), 0)
                        return
                    for c in timed(
                        record,
                        engine.complete_tokens(
                            tokens, params, **({} if top is None else {"logprobs": top})
                        ),
                        self._t0,
                    ):
                        block = offsets.block(c.logprobs) if top is not None else None
                        yield c.text, block, c.finish_reason, c.usage
                finally:
                    if grammar is not None:
                        engine.set_grammar(None)

        if stream:
            pieces = run(prompts[0])
            try:
                return self._legacy_stream(record, head, pieces, include_usage)
            finally:
                pieces.close()  # releases the model's lock if the client went away
        choices = []
        n_prompt = n_out = 0
        for i, prompt in enumerate(prompts):
            parts: list[str] = []
            blocks: list[dict[str, Any]] = []
            finish = "stop"
            for text, block, fin, usage in run(prompt):
                parts.append(text)
                if block is not None:
                    blocks.append(block)
                if fin:
                    finish = fin
                if usage is not None:
                    n_prompt += usage.prompt_tokens
                    n_out += usage.completion_tokens
            logprobs = merge_legacy_blocks(blocks) if top is not None else None
            choices.append(
                {"index": i, "text": "".join(parts), "finish_reason": finish, "logprobs": logprobs}
            )
        record.update(prompt_tokens=n_prompt, completion_tokens=n_out)
        usage_d = {
            "prompt_tokens": n_prompt,
            "completion_tokens": n_out,
            "total_tokens": n_prompt + n_out,
        }
        self._send_json(200, {**head, "choices": choices, "usage": usage_d})
        return 200

    def _legacy_stream(
        self,
        record: dict[str, Any],
        head: dict[str, Any],
        pieces: Iterator[tuple[str, Any, str | None, Any]],
        include_usage: bool,
    ) -> int:
        """A completion stream whose events carry legacy logprob blocks."""
        first = next(pieces)  # errors before the first piece are still a proper 4xx/5xx
        self._start_events()
        send = self._send_chunk

        def event(obj: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps({**head, **obj}, ensure_ascii=False).encode() + b"\n\n"

        usage = None
        status = 200
        try:
            for text, block, fin, u in itertools.chain([first], pieces):
                if u is not None:
                    usage = u
                if text or block or fin:
                    choice = {"index": 0, "text": text, "finish_reason": fin, "logprobs": block}
                    send(event({"choices": [choice]}))
            if usage is not None:
                record.update(
                    prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
                )
                if include_usage:
                    send(event({"choices": [], "usage": usage.to_dict()}))
        except OSError:
            self.close_connection = True
            return 499
        except Exception as exc:
            status = self._stream_error(record, exc)
        return self._end_events(status)

    def _generate(self, record: dict[str, Any], body: dict[str, Any], *, chat: bool) -> int:
        from app.core.infer import SamplingParams

        stream, include_usage = validate_generation_fields(body)
        top = validate_logprob_fields(body, chat=True)[0] if chat else None
        slot = self._slot(body)
        record["model"] = slot.name
        params = SamplingParams.from_openai(body)
        grammar = response_format_grammar(body.get("response_format"))
        tools: list[dict[str, Any]] = []
        required = False
        if chat and body.get("tools"):
            from app.core.infer.tool_calls import chosen_tools, validate_tools

            tools, required = chosen_tools(validate_tools(body["tools"]), body.get("tool_choice"))
            if tools and grammar is not None:
                raise HostError(400, "Use either tools or response_format, not both.")
        with self.server.metrics.locked(
            slot.lock
        ):  # loads the model on first use; the rest is cached and quick
            engine = slot.get_engine()
            template = slot.chat_template(engine) if chat else None
            tool_format = slot.tool_format(engine) if tools else None
            n_ctx = int(engine.context_length)
        if tools and tool_format is None:
            raise HostError(
                400,
                f"The chat template of {slot.name!r} has no tool-calling format.",
                code="tools_unsupported",
            )
        # The prompt is made and measured before the model's lock: a hostile
        # template or a huge prompt costs this request its time, not the queue.
        if template is not None:
            prompt = render_chat(template, body["messages"], tools)
            params = params.with_stop(template.stop)
        else:
            prompt = body["prompt"]
        check_prompt_fits(slot, engine, prompt, n_ctx)
        with self.server.metrics.locked(slot.lock, record):  # the queue: counted while waiting
            engine = slot.get_engine()
            if tools and required and hasattr(engine, "set_grammar"):
                # GGUF: the call is grammar-constrained; HF engines generate freely.
                grammar = tool_call_grammar(tools, str(tool_format))
            if grammar is not None:
                if not hasattr(engine, "set_grammar"):
                    raise HostError(
                        400,
                        "response_format json_object/json_schema is supported for GGUF models only.",
                        code="unsupported_response_format",
                    )
                engine.set_grammar(grammar)
            try:
                # A reply parsed for tool calls has no per-token logprobs.
                lp = top if tool_format is None else None
                chunks = engine.complete(prompt, params, **({} if lp is None else {"logprobs": lp}))
                chunks = timed(record, chunks, self._t0)
                rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
                record["id"] = rid  # the reply's id, so a client's answer can be found in the log
                if tool_format is not None:
                    return self._tool_reply(
                        record, slot.name, rid, chunks, tool_format, stream, include_usage
                    )
                if stream:
                    return self._stream(record, slot.name, rid, chat, chunks, include_usage, lp)
                return self._whole(record, slot.name, rid, chat, chunks, lp)
            finally:
                if grammar is not None:
                    engine.set_grammar(None)

    @staticmethod
    def _collect(record: dict[str, Any], chunks: Iterator[Any]) -> tuple[str, str, dict[str, int]]:
        """Drain ``chunks``: (text, finish_reason, usage dict); token counts go to ``record``."""
        parts: list[str] = []
        finish, usage = "stop", None
        for c in chunks:
            parts.append(c.text)
            if c.finish_reason:
                finish, usage = c.finish_reason, c.usage
        usage_d = (
            usage.to_dict()
            if usage
            else {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        )
        record.update(
            prompt_tokens=usage_d["prompt_tokens"], completion_tokens=usage_d["completion_tokens"]
        )
        return "".join(parts), finish, usage_d

    def _tool_reply(
        self,
        record: dict[str, Any],
        model: str,
        rid: str,
        chunks: Iterator[Any],
        tool_format: str,
        stream: bool,
        include_usage: bool = False,
    ) -> int:
        """A chat reply that may hold tool calls: generated whole, then parsed.

        Streaming requests get the result as one content delta or one
        ``tool_calls`` delta (a call is only known once its text is complete).
        """
        from app.core.infer.tool_calls import parse_tool_calls

        text, finish, usage_d = self._collect(record, chunks)
        content, calls = parse_tool_calls(text, tool_format)
        tool_calls = [c.to_openai() for c in calls]
        if tool_calls:
            finish = "tool_calls"
            record["tool_calls"] = len(tool_calls)
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        created = int(time.time())
        head = {"id": rid, "created": created, "model": model}
        if not stream:
            choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            self._send_json(
                200, {**head, "object": "chat.completion", "choices": [choice], "usage": usage_d}
            )
            return 200
        delta: dict[str, Any] = {"role": "assistant", "content": content or None}
        if tool_calls:
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(tool_calls)]
        events: list[dict[str, Any]] = [
            {"choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": finish, "logprobs": None}]},
        ]
        if include_usage:
            events.append({"choices": [], "usage": usage_d})
        self._start_events()
        try:
            for ev in events:
                obj = {**head, "object": "chat.completion.chunk", **ev}
                self._send_chunk(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")
        except OSError:
            self.close_connection = True
            return 499
        return self._end_events(200)

    def _start_events(self) -> None:
        """Headers of a server-sent event stream.

        Chunked: a host that dies mid-stream leaves an incomplete body, which
        clients report as an error instead of a silently short answer.
        """
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _stream_error(self, record: dict[str, Any], exc: Exception) -> int:
        """A failure after a stream began: one error event (OpenAI's error shape); its status."""
        err = as_host_error(exc)
        record["error"] = err.code
        body = json.dumps(error_body(err.message, err.error_type, err.code)).encode()
        self._send_chunk(b"data: " + body + b"\n\n")
        return err.status

    def _end_events(self, status: int) -> int:
        """Close a stream: ``[DONE]`` and the chunked terminator; 499 when the client left."""
        try:
            self._send_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
            return 499
        return status

    def _whole(
        self,
        record: dict[str, Any],
        model: str,
        rid: str,
        chat: bool,
        chunks: Iterator[Any],
        top: int | None = None,
    ) -> int:
        entries: list[Any] = []

        def keep(chunks: Iterator[Any]) -> Iterator[Any]:
            for c in chunks:
                entries.extend(c.logprobs)
                yield c

        text, finish, usage_d = self._collect(record, keep(chunks))
        created = int(time.time())
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": chat_logprobs(entries, top) if top is not None else None,
            }
            obj = {"id": rid, "object": "chat.completion", "created": created, "model": model}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            obj = {"id": rid, "object": "text_completion", "created": created, "model": model}
        obj.update(choices=[choice], usage=usage_d)
        self._send_json(200, obj)
        return 200

    def _stream(
        self,
        record: dict[str, Any],
        model: str,
        rid: str,
        chat: bool,
        chunks: Iterator[Any],
        include_usage: bool,
        top: int | None = None,
    ) -> int:
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            obj = {
                "id": rid,
                "object": kind,
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"

        def choice(
            text: str | None, finish: str | None, role: bool = False, entries: Any = ()
        ) -> dict[str, Any]:
            lp = chat_logprobs(entries, top) if top is not None and (entries or finish) else None
            if chat:
                delta: dict[str, Any] = {}
                if role:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": lp}
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}

        # Headers go out at once (a context overflow was already raised by
        # complete()/chat() as a proper 400): the client parses them while the
        # first token is computed.
        self._start_events()
        send = self._send_chunk

        usage = None
        try:
            if chat:
                send(event([choice("", None, role=True)]))
            for c in chunks:
                if c.text:
                    send(event([choice(c.text, None, entries=c.logprobs)]))
                    if "ttft_ms" not in record:
                        record["ttft_ms"] = round((time.perf_counter() - self._t0) * 1000, 1)
                if c.finish_reason:
                    usage = c.usage
                    rest = () if c.text else c.logprobs
                    send(event([choice(None if chat else "", c.finish_reason, entries=rest)]))
            if usage is not None:
                record.update(
                    prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
                )
                if include_usage:
                    send(event([], usage=usage.to_dict()))
            status = 200
        except OSError:  # the client went away or stopped reading
            self.close_connection = True
            return 499
        except Exception as exc:
            status = self._stream_error(record, exc)
        return self._end_events(status)


def render_chat(template: Any, messages: list[Any], tools: list[dict[str, Any]]) -> str:
    """The chat prompt, as ``Engine.chat`` makes it, rendered under the template budget.

    A template from the model file renders in a worker process.
    """
    if tools or any(isinstance(m, Mapping) and m.get("tool_calls") for m in messages):
        from app.core.infer.tool_calls import messages_for_template

        messages = messages_for_template(messages)
    extra = {"tools": list(tools)} if tools else {}
    return str(template.render_isolated(messages, add_generation_prompt=True, **extra))


def check_prompt_fits(slot: ModelSlot, engine: Any, prompt: str, n_ctx: int) -> None:
    """Refuse a prompt that cannot fit the context, without the model's lock.

    First by length (no token is longer than MAX_CHARS_PER_TOKEN characters),
    then, for llama.cpp models, by counting tokens: llama.cpp tokenizes from the
    read-only vocabulary, so this runs beside a generation.
    """
    if len(prompt) > n_ctx * MAX_CHARS_PER_TOKEN:
        raise HostError(
            400,
            f"This model's maximum context length is {n_ctx} tokens, but the prompt has "
            f"{len(prompt):,} characters, at least {len(prompt) // MAX_CHARS_PER_TOKEN:,} tokens.",
            code="context_length_exceeded",
        )
    if "gguf" not in getattr(engine, "formats", ()):
        return
    from app.core.infer import ContextOverflowError

    with slot.prep_lock:
        if slot.engine is not engine:  # unloaded meanwhile: the engine checks it itself
            return
        n = len(engine.tokenize(prompt, add_special=False))
    if n >= n_ctx:
        raise ContextOverflowError(n, n_ctx)


def _no_constant(name: str) -> Any:
    raise HostError(400, f"{name} is not valid JSON.", code="invalid_json")


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; anything else is a 400.

    NaN/Infinity are refused, so is text with lone surrogates (``"\\ud800"``),
    which no tokenizer can encode. Nesting past Python's recursion limit
    surfaces as RecursionError, which the dispatcher turns into a 400.
    """
    try:
        body = json.loads(raw or b"{}", parse_constant=_no_constant)
    except RecursionError:
        raise HostError(400, "The request body is nested too deeply.", code="too_deep") from None
    except ValueError:
        raise HostError(
            400, "The request body is not valid JSON (UTF-8).", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise HostError(400, "The request body must be a JSON object.", code="invalid_json")
    if _SURROGATE_ESCAPE.search(raw):
        _refuse_surrogates(body)
    return body


def _refuse_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str) and not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise HostError(
                    400,
                    "The request holds text with an unpaired UTF-16 surrogate (\\ud800-\\udfff).",
                    code="invalid_text",
                ) from None


def _field(body: Mapping[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    """``body[name]`` when absent, null or of ``kinds`` (bool is not a number); else a 400."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        raise HostError(400, f"{name} must be {what}.", code="invalid_type")
    return value


def validate_messages(messages: Any) -> None:
    """The shape of chat messages, checked before anything renders them."""
    if not isinstance(messages, list) or not messages:
        raise HostError(400, "messages must be a non-empty list.", code="invalid_messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise HostError(400, f"{where} must be an object.", code="invalid_messages")
        if not isinstance(m.get("role"), str):
            raise HostError(400, f"{where}.role must be a string.", code="invalid_messages")
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                    raise HostError(
                        400,
                        f"{where}.content parts must be objects with a text string.",
                        code="invalid_messages",
                    )
        elif content is not None and not isinstance(content, str):
            raise HostError(
                400, f"{where}.content must be a string, a list of parts or null.",
                code="invalid_messages",
            )  # fmt: skip
        for key in ("name", "tool_call_id"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise HostError(400, f"{where}.{key} must be a string.", code="invalid_messages")
        calls = m.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise HostError(400, f"{where}.tool_calls must be a list.", code="invalid_messages")
            for c in calls:
                fn = c.get("function") if isinstance(c, dict) else None
                if not (
                    isinstance(fn, dict)
                    and isinstance(fn.get("name"), str)
                    and isinstance(fn.get("arguments", ""), str | dict)
                ):
                    raise HostError(
                        400,
                        f"{where}.tool_calls entries need function.name and function.arguments.",
                        code="invalid_messages",
                    )


def validate_generation_fields(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """Types of the fields shared by chat and completions: (stream, include_usage)."""
    _field(body, "model", (str,), "a string")
    stream = bool(_field(body, "stream", (bool,), "true or false"))
    options = _field(body, "stream_options", (dict,), "an object")
    include_usage = False
    if options is not None:
        include_usage = bool(
            _field(options, "include_usage", (bool,), "true or false (stream_options)")
        )
    _field(body, "response_format", (dict,), "an object")
    _field(body, "tools", (list,), "a list")
    _field(body, "tool_choice", (str, dict), "a string or an object")
    return stream, include_usage


#: Prompts one ``/v1/completions`` request may hold (each is a choice).
MAX_PROMPTS = 64


def completion_prompts(prompt: Any) -> list[str | list[int]]:
    """A completions ``prompt`` as a list: a string, token ids, or a list of either."""

    def is_ids(v: Any) -> bool:
        return isinstance(v, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in v
        )

    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and is_ids(prompt):
        return [list(prompt)]
    if isinstance(prompt, list) and prompt and len(prompt) <= MAX_PROMPTS:
        if all(isinstance(p, str) or (is_ids(p) and p) for p in prompt):
            return list(prompt)
    raise HostError(
        400,
        "prompt must be a string, a list of token ids, or a list of at most "
        f"{MAX_PROMPTS} strings or non-empty token id lists.",
        code="invalid_prompt",
    )


def validate_logprob_fields(body: Mapping[str, Any], *, chat: bool) -> tuple[int | None, bool]:
    """(alternatives per token or None for no logprobs, echo) from a request body.

    Chat: ``logprobs: true`` and ``top_logprobs`` 0..20. Completions: ``logprobs``
    0..20 (OpenAI's legacy API allows 5; llama.cpp's and vLLM's servers 20) and
    ``echo``. Anything else is a 400 naming the field.
    """
    from app.core.infer import MAX_TOP_LOGPROBS

    limit = MAX_TOP_LOGPROBS
    if chat:
        wanted = bool(_field(body, "logprobs", (bool,), "true or false"))
        top = _field(body, "top_logprobs", (int,), f"an integer from 0 to {limit}")
        if top is not None and not 0 <= top <= limit:
            raise HostError(
                400, f"top_logprobs must be from 0 to {limit}, not {top}.",
                code="invalid_top_logprobs",
            )  # fmt: skip
        if top and not wanted:
            raise HostError(400, "top_logprobs needs logprobs: true.", code="invalid_top_logprobs")
        return (top or 0) if wanted else None, False
    echo = bool(_field(body, "echo", (bool,), "true or false"))
    n = _field(body, "logprobs", (int,), f"an integer from 0 to {limit}")
    if n is not None and not 0 <= n <= limit:
        raise HostError(
            400, f"logprobs must be from 0 to {limit}, not {n}.", code="invalid_logprobs"
        )
    return n, echo


def token_text(piece: bytes) -> str:
    """A token's text as OpenAI writes it: ``bytes:\\xNN...`` when not valid UTF-8 alone."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)


def chat_logprobs(entries: Sequence[Any], top: int | None) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat completion (or chunk) for these tokens."""
    content = [
        {
            "token": token_text(e.piece),
            "logprob": e.logprob,
            "bytes": list(e.piece),
            "top_logprobs": [
                {"token": token_text(b), "logprob": lp, "bytes": list(b)}
                for _, b, lp in e.top[: top or 0]
            ],
        }
        for e in entries
    ]
    return {"content": content, "refusal": None}


class LegacyLogprobs:
    """Legacy (``/v1/completions``) logprob blocks, with text offsets running across blocks."""

    def __init__(self, offset: int = 0) -> None:
        import codecs

        self.offset = offset
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def block(self, entries: Sequence[Any]) -> dict[str, Any]:
        tokens, values, tops, offsets = [], [], [], []
        for e in entries:
            offsets.append(self.offset)
            self.offset += len(self._decoder.decode(e.piece))
            tokens.append(token_text(e.piece))
            values.append(e.logprob)
            tops.append(None if e.logprob is None else {token_text(b): lp for _, b, lp in e.top})
        return {
            "tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
            "text_offset": offsets,
        }  # fmt: skip


def merge_legacy_blocks(blocks: Sequence[Mapping[str, list[Any]]]) -> dict[str, list[Any]]:
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    return {k: [v for b in blocks for v in b[k]] for k in keys}


#: Routes outside /v1 that clients of other servers expect (lm-eval's remote tokenizer).
TOKENIZER_ROUTES = ("/tokenizer_info", "/tokenize", "/detokenize")
#: Characters one /tokenize request may hold.
MAX_TOKENIZE_CHARS = 8 * 2**20


def response_format_grammar(fmt: Any) -> str | None:
    """The GBNF grammar for an OpenAI ``response_format`` (None for free text).

    ``{"type": "json_object"}`` constrains the reply to one JSON object;
    ``{"type": "json_schema", "json_schema": {"schema": {...}}}`` to that schema.
    """
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    from llama_cpp import llama_grammar

    if kind == "json_object":
        return str(llama_grammar.JSON_GBNF)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise HostError(
                400, "response_format.json_schema.schema must be an object.", code="invalid_schema"
            )
        try:
            return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
        except Exception as exc:
            raise HostError(400, f"Unsupported JSON schema: {exc}", code="invalid_schema") from exc
    raise HostError(
        400,
        "response_format.type must be text, json_object or json_schema.",
        code="invalid_response_format",
    )


def tool_call_grammar(tools: Sequence[Mapping[str, Any]], tool_format: str) -> str:
    """GBNF for exactly one call of one of ``tools`` in the template's own call syntax."""
    from llama_cpp import llama_grammar

    from app.core.infer.tool_calls import call_grammar_schema, call_wrapping

    schema = call_grammar_schema(tools, tool_format)
    try:
        body = str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:
        raise HostError(
            400, f"A tool's parameters schema is not supported: {exc}", code="invalid_tools"
        ) from exc
    before, after = call_wrapping(tool_format)
    if not before and not after:
        return body
    # The schema grammar's start rule becomes one part of a new start rule.
    lines = body.splitlines()
    renamed = [
        "tool-call-json ::=" + line[len("root ::=") :] if line.startswith("root ::=") else line
        for line in lines
    ]
    return "\n".join(
        [f"root ::= {json.dumps(before)} tool-call-json {json.dumps(after)}", *renamed]
    )


def registration_from_body(body: Mapping[str, Any], config: HostConfig) -> tuple[ModelSlot, bool]:
    """A ``POST /v1/host/models`` body as a new slot and its pinned flag; a 400 when wrong.

    ``{"name", "path", "format"?, "template"?, "aliases"?, "pinned"?}``: the path must
    be an existing file or folder, the format one of FORMATS, the template a preset.
    """
    from app.core.infer import PRESETS, EngineOptions

    name = _field(body, "name", (str,), "a string")
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise HostError(
            400,
            "name must be 1-200 letters, digits or . _ @ : + - (starting with a letter or digit).",
            code="invalid_name",
        )
    raw_path = _field(body, "path", (str,), "a string")
    if not raw_path or "\x00" in raw_path:
        raise HostError(400, "path must name a model file or folder.", code="invalid_path")
    path = Path(raw_path).expanduser()
    if not path.is_absolute():
        raise HostError(400, f"path must be absolute, not {raw_path[:300]!r}.", code="invalid_path")
    try:
        exists = path.is_file() or path.is_dir()
    except OSError:
        exists = False
    if not exists:
        raise HostError(
            400,
            f"There is no model file or folder at {raw_path[:300]}.",
            code="model_path_missing",
        )
    fmt = _field(body, "format", (str,), "a string")
    if fmt is not None and fmt not in FORMATS:
        raise HostError(400, f"format must be one of {', '.join(FORMATS)}.", code="invalid_format")
    template = _field(body, "template", (str,), "a string")
    if template is not None and template not in PRESETS:
        raise HostError(
            400, f"template must be one of {', '.join(PRESETS)}.", code="invalid_template"
        )
    aliases = _field(body, "aliases", (list,), "a list of names") or []
    if len(aliases) > 16:
        raise HostError(400, "aliases must be at most 16 names.", code="invalid_aliases")
    if not all(isinstance(a, str) and _ALIAS.fullmatch(a) for a in aliases):
        raise HostError(
            400,
            "each alias must be 1-200 printable characters, without leading or trailing spaces.",
            code="invalid_aliases",
        )
    pinned = bool(_field(body, "pinned", (bool,), "true or false"))
    if fmt is None:
        from app.core.infer import detect_format

        try:
            fmt = detect_format(path)
        except DemoAIError as exc:
            raise HostError(400, str(exc), code="invalid_format") from None
    base = config.default_options
    options = EngineOptions(threads=base.threads, n_ctx=base.n_ctx) if base else EngineOptions()
    path = path.absolute()
    slot = ModelSlot(name, path, fmt, options, tuple(dict.fromkeys(aliases)), template=template)
    slot.weights = config.pool.weights_for(path, fmt, options)
    return slot, pinned


# --------------------------------------------------------------------------- main


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_ready_file(path: Path, info: Mapping[str, Any]) -> None:
    """Write ``info`` as JSON to ``path`` atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(dict(info), fh)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m app.workers.host", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--model", action="append", default=[], metavar="NAME=PATH[:FORMAT]",
        help="a model to serve (FORMAT: hf, gguf or lora; detected when left out); repeatable",
    )  # fmt: skip
    p.add_argument(
        "--alias", action="append", default=[], metavar="ALIAS=NAME",
        help="another name for the served model NAME (e.g. its library name); repeatable",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one")
    p.add_argument(
        "--api-key",
        help=f"bearer token clients must send (visible in ps: prefer ${API_KEY_ENV} or --api-key-file)",
    )
    p.add_argument("--api-key-file", type=Path, help="read the bearer token from this file")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    p.add_argument("--ready-file", type=Path, help='write {"port", "pid"} here once listening')
    p.add_argument("--request-log", type=Path, help="append one JSON line per request here")
    p.add_argument(
        "--template",
        help="chat template preset for all models (chatml, hermes, gemma, llama3, plain)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads per model (0 = all cores)")
    p.add_argument("--n-ctx", type=int, default=None, help="context size (GGUF default 4096)")
    p.add_argument("--preload", action="store_true", help="load every model before listening")
    p.add_argument(
        "--accept-models", action="store_true",
        help="accept POST /v1/host/models (models added at run time; the app's own host)",
    )  # fmt: skip
    p.add_argument(
        "--memory-budget-mb", type=int, default=None, metavar="MB",
        help="unload least recently used unleased models before a load would pass this",
    )  # fmt: skip
    p.add_argument(
        "--parent-pid", type=int, default=None, metavar="PID",
        help="stop when process PID ends (the app or job that started this host), so a "
        "killed parent never leaves a model host holding memory",
    )  # fmt: skip
    p.add_argument(
        "--idle-unload", type=float, default=None, metavar="S",
        help="unload unleased models not asked for in S seconds (default: never)",
    )  # fmt: skip
    p.add_argument(
        "--max-connections", type=int, default=64,
        help="connections served at once; more get 503 (default 64)",
    )  # fmt: skip
    for name, default, what in (
        ("idle", 30.0, "a kept-alive connection may wait for its next request"),
        ("header", 10.0, "a request may take to send its headers"),
        ("body", 30.0, "a request may take to send its body"),
    ):
        p.add_argument(
            f"--{name}-timeout", type=float, default=default, metavar="S",
            help=f"seconds {what} (default {default:g})",
        )  # fmt: skip
    return p


def read_api_key_file(path: Path) -> str:
    """The key in ``path`` (first line, trimmed); ConfigError when missing or empty."""
    try:
        with path.open("rb") as fh:
            data = fh.read(4097)
    except OSError as exc:
        raise ConfigError(f"Cannot read the API key file {path}: {exc.strerror or exc}.") from exc
    lines = data.decode("utf-8", "replace").strip().splitlines()
    if len(data) > 4096 or not lines or not lines[0].strip():
        raise ConfigError(
            f"The API key file {path} must hold one key on its first line (at most 4 KB)."
        )
    return lines[0].strip()


def config_from_args(
    args: argparse.Namespace, *, env: Mapping[str, str] | None = None
) -> HostConfig:
    """Validate the command line into a :class:`HostConfig`; raises ConfigError."""
    from app.core.infer import PRESETS, EngineOptions

    env = os.environ if env is None else env
    explicit_key = (
        args.api_key
        or (read_api_key_file(args.api_key_file) if args.api_key_file else None)
        or env.get(API_KEY_ENV)
    )
    if not is_loopback(args.host):
        if not args.allow_remote:
            raise ConfigError(
                f"Refusing to listen on the non-loopback address {args.host}.",
                "Other machines could reach the server: pass --allow-remote and --api-key to allow it.",
            )
        if not explicit_key:
            raise ConfigError(
                f"Listening on {args.host} needs an API key.",
                "Pass --api-key KEY with --allow-remote.",
            )
    if not explicit_key:
        raise ConfigError(
            "The model host needs an API key.", f"Pass --api-key or set {API_KEY_ENV}."
        )
    if args.template and args.template not in PRESETS:
        raise ConfigError(
            f"Unknown template preset {args.template!r}.", f"Choose from {', '.join(PRESETS)}."
        )
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port must be between 0 and 65535.")
    if args.max_connections < 1:
        raise ConfigError("--max-connections must be at least 1.")
    for name in ("idle", "header", "body"):
        if not getattr(args, f"{name}_timeout") > 0:
            raise ConfigError(f"--{name}-timeout must be positive.")
    accept = bool(getattr(args, "accept_models", False))
    if not args.model and not accept:
        raise ConfigError("The model host needs at least one --model NAME=PATH[:FORMAT].")
    budget_mb = getattr(args, "memory_budget_mb", None)
    idle = getattr(args, "idle_unload", None)
    if budget_mb is not None and budget_mb < 1:
        raise ConfigError("--memory-budget-mb must be at least 1.")
    if idle is not None and not idle > 0:
        raise ConfigError("--idle-unload must be positive.")
    options = EngineOptions(threads=args.threads, n_ctx=args.n_ctx, template=args.template)
    models: dict[str, ModelSlot] = {}
    for spec in args.model:
        name, path, fmt = parse_model_spec(spec)
        if name in models:
            raise ConfigError(
                f"Two models are named {name!r}.", "Give them different NAME= prefixes."
            )
        if not path.exists():
            raise ConfigError(f"There is no model at {path}.")
        models[name] = ModelSlot(name, path.absolute(), fmt, options)
    for spec in getattr(args, "alias", None) or []:
        alias, sep, target = spec.partition("=")
        alias, target = alias.strip(), target.strip()
        if not sep or not alias or target not in models:
            raise ConfigError(
                f"Bad alias {spec!r}: it must be ALIAS=NAME with NAME a served model.",
                f"Served: {', '.join(models)}.",
            )
        if alias in models:  # a served model's own name always means that model
            continue
        slot = models[target]
        if alias not in slot.aliases:
            slot.aliases = (*slot.aliases, alias)
    return HostConfig(
        models=models,
        api_key=explicit_key,
        host=args.host,
        port=args.port,
        request_log=args.request_log,
        ready_file=args.ready_file,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        accept_models=accept,
        pool=WeightsPool(budget_mb * 2**20 if budget_mb else None, idle),
        default_options=EngineOptions(threads=args.threads, n_ctx=args.n_ctx),
        parent_pid=getattr(args, "parent_pid", None),
    )


def serve(
    config: HostConfig,
    *,
    preload: bool = False,
    on_ready: Callable[[HostServer], None] | None = None,
) -> int:
    """Run the server until SIGTERM/SIGINT; models are closed on the way out."""
    if preload:
        for slot in config.models.values():
            with slot.lock:
                slot.get_engine()
    from app.core.infer.templates import prestart_render_workers

    threading.Thread(target=prestart_render_workers, daemon=True).start()
    try:
        server = HostServer(config)
    except OSError as exc:
        raise ConfigError(
            f"Cannot listen on {config.host}:{config.port}: {exc.strerror or exc}."
        ) from exc
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    if config.parent_pid is not None:
        threading.Thread(
            target=_watch_parent, args=(config.parent_pid, stopping, stop), daemon=True
        ).start()
    if config.ready_file is not None:
        write_ready_file(
            config.ready_file, {"port": server.port, "pid": os.getpid(), "host": config.host}
        )
    if on_ready is not None:
        on_ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.close_models()
    return 0


def _watch_parent(pid: int, stopping: threading.Event, stop: Callable[[int, Any], None]) -> None:
    """Stop the server once process ``pid`` has ended (checked every half second).

    A parent killed with SIGKILL (a cancelled job escalated, the app crashing) cannot
    stop its host; without this the host would hold the model's memory until reboot.
    The parent's start time guards against its pid being reused.
    """
    import psutil

    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        started = None
    while not stopping.wait(0.5):
        try:
            alive = started is not None and psutil.Process(pid).create_time() == started
        except psutil.Error:
            alive = False
        if not alive:
            print(f"demoai host: the process that started it ({pid}) ended; stopping.", flush=True)
            stop(signal.SIGTERM, None)
            return


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        return serve(config, preload=args.preload)
    except DemoAIError as exc:
        print(f"demoai host: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
