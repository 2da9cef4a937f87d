"""``demoai export package|list`` and ``demoai models import`` of a package, as subprocesses."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from tests.support.cli import demoai

_demoai = partial(demoai, timeout=300)  # packaging and importing a model take a while


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
