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
    p.add_argument("--api-key", help="bearer token clients must send (default: a random one)")
    p.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host (needs --api-key)"
    )
    p.add_argument(
        "--template",
        help="chat template preset: chatml, hermes (ChatML with tools), gemma, llama3, plain",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: the workspace setting)")
    p.add_argument("--n-ctx", type=int, help="context size (GGUF default 4096)")
    p.add_argument("--request-log", help="append one JSON line per request to this file")
    p.set_defaults(func=cmd_serve)


def _resolve_model(ws: Any, spec: str) -> str:
    """A library model id or name becomes ``ID=PATH:FORMAT``; paths pass through."""
    import os

    if "=" in spec or os.path.exists(spec.rsplit(":", 1)[0]) or os.path.exists(spec):
        return spec
    from app.core.models.registry import ModelRegistry

    rec = ModelRegistry(ws).get(spec)  # NotFoundError names what to do
    return f"{rec.id}={rec.path}:{rec.format}"


def cmd_serve(args: argparse.Namespace) -> int:
    from app.cli.common import open_workspace
    from app.workers import host

    ws = open_workspace(args)
    threads = args.threads if args.threads is not None else ws.settings.threads
    specs = [_resolve_model(ws, spec) for spec in args.model]
    if args.request_log is None:
        args.request_log = str(ws.root / "logs" / "requests.jsonl")
    ws.close()
    generated = args.api_key is None
    api_key = args.api_key or secrets.token_urlsafe(24)
    argv = ["--host", args.host, "--port", str(args.port), "--threads", str(threads)]
    for spec in specs:
        argv += ["--model", spec]
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
        print(f"Models:  {', '.join(config.models)} (loaded on first request)")
        print(f"API key: {api_key}")
        print("\ncurl:")
        print(
            f"  curl {url}/chat/completions -H 'Authorization: Bearer {api_key}' "
            "-H 'Content-Type: application/json' "
            f'-d \'{{"model": "{first}", "messages": [{{"role": "user", "content": "Hello"}}]}}\''
        )
        print("\nPython:")
        print("  from openai import OpenAI")
        print(f'  client = OpenAI(base_url="{url}", api_key="{api_key}")')
        print(
            f'  r = client.chat.completions.create(model="{first}", '
            'messages=[{"role": "user", "content": "Hello"}])'
        )
        print("  print(r.choices[0].message.content)")
        print("\nCtrl+C stops the server.", flush=True)

    return host.serve(config, on_ready=banner)
