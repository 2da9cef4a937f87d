"""MCP tools: connect to a user-configured MCP server over stdio and expose its tools.

The ``mcp`` client is async; each connection runs its own event loop in a
dedicated thread. One long-lived task there enters ``stdio_client`` and
``ClientSession`` (their cancel scopes must be entered and left by the same
task) and serves calls sent from the agent thread through a queue.

Tools are named ``<server>.<tool>`` and are side-effecting unless the server
marks them ``readOnlyHint`` (and not ``destructiveHint``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from app.core.agents.spec import McpServerConfig
from app.core.agents.tools import Tool, ToolError
from app.core.errors import ConfigError, DemoAIError

_Job = tuple[Callable[[Any], Awaitable[Any]], "concurrent.futures.Future[Any]"]


def _attr(obj: Any, *names: str) -> Any:
    """An attribute under its mcp 2.x (snake_case) or 1.x (camelCase) name."""
    for n in names:
        value = getattr(obj, n, None)
        if value is not None:
            return value
    return None


class McpError(DemoAIError):
    """An MCP server could not be started or failed."""


class McpConnection:
    """A running MCP server and its client session (use as a context manager)."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        self._tools: list[Any] = []

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> McpConnection:
        try:
            import mcp  # noqa: F401
        except ImportError:
            raise ConfigError(
                "MCP servers need the 'mcp' package.", "Install it: pip install mcp"
            ) from None
        self._thread = threading.Thread(
            target=self._thread_main, name=f"mcp-{self.config.name}", daemon=True
        )
        self._thread.start()
        try:
            self._tools = self._ready.result(timeout=self.config.timeout_s)
        except concurrent.futures.TimeoutError:
            self.close()
            raise McpError(
                f"The MCP server {self.config.name!r} did not start within "
                f"{self.config.timeout_s:g} s."
            ) from None
        except Exception as exc:
            self.close()
            raise McpError(
                f"The MCP server {self.config.name!r} could not be started: "
                f"{type(exc).__name__}: {exc}",
                f"Check its command: {self.config.command} {' '.join(self.config.args)}",
            ) from exc
        return self

    def __enter__(self) -> McpConnection:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the session and the server process; wait for the thread."""
        loop, queue = self._loop, self._queue
        if loop is not None and queue is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
        finally:
            loop.close()

    async def _main(self) -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        self._queue = asyncio.Queue()
        cfg = self.config
        params = StdioServerParameters(
            command=cfg.command,
            args=list(cfg.args),
            env={**os.environ, **cfg.env} if cfg.env else None,
            cwd=cfg.cwd,
        )
        with open(os.devnull, "w") as errlog:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                listed = await session.list_tools()
                self._ready.set_result(list(listed.tools))
                while True:
                    job = await self._queue.get()
                    if job is None:
                        break
                    fn, fut = job
                    try:
                        fut.set_result(await fn(session))
                    except Exception as exc:
                        fut.set_exception(exc)

    def _submit(self, fn: Callable[[Any], Awaitable[Any]], timeout: float) -> Any:
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or self._thread is None or not self._thread.is_alive():
            raise McpError(f"The MCP server {self.config.name!r} is not running.")
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        loop.call_soon_threadsafe(queue.put_nowait, (fn, fut))
        try:
            return fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise ToolError(
                f"The MCP server {self.config.name!r} did not answer within {timeout:g} s."
            ) from None

    # -- tools -------------------------------------------------------------------------
    def call(self, tool: str, arguments: dict[str, Any]) -> str:
        """Call a tool of this server; its text content, or ToolError if it reports an error."""

        async def fn(session: Any) -> Any:
            return await session.call_tool(tool, arguments)

        try:
            result = self._submit(fn, self.config.timeout_s)
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(f"MCP tool {tool!r} failed: {type(exc).__name__}: {exc}") from None
        texts = []
        for item in getattr(result, "content", None) or []:
            text = getattr(item, "text", None)
            texts.append(text if isinstance(text, str) else f"[{getattr(item, 'type', 'content')}]")
        out = "\n".join(texts)
        structured = _attr(result, "structured_content", "structuredContent")
        if not out and structured is not None:
            import json

            out = json.dumps(structured, ensure_ascii=False)
        if _attr(result, "is_error", "isError"):
            raise ToolError(out or f"MCP tool {tool!r} reported an error.")
        return out

    def tools(self) -> list[Tool]:
        """The server's tools as :class:`Tool` objects named ``<server>.<tool>``."""
        out = []
        for t in self._tools:
            ann = getattr(t, "annotations", None)
            read_only = bool(_attr(ann, "read_only_hint", "readOnlyHint"))
            name = str(t.name)
            schema = _attr(t, "input_schema", "inputSchema") or {"type": "object", "properties": {}}

            def fn(args: dict[str, Any], _name: str = name) -> str:
                return self.call(_name, args)

            out.append(
                Tool(
                    name=f"{self.config.name}.{name}",
                    description=str(getattr(t, "description", "") or ""),
                    parameters=dict(schema),
                    fn=fn,
                    side_effect=not read_only,
                    source=f"mcp:{self.config.name}",
                )
            )
        return out
