"""Discovering models already on disk: a fake HF cache, GGUF folders, Ollama blobs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from app.core.models import ModelRegistry
from app.core.models.discover import discover, hf_cache_dir


def _gguf_stub(path: Path) -> Path:
    """Magic bytes are all discovery needs; importing would validate the rest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + b"\3\0\0\0" + b"\0" * 100)
    return path


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "OLLAMA_MODELS"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_hf_cache_layout(fake_home: Path, workspace: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = fake_home / ".cache" / "huggingface" / "hub"
    assert hf_cache_dir() == cache
    blobs = cache / "models--acme--tiny" / "blobs"
    snap = cache / "models--acme--tiny" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    save_file({"w": np.ones((2, 2), np.float32)}, str(blobs / "b1"))
    (blobs / "b2").write_text(json.dumps({"model_type": "llama"}))
    os.symlink(blobs / "b1", snap / "model.safetensors")
    os.symlink(blobs / "b2", snap / "config.json")
    # A snapshot with only a README is not a model.
    (cache / "models--acme--docs" / "snapshots" / "r1").mkdir(parents=True)
    (cache / "models--acme--docs" / "snapshots" / "r1" / "README.md").write_text("hi")
    _gguf_stub(cache / "models--acme--q" / "snapshots" / "r2" / "q4.gguf")

    found = {c.path: c for c in discover(None)}
    assert set(found) == {
        str(snap),
        str(cache / "models--acme--q" / "snapshots" / "r2" / "q4.gguf"),
    }
    c = found[str(snap)]
    assert (c.format, c.source, c.name, c.hub_ref) == (
        "hf",
        "hf-cache",
        "acme/tiny",
        "acme/tiny@abc123",
    )
    assert c.size_bytes == (blobs / "b1").stat().st_size + (blobs / "b2").stat().st_size
    assert not c.already_registered

    reg = ModelRegistry(workspace)
    rec = reg.import_hf_folder(c.path, copy=False, name=c.name, source_ref=c.hub_ref)
    assert rec.source_kind == "hub" and rec.source_ref == "acme/tiny@abc123"
    again = {x.path: x for x in discover(reg)}[str(snap)]
    assert again.already_registered and again.model_id == rec.id

    monkeypatch.setenv("HF_HUB_CACHE", str(fake_home / "elsewhere"))
    assert discover(None) == []


def test_gguf_folders_lmstudio_and_ollama(fake_home: Path, tmp_path: Path) -> None:
    lm = _gguf_stub(fake_home / ".lmstudio" / "models" / "pub" / "repo" / "m-Q4_K_M.gguf")
    blobs = fake_home / ".ollama" / "models" / "blobs"
    digest = "sha256-" + "ab" * 32
    blob = _gguf_stub(blobs / digest)
    (blobs / ("sha256-" + "cd" * 32)).write_bytes(b"{not a model}")  # a config blob
    manifest = fake_home / ".ollama" / "models" / "manifests" / "registry.ollama.ai" / "library"
    (manifest / "gemma3").mkdir(parents=True)
    (manifest / "gemma3" / "270m").write_text(
        json.dumps(
            {
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": digest.replace("-", ":", 1),
                    }
                ]
            }
        )
    )
    mine = tmp_path / "mine"
    _gguf_stub(mine / "a.gguf")
    (mine / "fake.gguf").write_bytes(b"not gguf")
    found = {c.path: c for c in discover(None, [mine])}
    assert set(found) == {str(lm), str(blob), str(mine / "a.gguf")}
    assert found[str(blob)].source == "ollama" and found[str(blob)].name == "gemma3:270m"
    assert found[str(lm)].source == "lmstudio" and found[str(lm)].format == "gguf"
    only_given = discover(None, [mine], include_defaults=False)
    assert [c.path for c in only_given] == [str(mine / "a.gguf")]


def test_extensionless_real_gguf_imports(fake_home: Path, workspace: Any, gemma_gguf: Path) -> None:
    blobs = fake_home / ".ollama" / "models" / "blobs"
    blobs.mkdir(parents=True)
    blob = blobs / ("sha256-" + "ef" * 32)
    os.symlink(gemma_gguf, blob)
    [c] = discover(None)
    assert c.path == str(blob) and c.format == "gguf"
    rec = ModelRegistry(workspace).import_gguf(c.path, copy=False)
    assert rec.architecture == "gemma3"
    [c2] = discover(ModelRegistry(workspace))
    assert c2.already_registered and c2.model_id == rec.id
