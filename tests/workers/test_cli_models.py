"""``demoai models ...`` run as real processes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tests.support.cli import demoai


def test_import_list_show_rm(tmp_path: Path, tiny_llama_dir: Path, gemma_gguf: Path) -> None:
    ws = tmp_path / "ws"
    r = demoai(ws, "models", "list", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []

    r = demoai(ws, "models", "import", str(gemma_gguf), "--reference", "--name", "gemma", "--json")
    assert r.returncode == 0, r.stderr
    gemma = json.loads(r.stdout)
    assert gemma["architecture"] == "gemma3" and gemma["quantization"] == "Q4_K_M"
    assert gemma["owned"] is False and gemma["context_length"] == 32768
    assert gemma["sha256"] == hashlib.sha256(gemma_gguf.read_bytes()).hexdigest()

    r = demoai(ws, "models", "import", str(tiny_llama_dir), "--json")
    assert r.returncode == 0, r.stderr
    tiny = json.loads(r.stdout)
    assert tiny["owned"] is True and tiny["format"] == "hf"
    assert Path(tiny["path"]).is_relative_to(ws / "models")

    listed = json.loads(demoai(ws, "models", "list", "--json").stdout)
    assert {m["id"] for m in listed} == {gemma["id"], tiny["id"]}
    assert [
        m["id"]
        for m in json.loads(demoai(ws, "models", "list", "--format", "gguf", "--json").stdout)
    ] == [gemma["id"]]

    r = demoai(ws, "models", "show", "gemma", "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["id"] == gemma["id"]
    assert shown["files"] == [
        {"relpath": gemma_gguf.name, "size": gemma_gguf.stat().st_size, "sha256": gemma["sha256"]}
    ]
    assert shown["lineage"] == {"parents": [], "children": []}
    r = demoai(ws, "models", "show", tiny["id"])
    assert r.returncode == 0 and "llama" in r.stdout and "model.safetensors" in r.stdout

    r = demoai(ws, "models", "rm", tiny["id"], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bytes_freed"] == tiny["size_bytes"]
    assert not Path(tiny["path"]).exists() and tiny_llama_dir.exists()
    r = demoai(ws, "models", "rm", gemma["id"])
    assert r.returncode == 0, r.stderr
    assert "freed 0 B" in r.stdout and gemma_gguf.exists()

    r = demoai(ws, "models", "show", "gemma")
    assert r.returncode == 2 and "No model" in r.stderr and "Traceback" not in r.stderr


def test_refusals_are_one_clear_error(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    pkl = tmp_path / "pkl"
    pkl.mkdir()
    (pkl / "config.json").write_text("{}")
    (pkl / "pytorch_model.bin").write_bytes(b"\x80\x04junk")
    r = demoai(ws, "models", "import", str(pkl))
    assert r.returncode == 1 and "pickle" in r.stderr and "--trust-pickle" in r.stderr
    assert "Traceback" not in r.stderr
    r = demoai(ws, "models", "import", str(pkl), "--trust-pickle", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["extra"]["weights_format"] == "pickle"

    r = demoai(ws, "models", "pull", "google/gemma-3-270m")
    assert r.returncode == 1 and "Network is off" in r.stderr
    r = demoai(ws, "models", "pull", "not a repo")
    assert r.returncode == 2 and "not a Hub model id" in r.stderr
    assert json.loads(demoai(ws, "jobs", "list", "--json").stdout) == []


def test_discover_json(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    d = tmp_path / "models" / "tiny"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"w": np.ones((2, 2), np.float32)}, str(d / "model.safetensors"))
    r = demoai(ws, "models", "discover", "--no-defaults", str(tmp_path / "models"), "--json")
    assert r.returncode == 0, r.stderr
    [c] = json.loads(r.stdout)
    assert c["path"] == str(d) and c["format"] == "hf" and not c["already_registered"]
    assert demoai(ws, "models", "import", str(d), "--reference").returncode == 0
    r = demoai(ws, "models", "discover", "--no-defaults", str(tmp_path / "models"), "--json")
    assert json.loads(r.stdout)[0]["already_registered"] is True


def test_import_job_in_a_worker(workspace: object, tiny_llama_dir: Path) -> None:
    from app.core.jobs.store import JobState
    from app.core.models import ModelRegistry
    from app.workers.supervisor import Supervisor

    sup = Supervisor(workspace)
    job = sup.jobs.submit("models.import", {"path": str(tiny_llama_dir), "copy": True})
    sup.start(job.id)
    final = sup.wait(job.id, timeout=120)
    assert final.state == JobState.SUCCEEDED, final.error
    rec = ModelRegistry(workspace).get(final.result["model_id"])
    assert rec.owned and rec.format == "hf" and rec.path.is_dir()

    bad = sup.jobs.submit("models.import", {"path": str(tiny_llama_dir / "config.json")})
    sup.start(bad.id)
    failed = sup.wait(bad.id, timeout=120)
    assert failed.state == JobState.FAILED and "not a GGUF file" in (failed.error or "")
