"""Training from the libraries: a library model, a dataset version, the adapter registered back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from app.core.data.store import DatasetStore
from app.core.models.registry import ModelRegistry
from app.core.workspace import Workspace


def test_train_from_library_registers_adapter_with_lineage(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    ws = Workspace.open(tmp_path / "ws")
    base = ModelRegistry(ws).import_hf_folder(tiny_llama_dir, copy=False, name="tiny-base")
    rows = [{"prompt": f"Q{i}: what is {i}+{i}?", "completion": f" {2 * i}"} for i in range(12)]
    ds = DatasetStore(ws).create_dataset("sums", pa.Table.from_pylist(rows))
    ws.close()
    r = subprocess.run(
        [sys.executable, "-m", "app", "--workspace", str(tmp_path / "ws"), "train",
         "--base", "tiny-base", "--dataset", ds.dataset_id, "--preset", "quick_test",
         "--steps", "3", "--name", "sums-lora", "--device", "cpu"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    ws = Workspace.open(tmp_path / "ws")
    reg = ModelRegistry(ws)
    adapter = reg.get("sums-lora")
    assert adapter.format == "lora"
    lin = reg.lineage(adapter.id)
    assert [(e.model_id, e.relation) for e in lin.parents] == [(base.id, "fine-tuned-from")]
    assert lin.parents[0].details["dataset_version"] == f"{ds.dataset_id}@{ds.hash}"
    manifest = json.loads((adapter.path.parent / "manifest.json").read_text())
    assert manifest["config"]["base_model_id"] == base.id
    ws.close()


def test_gguf_base_is_refused_before_any_job(tmp_path: Path, gemma_gguf: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    ModelRegistry(ws).import_gguf(gemma_gguf, copy=False, name="g")
    ds = DatasetStore(ws).create_dataset(
        "d", pa.Table.from_pylist([{"prompt": "a", "completion": "b"}])
    )
    ws.close()
    r = subprocess.run(
        [sys.executable, "-m", "app", "--workspace", str(tmp_path / "ws"), "train",
         "--base", "g", "--dataset", ds.dataset_id, "--steps", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert "training needs Hugging Face weights" in r.stderr
    out = subprocess.run(
        [sys.executable, "-m", "app", "--workspace", str(tmp_path / "ws"), "jobs", "list", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert json.loads(out.stdout) == []
