"""A killed import leaves temporaries; the next start removes them, `demoai check` never
calls them corruption, and `demoai check --repair` removes those without an owner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.support.cli import demoai

ROOT = Path(__file__).resolve().parents[2]


def _big_jsonl(path: Path, rows: int = 400_000) -> Path:
    filler = "lorem ipsum dolor sit amet " * 8
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, rows, 50_000):
            fh.write(
                "".join(
                    json.dumps({"id": i, "text": f"{i} {filler}", "n": i % 7}) + "\n"
                    for i in range(start, min(start + 50_000, rows))
                )
            )
    return path


def _temporaries(ws: Path) -> list[Path]:
    return [p for p in (ws / "datasets").rglob(".*.tmp") if p.is_dir()]


def test_killed_import_leaves_nothing_after_the_next_start(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    small = tmp_path / "small.jsonl"
    small.write_text('{"a": 1}\n{"a": 2}\n')
    assert demoai(ws, "data", "import", str(small)).returncode == 0
    first = demoai(ws, "check")
    assert first.returncode == 0, first.stderr

    big = _big_jsonl(tmp_path / "big.jsonl")
    cli = subprocess.Popen(
        [sys.executable, "-m", "app", "--workspace", str(ws), "data", "import", str(big)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        partial: list[Path] = []
        while time.monotonic() < deadline and cli.poll() is None:
            partial = [t for t in _temporaries(ws) if (t / "data.parquet").exists()]
            if partial:
                break
            time.sleep(0.05)
        assert partial, "the import finished or never wrote before it could be killed"
        # The job runs in its own session: kill the worker itself, then the CLI.
        workers = psutil.Process(cli.pid).children(recursive=True)
        assert workers
        for p in workers:
            os.kill(p.pid, signal.SIGKILL)
        cli.kill()
    finally:
        cli.kill()
        cli.wait(30)
    psutil.wait_procs(workers, timeout=10)
    left = _temporaries(ws)
    assert left and all(t.exists() for t in partial)

    r = demoai(ws, "check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 changed, 0 missing" in r.stdout
    assert "leftover" not in r.stdout  # removed when the check opened the workspace
    assert _temporaries(ws) == []
    # the killed import's dataset folder went with its temporary
    assert len([d for d in (ws / "datasets").iterdir()]) == 1
    listed = json.loads(demoai(ws, "data", "list", "--json").stdout)
    assert [d["rows"] for d in listed] == [2]


def test_check_reports_ownerless_leftovers_and_repair_removes_them(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    small = tmp_path / "small.jsonl"
    small.write_text('{"a": 1}\n')
    imported = demoai(ws, "data", "import", str(small), "--json")
    assert imported.returncode == 0, imported.stderr
    ds = json.loads(imported.stdout)["dataset_id"]
    assert demoai(ws, "check").returncode == 0
    # a leftover of an older version (no owner in its name): its owner cannot be told
    old = ws / "datasets" / ds / (".tmp-" + "0f" * 16)
    old.mkdir()
    (old / "data.parquet").write_bytes(b"\0" * 3_000_000)

    r = demoai(ws, "check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 leftover temporary file(s) (3.0 MB) from interrupted work; " in r.stdout
    assert "`demoai check --repair` removes them" in r.stdout
    assert "0 changed, 0 missing" in r.stdout and old.exists()

    r = demoai(ws, "check", "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "removed 1 leftover(s)" in r.stdout and not old.exists()
    r = demoai(ws, "check")
    assert r.returncode == 0 and "leftover" not in r.stdout
