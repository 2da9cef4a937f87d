"""``demoai export package|list`` and ``demoai models import`` of a package, as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _demoai(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", "--workspace", str(ws), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def test_cli_package_round_trip_and_list(tmp_path: Path, tiny_llama_dir: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    out = _demoai(a, "models", "import", str(tiny_llama_dir), "--json")
    assert out.returncode == 0, out.stderr
    model_id = json.loads(out.stdout)["id"]
    pkg = tmp_path / "tiny.tar.gz"
    out = _demoai(a, "export", "package", model_id, "--out", str(pkg))
    assert out.returncode == 0, out.stderr
    out = _demoai(a, "export", "list", "--json")
    rows = json.loads(out.stdout)
    assert rows[0]["kind"] == "package" and rows[0]["state"] == "succeeded"
    out = _demoai(b, "models", "import", str(pkg), "--json")
    assert out.returncode == 0, out.stderr
    assert (
        json.loads(out.stdout)["sha256"]
        == json.loads(_demoai(a, "models", "show", model_id, "--json").stdout)["sha256"]
    )


def test_cli_export_gguf_rejects_unknown_quant(tmp_path: Path) -> None:
    out = _demoai(tmp_path / "ws", "export", "gguf", "nothing", "--quant", "Q9_9")
    assert out.returncode == 2 and "Unknown GGUF type" in out.stderr
