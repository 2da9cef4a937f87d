"""The model registry: imports (copy, reference), safety refusals, removal and lineage."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from app.core.errors import DemoAIError, NotFoundError
from app.core.models import ModelRegistry
from app.core.models.metadata import InvalidModelError
from app.core.models.registry import DependantsError, folder_sha256
from app.core.models.safety import UnsafeWeightsError


def _state(ws: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of the model tables and the entries of models/ (to prove nothing changed)."""
    rows = ws.db.query("SELECT * FROM models") + ws.db.query("SELECT * FROM model_files")
    return rows, sorted(p.name for p in ws.models_dir.iterdir())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiny_folder(dest: Path, *, weights: str = "safetensors") -> Path:
    dest.mkdir(parents=True)
    (dest / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if weights == "safetensors":
        save_file({"w": np.ones((4, 4), np.float32)}, str(dest / "model.safetensors"))
    elif weights == "pickle":
        (dest / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return dest


def test_gemma_gguf_import_reference(workspace: Any, gemma_gguf: Path) -> None:
    reg = ModelRegistry(workspace)
    rec = reg.import_gguf(gemma_gguf, copy=False)
    assert rec.architecture == "gemma3"
    assert rec.quantization == "Q4_K_M"
    assert 260_000_000 < (rec.parameters or 0) < 275_000_000
    assert rec.context_length == 32768
    assert rec.has_chat_template is False and rec.chat_template is None
    assert rec.sha256 == _sha(gemma_gguf)
    assert rec.size_bytes == gemma_gguf.stat().st_size
    assert rec.owned is False and rec.path == gemma_gguf.absolute()
    again = reg.get(rec.id)
    assert again == rec
    assert reg.get(rec.id[:10]).id == rec.id
    assert reg.get(rec.name).id == rec.id
    assert [f.sha256 for f in reg.files(rec.id)] == [rec.sha256]
    # Removing a referenced model frees nothing and leaves the file on disk.
    res = reg.remove(rec.id)
    assert res.bytes_freed == 0 and res.kept_path == str(gemma_gguf.absolute())
    assert gemma_gguf.exists()
    with pytest.raises(NotFoundError):
        reg.get(rec.id)


def test_hf_folder_copy_and_reference(workspace: Any, tiny_llama_dir: Path) -> None:
    reg = ModelRegistry(workspace)
    copied = reg.import_hf_folder(tiny_llama_dir, copy=True)
    ref = reg.import_hf_folder(tiny_llama_dir, copy=False, name="tiny ref")
    assert copied.owned and not ref.owned
    assert copied.path == workspace.models_dir / copied.id
    assert ref.path == tiny_llama_dir.absolute()
    assert copied.sha256 == ref.sha256 and copied.id != ref.id
    src_files = sorted(p.name for p in tiny_llama_dir.iterdir() if p.is_file())
    assert sorted(p.name for p in copied.path.iterdir()) == src_files
    for f in reg.files(copied.id):
        assert f.sha256 == _sha(tiny_llama_dir / f.relpath) == _sha(copied.path / f.relpath)
    assert copied.sha256 == folder_sha256(reg.files(copied.id))
    assert copied.format == "hf" and copied.architecture == "llama"
    assert copied.has_chat_template
    assert copied.size_bytes == sum((tiny_llama_dir / n).stat().st_size for n in src_files)
    assert {m.id for m in reg.list()} == {copied.id, ref.id}
    assert [m.id for m in reg.list("tiny ref")] == [ref.id]
    assert reg.list(format="gguf") == []
    # Removing the owned copy frees its bytes; the source folder is untouched.
    res = reg.remove(copied.id)
    assert res.bytes_freed == copied.size_bytes
    assert not copied.path.exists()
    assert sorted(p.name for p in tiny_llama_dir.iterdir() if p.is_file()) == src_files
    assert [m.id for m in reg.list()] == [ref.id]
    assert not [p for p in workspace.models_dir.iterdir()]


def test_adapter_import_and_lineage(workspace: Any, tmp_path: Path, tiny_llama_dir: Path) -> None:
    reg = ModelRegistry(workspace)
    base = reg.import_hf_folder(tiny_llama_dir, copy=False)
    ad = tmp_path / "adapter"
    ad.mkdir()
    save_file({"a": np.zeros((2, 3), np.float32)}, str(ad / "adapter_model.safetensors"))
    (ad / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(tiny_llama_dir)})
    )
    adapter = reg.import_hf_folder(ad, copy=True)
    assert adapter.format == "lora" and adapter.parameters == 6
    assert adapter.extra["base_model"] == str(tiny_llama_dir)
    reg.add_lineage(adapter.id, base.id, "adapter-of", {"r": 8})
    lin = reg.lineage(adapter.id)
    assert [(e.model_id, e.relation, e.details) for e in lin.parents] == [
        (base.id, "adapter-of", {"r": 8})
    ]
    assert [e.model_id for e in reg.lineage(base.id).children] == [adapter.id]
    assert reg.dependants(base.id) == [adapter.id]
    with pytest.raises(DemoAIError):
        reg.add_lineage(adapter.id, base.id, "grown-from")
    with pytest.raises(DemoAIError):
        reg.add_lineage(base.id, base.id, "merged-from")

    # Removing a parent with dependants is refused without force; nothing changes.
    before = _state(workspace)
    with pytest.raises(DependantsError, match=adapter.id):
        reg.remove(base.id)
    assert _state(workspace) == before
    res = reg.remove(base.id, force=True)
    assert res.dependants == [adapter.id]
    parents = reg.lineage(adapter.id).parents
    assert [(e.model_id, e.name) for e in parents] == [(base.id, None)]  # shown as removed
    assert tiny_llama_dir.exists()


def test_register_derived_moves_job_output(workspace: Any, tmp_path: Path) -> None:
    reg = ModelRegistry(workspace)
    parent = reg.import_hf_folder(_tiny_folder(tmp_path / "base"), copy=True)
    out = _tiny_folder(workspace.models_dir / ".job-output")
    child = reg.register_derived(
        out, "hf", [(parent.id, "fine-tuned-from", {"job": "j1"})], name="tuned"
    )
    assert child.source_kind == "derived" and child.owned
    assert child.path == workspace.models_dir / child.id and not out.exists()
    assert reg.lineage(child.id).parents[0].model_id == parent.id
    assert reg.lineage(child.id).parents[0].details == {"job": "j1"}
    with pytest.raises(NotFoundError):
        reg.register_derived(_tiny_folder(tmp_path / "x"), "hf", [("nope", "merged-from", None)])


def test_truncated_gguf_registers_nothing(workspace: Any, gemma_gguf: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(workspace)
    bad = tmp_path / "bad.gguf"
    with open(gemma_gguf, "rb") as fh:
        bad.write_bytes(fh.read(1 << 20))
    before = _state(workspace)
    for copy in (True, False):
        with pytest.raises(InvalidModelError, match="not a valid GGUF file"):
            reg.import_gguf(bad, copy=copy)
    assert _state(workspace) == before


def test_folder_without_weights(workspace: Any, tmp_path: Path) -> None:
    d = _tiny_folder(tmp_path / "empty", weights="none")
    before = _state(workspace)
    with pytest.raises(DemoAIError, match="no model weights"):
        ModelRegistry(workspace).import_hf_folder(d, copy=True)
    assert _state(workspace) == before


def test_pickle_only_folder(workspace: Any, tmp_path: Path) -> None:
    reg = ModelRegistry(workspace)
    d = _tiny_folder(tmp_path / "pkl", weights="pickle")
    before = _state(workspace)
    with pytest.raises(UnsafeWeightsError) as exc:
        reg.import_hf_folder(d, copy=True)
    assert "can run arbitrary code" in exc.value.message
    assert exc.value.hint and "safetensors" in exc.value.hint
    assert _state(workspace) == before
    rec = reg.import_hf_folder(d, copy=True, trust_pickle=True)
    assert rec.extra["weights_format"] == "pickle"
    assert rec.extra["trust_pickle"]["trusted"] is True
    assert "weights_only=True" in rec.extra["trust_pickle"]["load_with"]


def test_failed_insert_leaves_no_files(workspace: Any, tmp_path: Path, monkeypatch: Any) -> None:
    reg = ModelRegistry(workspace)
    d = _tiny_folder(tmp_path / "m")

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(reg, "_insert", boom)
    before = _state(workspace)
    with pytest.raises(RuntimeError):
        reg.import_hf_folder(d, copy=True)
    assert _state(workspace) == before
    # A failed "move" puts the files back where they were.
    staged = workspace.models_dir / ".staging-x"
    shutil.copytree(d, staged)
    with pytest.raises(RuntimeError):
        reg.adopt(staged)
    assert (staged / "model.safetensors").exists()
    assert sorted(p.name for p in workspace.models_dir.iterdir()) == [".staging-x"]


def test_get_errors(workspace: Any, tmp_path: Path) -> None:
    reg = ModelRegistry(workspace)
    with pytest.raises(NotFoundError):
        reg.get("missing")
    a = reg.import_hf_folder(_tiny_folder(tmp_path / "a"), copy=False, name="same")
    b = reg.import_hf_folder(_tiny_folder(tmp_path / "b"), copy=False, name="same")
    with pytest.raises(NotFoundError, match="several"):
        reg.get("same")
    assert reg.get(a.id).id == a.id and reg.get(b.id).id == b.id
    updated = reg.update(a.id, name="renamed", tags=["x"], notes="hello")
    assert (updated.name, updated.tags, updated.notes) == ("renamed", ["x"], "hello")
    assert reg.get("same").id == b.id
