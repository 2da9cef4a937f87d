"""Bounded memory: statistics of a 4 GB safetensors model in a worker stay far under 1 GB RSS."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

from tests.support.cli import ROOT

GB = 1024**3


def _sparse_safetensors(path: Path, n_tensors: int, rows: int, cols: int) -> int:
    """A safetensors file of ``n_tensors`` float32 (rows, cols) tensors, data left as a hole.

    The holes read as zeros, so the file costs no disk and no write time, yet every byte of
    it is mapped and read like any other.
    """
    header: dict[str, object] = {}
    size = rows * cols * 4
    for i in range(n_tensors):
        header[f"model.layers.{i}.mlp.up_proj.weight"] = {
            "dtype": "F32",
            "shape": [rows, cols],
            "data_offsets": [i * size, (i + 1) * size],
        }
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + n_tensors * size)
    return n_tensors * size


def test_stats_of_a_4_gb_model_keep_the_worker_under_1_gb(tmp_path: Path) -> None:
    model = tmp_path / "big.safetensors"
    nbytes = _sparse_safetensors(model, n_tensors=32, rows=8192, cols=4096)
    assert nbytes == 4 * GB
    # The CLI starts the models.inspect job in a worker process and waits for it. A wrapper
    # process runs it and reports the largest peak RSS among its reaped descendants (the
    # worker is reaped by the CLI, whose counts pass up when the CLI is reaped).
    code = (
        "import resource, subprocess, sys;"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "sys.stderr.write(r.stderr[-3000:]);"
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    cli = [sys.executable, "-m", "app", "--workspace", str(tmp_path / "ws")]
    args = [*cli, "models", "inspect", str(model), "--stats", "--json"]
    r = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        check=False,
    )
    rc, max_rss_kb = (int(v) for v in r.stdout.split())
    assert rc == 0, r.stderr
    assert max_rss_kb * 1024 < 1 * GB, f"peak RSS {max_rss_kb / 1024:.0f} MB"
    # the job did read it all: 32 tensors of 32 Mi zeros
    reports = list((tmp_path / "ws" / "runs").glob("*/inspect.json"))
    assert len(reports) == 1
    tensors = json.loads(reports[0].read_text())["stats"]["tensors"]
    assert len(tensors) == 32
    assert all(t["n"] == 8192 * 4096 and t["l2"] == 0.0 and t["near_zero"] == 1.0 for t in tensors)
