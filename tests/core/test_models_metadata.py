"""Model metadata read from headers: GGUF, safetensors, HF and adapter folders."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from app.core.models.metadata import (
    InvalidModelError,
    is_gguf_file,
    read_gguf_metadata,
    read_hf_metadata,
    read_safetensors_header,
    safetensors_parameter_count,
)


def _numel(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), "np") as f:
        for key in f.keys():
            total += int(np.prod(f.get_slice(key).get_shape()))
    return total


def test_gemma_gguf_metadata(gemma_gguf: Path) -> None:
    meta = read_gguf_metadata(gemma_gguf)
    assert meta.format == "gguf"
    assert meta.architecture == "gemma3"
    assert meta.quantization == "Q4_K_M"
    assert meta.context_length == 32768
    assert meta.chat_template is None and not meta.has_chat_template
    assert 260_000_000 < (meta.parameters or 0) < 275_000_000
    assert meta.license == "gemma"


def test_gguf_parameter_count_matches_gguf_reader(gemma_gguf: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(gemma_gguf)
    expected = sum(int(t.n_elements) for t in reader.tensors)
    assert read_gguf_metadata(gemma_gguf).parameters == expected


def test_truncated_gguf_is_refused(gemma_gguf: Path, tmp_path: Path) -> None:
    head = tmp_path / "head.gguf"
    with open(gemma_gguf, "rb") as fh:
        head.write_bytes(fh.read(1 << 20))
    assert is_gguf_file(head)
    with pytest.raises(InvalidModelError, match="not a valid GGUF file") as exc:
        read_gguf_metadata(head)
    assert exc.value.hint and "re-download" in exc.value.hint


def test_gguf_missing_tensor_data_is_refused(tmp_path: Path) -> None:
    # A complete header that promises one F32 tensor of 1000 elements, with no data after it.
    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    header += s("general.architecture") + struct.pack("<I", 8) + s("llama")
    header += s("w") + struct.pack("<I", 1) + struct.pack("<Q", 1000) + struct.pack("<IQ", 0, 0)
    path = tmp_path / "short.gguf"
    path.write_bytes(header)
    with pytest.raises(InvalidModelError, match="promises"):
        read_gguf_metadata(path)
    path.write_bytes(header + b"\0" * (32 - len(header) % 32) + b"\0" * 4000)
    meta = read_gguf_metadata(path)
    assert meta.parameters == 1000 and meta.architecture == "llama"


def test_not_gguf(tmp_path: Path) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\3\4" + b"\0" * 100)
    assert not is_gguf_file(p)
    with pytest.raises(InvalidModelError, match="magic"):
        read_gguf_metadata(p)


def test_tiny_llama_metadata(tiny_llama_dir: Path) -> None:
    meta = read_hf_metadata(tiny_llama_dir)
    cfg = json.loads((tiny_llama_dir / "config.json").read_text())
    assert meta.format == "hf"
    assert meta.architecture == cfg["model_type"] == "llama"
    assert meta.parameters == _numel(tiny_llama_dir / "model.safetensors")
    assert meta.context_length == cfg["max_position_embeddings"]
    assert meta.has_chat_template
    assert meta.extra["architectures"] == cfg["architectures"]


def test_sharded_safetensors_and_readme_license(tmp_path: Path) -> None:
    d = tmp_path / "sharded"
    d.mkdir()
    save_file({"a": np.zeros((3, 4), np.float32)}, str(d / "model-00001-of-00002.safetensors"))
    save_file({"b": np.zeros((5,), np.float16)}, str(d / "model-00002-of-00002.safetensors"))
    (d / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "a": "model-00001-of-00002.safetensors",
                    "b": "model-00002-of-00002.safetensors",
                }
            }
        )
    )
    (d / "config.json").write_text(
        json.dumps({"model_type": "mistral", "text_config": {"max_position_embeddings": 4096}})
    )
    (d / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# Model\n")
    (d / "chat_template.jinja").write_text("{{ messages }}")
    meta = read_hf_metadata(d)
    assert meta.parameters == 17
    assert meta.extra["tensor_dtypes"] == {"F32": 12, "F16": 5}
    assert meta.context_length == 4096
    assert meta.license == "apache-2.0"
    assert meta.chat_template == "{{ messages }}"
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InvalidModelError, match="missing"):
        read_hf_metadata(d)


def test_adapter_folder(tmp_path: Path) -> None:
    d = tmp_path / "adapter"
    d.mkdir()
    save_file(
        {"lora_A": np.zeros((8, 64), np.float32), "lora_B": np.zeros((64, 8), np.float32)},
        str(d / "adapter_model.safetensors"),
    )
    (d / "adapter_config.json").write_text(
        json.dumps(
            {"peft_type": "LORA", "base_model_name_or_path": "org/base", "r": 8, "lora_alpha": 16}
        )
    )
    meta = read_hf_metadata(d)
    assert meta.format == "lora"
    assert meta.parameters == 8 * 64 * 2
    assert meta.extra["base_model"] == "org/base"
    assert meta.extra["r"] == 8


def test_truncated_safetensors(tmp_path: Path) -> None:
    p = tmp_path / "m.safetensors"
    save_file({"a": np.zeros((100, 100), np.float32)}, str(p))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError, match="truncated"):
        read_safetensors_header(p)
    p.write_bytes(b"\xff" * 16)
    with pytest.raises(InvalidModelError):
        safetensors_parameter_count([p])
