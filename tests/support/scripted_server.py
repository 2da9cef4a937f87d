"""A scripted OpenAI-compatible chat server, run as a real child process.

``python -m tests.support.scripted_server --script S.json --ready-file R.json``
listens on 127.0.0.1 (port 0), needs ``Authorization: Bearer $SCRIPTED_TOKEN``
and answers ``POST /v1/chat/completions`` with the script item whose index is
the number of assistant messages in the request (so a replayed conversation
gets the same answers). A script may also be an object ``{"by_input": {TEXT:
[items]}, "default": [items], "delay_s": S}``: the list whose TEXT occurs in the
first user message (one script per task of an agent eval), each answer after S s.
Items are strings, or objects sent as their JSON text;
an object with ``tool_calls`` (``[{"name": ..., "arguments": {...}}]``) is sent
as a native tool-call message instead. With ``--tool-format F`` the server
answers ``GET /v1/models/{id}`` with ``capabilities.tools = F`` (a model whose
template has native tool calling); without, that route is 404.
Every request body is appended to ``--log`` as a JSON line.

:class:`ScriptedServer` starts and stops it from a test.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        if not hmac.compare_digest(auth.encode(), f"Bearer {self.server.token}".encode()):
            self._send(401, {"error": {"message": "bad token", "type": "auth", "code": None}})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
            return
        name = self.path.rstrip("/").removeprefix("/v1/models/")
        if self.server.tool_format and name and "/" not in name:
            caps = {"tools": self.server.tool_format}
            self._send(200, {"id": name, "object": "model", "capabilities": caps})
            return
        self._send(404, {"error": {"message": "no route", "type": "x", "code": None}})

    def do_POST(self) -> None:
        if not self._authorised():
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": "no route", "type": "x", "code": None}})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        with open(self.server.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(body) + "\n")
        turn = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        script = self.server.script
        if isinstance(script, dict):  # {"by_input": {TEXT: [...]}, "default": [...], "delay_s": S}
            time.sleep(float(script.get("delay_s") or 0))
            first = next((m for m in body.get("messages", []) if m.get("role") == "user"), {})
            user = str(first.get("content") or "")
            by_input = script.get("by_input") or {}
            script = next((v for k, v in by_input.items() if k in user), script.get("default", []))
        item = script[turn] if turn < len(script) else {"final": "(script exhausted)"}
        message: dict[str, Any]
        if isinstance(item, dict) and "tool_calls" in item:
            calls = [
                {"id": f"call_{turn}_{i}", "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]
                              if isinstance(c["arguments"], str) else json.dumps(c["arguments"])}}
                for i, c in enumerate(item["tool_calls"])
            ]  # fmt: skip
            message = {"role": "assistant", "content": item.get("content"), "tool_calls": calls}
        else:
            text = item if isinstance(item, str) else json.dumps(item)
            message = {"role": "assistant", "content": text}
        self._send(
            200,
            {
                "id": f"scripted-{turn}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or "scripted",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if "tool_calls" in message else "stop",
                    }
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            },
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    script: list[Any]
    token: str
    log: str
    tool_format: str | None


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--script", required=True)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--tool-format")
    args = p.parse_args()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.script = json.loads(Path(args.script).read_text(encoding="utf-8"))
    server.token = os.environ["SCRIPTED_TOKEN"]
    server.log = args.log
    server.tool_format = args.tool_format
    tmp = args.ready_file + ".tmp"
    Path(tmp).write_text(json.dumps({"port": server.server_address[1], "pid": os.getpid()}))
    os.replace(tmp, args.ready_file)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    return 0


class ScriptedServer:
    """The scripted server as a child process: ``base_url``, ``token``, ``requests()``."""

    def __init__(
        self,
        script: list[Any] | dict[str, Any],
        token: str = "scripted-token",
        tool_format: str | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="scripted-"))
        (self.dir / "script.json").write_text(json.dumps(script), encoding="utf-8")
        self.token = token
        self.tool_format = tool_format
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ScriptedServer:
        ready = self.dir / "ready.json"
        env = {**os.environ, "SCRIPTED_TOKEN": self.token}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.scripted_server",
             "--script", str(self.dir / "script.json"), "--ready-file", str(ready),
             "--log", str(self.dir / "requests.jsonl"),
             *(["--tool-format", self.tool_format] if self.tool_format else [])],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scripted server exited with {self.proc.returncode}")
            if ready.is_file():
                self.port = int(json.loads(ready.read_text())["port"])
                return self
            time.sleep(0.02)
        raise RuntimeError("scripted server did not start")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self) -> list[dict[str, Any]]:
        log = self.dir / "requests.jsonl"
        if not log.is_file():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
