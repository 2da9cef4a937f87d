"""``demoai serve``: the OpenAI-compatible model host in the foreground."""

from __future__ import annotations

import argparse
import secrets
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible HTTP API",
        description="Serve models over an OpenAI-compatible HTTP API (/v1/chat/completions, "
        "/v1/completions, /v1/embeddings, /v1/models) until Ctrl+C.",
    )
    p.add_argument(
        "--model", action="append", required=True, metavar="ID|[NAME=]PATH[:FORMAT]",
        help="a library model (id or name), a GGUF file, an HF model folder or a LoRA "
        "adapter folder; repeatable",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free one)")
    p.add_argument(
        "--api-key",
        help="bearer token clients must send (visible to other users in ps: prefer "
        "$DEMOAI_HOST_API_KEY or --api-key-file; default: a random one)",
    )
    p.add_argument("--api-key-file", help="read the bearer token from the first line of this file")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (needs a key you chose: $DEMOAI_HOST_API_KEY, --api-key-file or --api-key)",
    )
    p.add_argument(
        "--template",
        help="chat template preset: chatml, hermes (ChatML with tools), gemma, llama3, plain",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: the workspace setting)")
    p.add_argument("--n-ctx", type=int, help="context size (GGUF default 4096)")
    p.add_argument("--request-log", help="append one JSON line per request to this file")
    p.set_defaults(func=cmd_serve)


def _resolve_model(ws: Any, spec: str) -> tuple[str, str | None]:
    """A library model id or name becomes ``ID=PATH:FORMAT`` with its name as an alias
    (clients may ask for ``gemma`` as for ``gemma-a5fd3b62``); paths pass through."""
    import os

    if "=" in spec or os.path.exists(spec.rsplit(":", 1)[0]) or os.path.exists(spec):
        return spec, None
    from app.core.models.registry import ModelRegistry

    rec = ModelRegistry(ws).get(spec)  # NotFoundError names what to do
    alias = rec.name if rec.name and rec.name != rec.id else None
    return f"{rec.id}={rec.path}:{rec.format}", (f"{alias}={rec.id}" if alias else None)


def _api_key(args: argparse.Namespace) -> tuple[str, str]:
    """(key, where it came from): --api-key, --api-key-file, the environment, or generated."""
    import os
    import sys
    from pathlib import Path

    from app.workers import host

    if args.api_key:
        print(
            "demoai serve: warning: --api-key is visible to other users of this machine "
            f"(ps, /proc); set {host.API_KEY_ENV} or use --api-key-file instead.",
            file=sys.stderr,
        )
        return args.api_key, "--api-key"
    if args.api_key_file:
        return host.read_api_key_file(Path(args.api_key_file)), "--api-key-file"
    if os.environ.get(host.API_KEY_ENV):
        return os.environ[host.API_KEY_ENV], host.API_KEY_ENV
    return secrets.token_urlsafe(24), "generated"


def cmd_serve(args: argparse.Namespace) -> int:
    from app.cli.common import open_workspace
    from app.workers import host

    ws = open_workspace(args)
    threads = args.threads if args.threads is not None else ws.settings.threads
    resolved = [_resolve_model(ws, spec) for spec in args.model]
    specs = [spec for spec, _ in resolved]
    if args.request_log is None:
        args.request_log = str(ws.root / "logs" / "requests.jsonl")
    ws.close()
    api_key, source = _api_key(args)
    generated = source == "generated"
    argv = ["--host", args.host, "--port", str(args.port), "--threads", str(threads)]
    for spec in specs:
        argv += ["--model", spec]
    for _, alias in resolved:
        if alias is not None:
            argv += ["--alias", alias]
    for flag, value in (
        ("--template", args.template),
        ("--n-ctx", args.n_ctx),
        ("--request-log", args.request_log),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if args.allow_remote:
        argv.append("--allow-remote")
    ns = host.build_parser().parse_args(argv)
    # A remote bind needs a key the user chose: config_from_args refuses it otherwise.
    ns.api_key = api_key if host.is_loopback(args.host) or not generated else None
    config = host.config_from_args(ns)

    def banner(server: host.HostServer) -> None:
        shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        if ":" in shown_host:
            shown_host = f"[{shown_host}]"
        url = f"http://{shown_host}:{server.port}/v1"
        first = next(iter(config.models))
        print(f"DemoAI model host listening on {url}")
        names = [
            s.name + (f" (also {', '.join(s.aliases)})" if s.aliases else "")
            for s in config.models.values()
        ]
        print(f"Models:  {', '.join(names)} (loaded on first request)")
        # A key from the environment or a file is not echoed into terminals and logs.
        shown_key = api_key if source in ("generated", "--api-key") else "$" + host.API_KEY_ENV
        if source == "--api-key-file":
            shown_key = f"$(cat {args.api_key_file})"
        print(f"API key: {api_key if shown_key == api_key else f'(from {source})'}")
        print("\ncurl:")
        print(
            f"  curl {url}/chat/completions -H 'Authorization: Bearer {shown_key}' "
            "-H 'Content-Type: application/json' "
            f'-d \'{{"model": "{first}", "messages": [{{"role": "user", "content": "Hello"}}]}}\''
        )
        print("\nPython:")
        print("  from openai import OpenAI")
        py_key = api_key if shown_key == api_key else "<your API key>"
        print(f'  client = OpenAI(base_url="{url}", api_key="{py_key}")')
        print(
            f'  r = client.chat.completions.create(model="{first}", '
            'messages=[{"role": "user", "content": "Hello"}])'
        )
        print("  print(r.choices[0].message.content)")
        print("\nCtrl+C stops the server.", flush=True)

    return host.serve(config, on_ready=banner)
