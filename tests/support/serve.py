"""Start ``demoai serve`` in the foreground as a user would, and read its banner."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_serve(
    ws: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> tuple[subprocess.Popen[str], str, str]:
    """``demoai --workspace WS serve ARGS...``: (the process, its banner and warnings, its
    base URL ending in ``/v1``). The caller stops the process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--workspace", str(ws), "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl+C" in line or not line:
                break
        out = "".join(lines)
        url = next(x for x in out.split() if x.startswith("http://") and x.endswith("/v1"))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, out, url
