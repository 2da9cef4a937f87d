"""Load on a model server: 1, 4, 8 and 16 concurrent streaming clients.

DemoAI's model host (``app.workers.host``, the one the app, ``demoai serve`` and the
Docker bundles run) serving the Gemma 3 270M Q4_K_M test fixture; each client is the
official ``openai`` async client streaming ``/v1/completions`` (64 tokens, greedy),
``--requests`` requests each, one after the other. Per level: aggregate generated
tokens per second over the level's wall time, time to first token p50 and p99,
errors, whether the requests that queued were answered in arrival order, and the
slowest ``/health`` answer while the load ran (a poller every 50 ms). Ratios are
against the 1-client level of the same run.

Then the same load against the Docker bundle's server, run natively: the bundle's own
``serve.sh`` (written by :func:`app.core.export.docker.write_server`, so the same flags:
``--parallel`` slots with continuous batching, ``--api-key-file``, ``--metrics``,
``--jinja`` with the bundle's chat template, ``--cache-ram 0``) and ``llama-server``
built once from the runtime's llama.cpp (:mod:`app.core.export.llama_tools`; minutes
the first time). ``--bundle-parallel`` sets its slots (default: the bundle's default).

With ``--llama-server PATH``, a plain ``llama-server --parallel 8`` runs the load too.
The machine's load average is printed with the figures: on a shared machine the
ratios are what to read.

    .venv/bin/python bench/serve_load.py [--levels 1,4,8,16] [--requests 2] [--threads 2]
        [--skip-host] [--skip-bundle] [--bundle-parallel N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = "Write a short story about a lighthouse keeper.\n\nThe lighthouse"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def client_run(
    client: Any, model: str, n: int, out: list[dict[str, Any]], max_tokens: int
) -> None:
    for _ in range(n):
        t0 = time.perf_counter()
        first = None
        tokens = 0
        try:
            stream = await client.completions.create(
                model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0,
                stream=True, stream_options={"include_usage": True},
            )  # fmt: skip
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].text:
                    first = time.perf_counter()
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            out.append({"start": t0, "first": first, "end": time.perf_counter(),
                        "tokens": tokens, "error": None})  # fmt: skip
        except Exception as exc:  # counted, the load goes on
            out.append({"start": t0, "first": None, "end": time.perf_counter(), "tokens": 0,
                        "error": type(exc).__name__})  # fmt: skip


def health_poller(root: str, stop: Any, worst: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(root + "/health", timeout=5) as r:
                r.read()
            worst.append(time.perf_counter() - t0)
        except OSError:
            worst.append(float("inf"))
        stop.wait(0.05)


def level(base_url: str, key: str, model: str, clients: int, n: int,
          max_tokens: int) -> dict[str, Any]:  # fmt: skip
    import threading

    from openai import AsyncOpenAI

    results: list[dict[str, Any]] = []
    stop = threading.Event()
    health: list[float] = []
    poller = threading.Thread(
        target=health_poller, args=(base_url.removesuffix("/v1"), stop, health), daemon=True
    )

    async def main() -> None:
        client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
        await asyncio.gather(
            *(client_run(client, model, n, results, max_tokens) for _ in range(clients))
        )
        await client.close()

    poller.start()
    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    stop.set()
    poller.join()
    ok = [r for r in results if r["error"] is None]
    ttft = [r["first"] - r["start"] for r in ok if r["first"] is not None]
    by_start = sorted(ok, key=lambda r: r["start"])
    firsts = [r["first"] for r in by_start if r["first"] is not None]
    return {
        "clients": clients,
        "tok_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50": pct(ttft, 0.5),
        "ttft_p99": pct(ttft, 0.99),
        "errors": len(results) - len(ok),
        "error_kinds": sorted({str(r["error"]) for r in results if r["error"] is not None}),
        "in_order": firsts == sorted(firsts),
        "health_max": max(health) if health else float("nan"),
    }


def run_levels(name: str, base_url: str, key: str, model: str, levels: list[int], n: int,
               max_tokens: int) -> None:  # fmt: skip
    level(base_url, key, model, 1, 1, max_tokens)  # warm-up (page cache, graphs): discarded
    rows = [level(base_url, key, model, c, n, max_tokens) for c in levels]
    one = rows[0]["tok_s"]
    print(f"\n{name}")
    print("clients  tok/s  x1-client  TTFT p50  TTFT p99  errors  arrival order  /health max")
    for r in rows:
        print(
            f"{r['clients']:>7}  {r['tok_s']:5.1f}  {r['tok_s'] / one:8.2f}x  "
            f"{r['ttft_p50'] * 1000:6.0f} ms  {r['ttft_p99'] * 1000:6.0f} ms  {r['errors']:>6}  "
            f"{'yes' if r['in_order'] else 'NO':>13}  {r['health_max'] * 1000:8.0f} ms"
            + (f"  ({', '.join(r['error_kinds'])})" if r["error_kinds"] else "")
        )


def bundle_server(gguf: Path, args: Any, levels: list[int]) -> None:
    """The Docker bundle's serve.sh + llama-server, natively on loopback."""
    import tempfile

    from app.core.export.docker import DEFAULT_PARALLEL, write_server
    from app.core.export.llama_tools import llama_tool

    exe = llama_tool("llama-server", log=lambda line: print(line, file=sys.stderr))
    parallel = args.bundle_parallel or DEFAULT_PARALLEL
    with tempfile.TemporaryDirectory(prefix="demoai-bundle-bench-") as tmp:
        folder = Path(tmp) / "bundle"
        folder.mkdir()
        write_server(folder, gguf, "gemma", exe, parallel=parallel, link=True)
        key = os.urandom(12).hex()
        (Path(tmp) / "key").write_text(key + "\n")
        port = 19080 + os.getpid() % 1000
        env = {**os.environ, "DEMOAI_HOST": "127.0.0.1", "DEMOAI_LISTEN_PORT": str(port),
               "DEMOAI_THREADS": str(args.threads), "DEMOAI_API_KEY_FILE": str(Path(tmp) / "key")}  # fmt: skip
        proc = subprocess.Popen(
            [str(folder / "serve.sh")], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            run_levels(f"the bundle's server (serve.sh: llama-server, {parallel} slots)",
                       f"http://127.0.0.1:{port}/v1", key, "gemma", levels, args.requests,
                       args.max_tokens)  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,4,8,16")
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER", ""))
    ap.add_argument("--skip-host", action="store_true", help="not DemoAI's model host")
    ap.add_argument("--skip-bundle", action="store_true", help="not the bundle's server")
    ap.add_argument("--bundle-parallel", type=int, default=0, help="slots (0: bundle default)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    print(f"machine load average at the start {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")

    from tests.support.models import gemma_gguf_cached

    gguf = gemma_gguf_cached()
    if not args.skip_host:
        from app.workers.host_client import HostProcess

        host = HostProcess(threads=args.threads, n_ctx=2048)
        host.start({"gemma": (gguf, "gguf")})
        try:
            run_levels("DemoAI model host", host.base_url, host.token, "gemma", levels,
                       args.requests, args.max_tokens)  # fmt: skip
        finally:
            host.stop()
    if not args.skip_bundle:
        bundle_server(gguf, args, levels)

    if args.llama_server:
        key = os.urandom(12).hex()
        port = 18080 + os.getpid() % 1000
        proc = subprocess.Popen(
            [
                args.llama_server,
                "-m",
                str(gguf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--parallel",
                "8",
                "-c",
                str(2048 * 8),
                "-t",
                str(args.threads),
                "--api-key",
                key,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            run_levels("llama-server --parallel 8", f"http://127.0.0.1:{port}/v1", key,
                       "gemma", levels, args.requests, args.max_tokens)  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(30)
    else:
        print("\n(plain llama-server --parallel 8: not run; pass --llama-server PATH)")
    print(f"\none pass per level; machine load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
