"""Run the ``demoai`` command line in a child process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def demoai(
    ws: Path, *args: str, timeout: float = 120, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m app --workspace WS ARGS...`` from the repo root; stdout and stderr as text.

    ``env`` adds to (or overrides) this process's environment. Stdin is empty, so a command
    that would ask on a terminal sees none.
    """
    return subprocess.run(
        [sys.executable, "-m", "app", "--workspace", str(ws), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )
