"""One client for OpenAI-compatible servers: our model host, ``demoai serve`` or any other.

Every caller that talks to a model over HTTP (Chat streaming, arena answers,
synthesis jobs, the agent loop, the document index) goes through
:class:`OpenAIClient`, so there is one error parser and one set of limits:

* an error answer (the host's JSON ``{"error": {"message", "type", "code"}}``,
  or anything else) becomes :class:`ModelServerError` with the HTTP status,
  the server's message and a hint; a refused connection or a timeout becomes
  :class:`ModelServerUnreachable`, naming the URL;
* a whole response is read up to ``max_response_bytes``; a stream is parsed by
  httpx2's ``EventSource`` (no hand-written SSE parser) with each event
  bounded by ``max_event_bytes``; an ``error`` event in a stream raises too;
* :meth:`OpenAIClient.close` from another thread ends a request or stream in
  progress at once. It shuts down the sockets the client opened: closing a
  socket does not wake a thread blocked reading it, shutting it down does, on
  Linux, macOS and Windows alike. Every request uses a fresh connection (no
  keep-alive) so that each socket is known from the moment it connects; on
  loopback a new connection costs well under a millisecond.

httpx2 is imported on first use, so importing this module costs nothing at
window start-up.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from app.core.errors import DemoAIError

if TYPE_CHECKING:
    import ssl

    import httpx2

#: Largest whole (non-streamed) response body read.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: Largest single server-sent event of a stream.
MAX_EVENT_BYTES = 1024 * 1024
#: Seconds to wait for a connection to a server.
CONNECT_TIMEOUT = 10.0


class ModelServerError(DemoAIError):
    """The model server answered with an error, or not usefully.

    ``status`` is the HTTP status (None when there was no answer or the error
    came inside a stream), ``code`` and ``error_type`` the server's own words
    when it sent OpenAI-style error JSON.
    """

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
        error_type: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.status = status
        self.code = code
        self.error_type = error_type
        self.url = url


class ModelServerUnreachable(ModelServerError):
    """No answer: the connection was refused, broke off, or timed out."""


class RequestCancelled(DemoAIError):
    """The client was closed while the request was in progress."""


@dataclass(frozen=True)
class ChatResult:
    """A whole chat completion: the text, the assistant message (with any ``tool_calls``)."""

    text: str
    message: dict[str, Any]
    finish_reason: str | None
    usage: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Completion:
    """A whole text completion (``/v1/completions``)."""

    text: str
    finish_reason: str | None
    usage: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Delta:
    """One piece of a streamed answer: new text, and at the end the finish reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


_HINTS = {
    401: "The server did not accept the API key. The model host makes a new key each time "
    "it starts: start it again, or check the key you gave.",
    403: "The server refused the request: check the API key and its permissions.",
    404: "Check the model name (GET /v1/models lists what the server serves) and the base "
    "URL (it usually ends in /v1).",
    408: "The request was too slow to arrive: try again.",
    413: "Send less text at once.",
    429: "The server is busy: wait a moment and try again.",
}


def _hint(status: int) -> str | None:
    if status in _HINTS:
        return _HINTS[status]
    if 400 <= status < 500:
        return "Change what the message names and try again."
    if status >= 500:
        return "The server failed: its log says why (the model host writes logs/host-*.log)."
    return None


def error_from_body(status: int | None, body: Any, url: str) -> ModelServerError:
    """The one parser of error answers: OpenAI-style JSON or anything else."""
    message: str | None = None
    code = etype = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        m, c, t = err.get("message"), err.get("code"), err.get("type")
        message = m if isinstance(m, str) and m else None
        code = c if isinstance(c, str) else None
        etype = t if isinstance(t, str) else None
    elif isinstance(err, str) and err:
        message = err
    if message is None:
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        message = " ".join(text.split())[:300] or "(empty answer)"
    prefix = f"The model server answered HTTP {status}" if status else "The model server failed"
    return ModelServerError(
        f"{prefix}: {message}",
        _hint(status) if status else _hint(500),
        status=status,
        code=code,
        error_type=etype,
        url=url,
    )


class OpenAIClient:
    """Blocking client of one OpenAI-compatible server; safe to ``close()`` from any thread.

    ``base_url`` ends in ``/v1`` (``http://127.0.0.1:PORT/v1`` for the model
    host); ``token`` is sent as a bearer key when not empty; ``model`` is the
    default for every call. ``timeout`` bounds each wait for the server (the
    first answer of a request that loads a model can take a while).
    """

    def __init__(
        self,
        base_url: str,
        token: str = "",
        *,
        model: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.model = model
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_response_bytes = max_response_bytes
        self.max_event_bytes = max_event_bytes
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._http: httpx2.Client | None = None

    # -- lifecycle -----------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (a stream that ended early was stopped)."""
        return self._closed

    def close(self) -> None:
        """End every request and stream in progress and refuse new ones (any thread)."""
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        http = self._http
        if http is not None:
            with contextlib.suppress(Exception):
                http.close()

    def _client(self) -> httpx2.Client:
        if self._http is None:
            import httpx2

            self._http = httpx2.Client(
                timeout=httpx2.Timeout(self.timeout, connect=self.connect_timeout),
                limits=httpx2.Limits(max_keepalive_connections=0),
                verify=_ssl_context(),
                trust_env=False,  # a proxy setting must never route a loopback model call
                follow_redirects=False,
            )
        return self._http

    # -- the API -------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        """``GET /models``: the served models (``id``, and ``aliases`` on our host)."""
        data = self._json("GET", "/models").get("data")
        return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []

    def model_info(self, model: str | None = None) -> dict[str, Any]:
        """``GET /models/{id}``: on our host with ``capabilities`` (chat_template, tools, ...).

        Our host loads the model to answer, so this can take as long as a load.
        """
        return self._json("GET", "/models/" + quote(self._model(model), safe=""))

    def chat(
        self, messages: Sequence[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> ChatResult:
        """``POST /chat/completions`` without streaming; ``params`` go into the body."""
        body = self._body(model, params, messages=list(messages))
        obj = self._json("POST", "/chat/completions", body)
        choice = _first_choice(obj, self.base_url)
        message = choice.get("message")
        if not isinstance(message, dict):
            raise _unexpected(obj, self.base_url)
        return ChatResult(
            text=str(message.get("content") or ""),
            message=message,
            finish_reason=_opt_str(choice.get("finish_reason")),
            usage=_usage(obj),
            raw=obj,
        )

    def complete(self, prompt: str, *, model: str | None = None, **params: Any) -> Completion:
        """``POST /completions`` without streaming: plain text continuation of ``prompt``."""
        obj = self._json("POST", "/completions", self._body(model, params, prompt=prompt))
        choice = _first_choice(obj, self.base_url)
        return Completion(
            text=str(choice.get("text") or ""),
            finish_reason=_opt_str(choice.get("finish_reason")),
            usage=_usage(obj),
            raw=obj,
        )

    def stream_chat(
        self, messages: Sequence[dict[str, Any]], *, model: str | None = None, **params: Any
    ) -> Iterator[Delta]:
        """Stream a chat completion; ends quietly (early) when :meth:`close` is called."""
        body = self._body(model, params, messages=list(messages))
        return self._stream("/chat/completions", body, chat=True)

    def stream_complete(
        self, prompt: str, *, model: str | None = None, **params: Any
    ) -> Iterator[Delta]:
        """Stream a text completion; ends quietly (early) when :meth:`close` is called."""
        return self._stream("/completions", self._body(model, params, prompt=prompt), chat=False)

    def embeddings(self, texts: Sequence[str], *, model: str | None = None) -> list[list[float]]:
        """``POST /embeddings``: one vector per text, in the order given."""
        body = self._body(model, {}, input=list(texts))
        obj = self._json("POST", "/embeddings", body)
        data = obj.get("data")
        if not isinstance(data, list) or len(data) != len(texts):
            n = len(data) if isinstance(data, list) else 0
            raise ModelServerError(
                f"The model server returned {n} vectors for {len(texts)} texts.",
                "Check that the model is an embedding model.",
                url=self.base_url,
            )
        try:
            rows = sorted(data, key=lambda d: int(d.get("index", 0)))
            return [[float(x) for x in d["embedding"]] for d in rows]
        except (AttributeError, KeyError, TypeError, ValueError):
            raise _unexpected(obj, self.base_url) from None

    def get(self, path: str) -> dict[str, Any]:
        """``GET {base_url}{path}`` as a JSON object, for endpoints without a method here."""
        return self._json("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST {base_url}{path}`` with a JSON body, as a JSON object (no streaming)."""
        return self._json("POST", path, body)

    # -- plumbing --------------------------------------------------------------------
    def _model(self, model: str | None) -> str:
        name = model or self.model
        if not name:
            raise ModelServerError("No model named for the request.", "Choose a model.")
        return name

    def _body(self, model: str | None, params: dict[str, Any], **fields: Any) -> dict[str, Any]:
        body = {k: v for k, v in params.items() if v is not None}
        body.update(fields)
        name = model or self.model
        if name:
            body["model"] = name
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _open(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[contextlib.AbstractContextManager[httpx2.Response], list[socket.socket]]:
        """A streaming request whose sockets ``close()`` can shut down, and those sockets."""
        if self._closed:
            raise RequestCancelled("The request was stopped.")
        owned: list[socket.socket] = []

        def trace(event: str, info: dict[str, Any]) -> None:
            if event != "connection.connect_tcp.complete":
                return
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with self._lock:
                    owned.append(sock)
                    self._sockets.add(sock)
                    closed = self._closed
                if closed:
                    _shutdown(sock)

        content = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = self._headers()
        if content is not None:
            headers["Content-Type"] = "application/json"
        cm = self._client().stream(
            method,
            self.base_url + path,
            content=content,
            headers=headers,
            extensions={"trace": trace},
        )
        return cm, owned

    def _forget(self, owned: list[socket.socket]) -> None:
        with self._lock:
            self._sockets.difference_update(owned)

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx2

        url = self.base_url + path
        cm, owned = self._open(method, path, body)
        try:
            with cm as resp:
                data = self._read(resp, url)
                status = resp.status_code
        except httpx2.HTTPError as exc:
            raise self._transport_error(exc, url) from None
        finally:
            self._forget(owned)
        try:
            obj = json.loads(data) if data else None
        except ValueError:
            obj = data.decode("utf-8", "replace")
        if not 200 <= status < 300:
            raise error_from_body(status, obj, url)
        if not isinstance(obj, dict):
            raise ModelServerError(
                "The model server sent something that is not a JSON object.",
                "Check that the base URL points at an OpenAI-compatible server.",
                status=status,
                url=url,
            )
        return obj

    def _read(self, resp: httpx2.Response, url: str) -> bytes:
        declared = resp.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
            raise self._too_large(url)
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_bytes():
            size += len(chunk)
            if size > self.max_response_bytes:
                raise self._too_large(url)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, url: str) -> ModelServerError:
        mib = self.max_response_bytes / (1024 * 1024)
        return ModelServerError(
            f"The answer of the model server at {url} is larger than {mib:g} MiB.",
            "Ask for less at once (fewer texts, fewer tokens).",
            url=url,
        )

    def _transport_error(self, exc: Exception, url: str) -> DemoAIError:
        import httpx2

        if self._closed:
            return RequestCancelled("The request was stopped.")
        if isinstance(exc, httpx2.SSEError):
            return ModelServerError(
                f"The model server at {url} sent an unusable stream: {exc}",
                "Ask for a shorter answer, or check the server.",
                url=url,
            )
        if isinstance(exc, httpx2.ConnectError):
            reason = str(exc) or "connection refused"
            return ModelServerUnreachable(
                f"Cannot reach the model server at {self.base_url}: {reason}.",
                "Check that it is running and that the address is right; the model host "
                "starts again with your next request.",
                url=url,
            )
        if isinstance(exc, httpx2.TimeoutException):
            what = "connect" if isinstance(exc, httpx2.ConnectTimeout) else "answer"
            limit = self.connect_timeout if what == "connect" else self.timeout
            return ModelServerUnreachable(
                f"The model server at {self.base_url} did not {what} within {limit:g} s.",
                "It may be overloaded or stuck: try again, or restart it.",
                url=url,
            )
        return ModelServerUnreachable(
            f"The model server at {self.base_url} stopped answering "
            f"({type(exc).__name__}: {exc or 'connection closed'}).",
            "It may have crashed or been stopped; the model host starts again with your "
            "next request.",
            url=url,
        )

    def _stream(self, path: str, body: dict[str, Any], *, chat: bool) -> Iterator[Delta]:
        body = {**body, "stream": True}
        body.setdefault("stream_options", {"include_usage": True})
        return self._events(path, body, chat)

    def _events(self, path: str, body: dict[str, Any], chat: bool) -> Iterator[Delta]:
        import httpx2

        url = self.base_url + path
        if self._closed:
            return
        cm, owned = self._open("POST", path, body)
        done = False
        try:
            with cm as resp:
                if resp.status_code != 200:
                    data = self._read(resp, url)
                    try:
                        obj: Any = json.loads(data)
                    except ValueError:
                        obj = data.decode("utf-8", "replace")
                    raise error_from_body(resp.status_code, obj, url)
                events = httpx2.EventSource(resp, max_event_size=self.max_event_bytes)
                for ev in events:
                    if ev.data.strip() == "[DONE]":
                        done = True
                        break
                    delta = self._delta(ev.data, url, chat)
                    if delta is not None:
                        yield delta
        except httpx2.HTTPError as exc:
            if self._closed:
                return
            raise self._transport_error(exc, url) from None
        finally:
            self._forget(owned)
        if not done and not self._closed:
            raise ModelServerUnreachable(
                f"The model server at {self.base_url} ended the answer before it was complete.",
                "It may have crashed or been stopped; the model host starts again with your "
                "next request.",
                url=url,
            )

    @staticmethod
    def _delta(data: str, url: str, chat: bool) -> Delta | None:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ModelServerError(
                f"The model server sent an event that is not JSON: {data[:200]!r}", url=url
            ) from None
        if not isinstance(chunk, dict):
            return None
        if chunk.get("error"):
            raise error_from_body(None, chunk, url)
        text = ""
        finish = None
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if chat:
                delta = choice.get("delta")
                piece = delta.get("content") if isinstance(delta, dict) else None
            else:
                piece = choice.get("text")
            if isinstance(piece, str):
                text += piece
            finish = _opt_str(choice.get("finish_reason")) or finish
        usage = chunk.get("usage")
        usage = dict(usage) if isinstance(usage, dict) else None
        if not text and finish is None and usage is None:
            return None
        return Delta(text, finish, usage)


_SSL: list[ssl.SSLContext] = []


def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every client (building one takes ~30 ms)."""
    if not _SSL:
        import httpx2

        _SSL.append(httpx2.create_ssl_context())
    return _SSL[0]


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _usage(obj: dict[str, Any]) -> dict[str, Any]:
    usage = obj.get("usage")
    return dict(usage) if isinstance(usage, dict) else {}


def _unexpected(obj: Any, url: str) -> ModelServerError:
    return ModelServerError(
        f"Unexpected answer from the model server: {json.dumps(obj, ensure_ascii=False)[:300]}",
        "Check that the base URL points at an OpenAI-compatible server.",
        url=url,
    )


def _first_choice(obj: dict[str, Any], url: str) -> dict[str, Any]:
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _unexpected(obj, url)
    return choices[0]


__all__ = [
    "ChatResult",
    "Completion",
    "Delta",
    "ModelServerError",
    "ModelServerUnreachable",
    "OpenAIClient",
    "RequestCancelled",
    "error_from_body",
]
