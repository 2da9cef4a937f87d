"""Engines on real models: llama.cpp on the Gemma GGUF, transformers on the tiny Llama + LoRA."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.infer import (
    Chunk,
    ContextOverflowError,
    EngineOptions,
    ModelLoadError,
    SamplingParams,
    detect_format,
    open_engine,
)


def collect(chunks: Iterator[Chunk]) -> tuple[str, Chunk]:
    items = list(chunks)
    assert items and items[-1].finish_reason is not None and items[-1].usage is not None
    assert all(c.finish_reason is None for c in items[:-1])
    return "".join(c.text for c in items), items[-1]


# --------------------------------------------------------------------------- GGUF


@pytest.fixture(scope="module")
def gemma(gemma_gguf: Path) -> Iterator[Any]:
    engine = open_engine(gemma_gguf, options=EngineOptions(threads=2, n_ctx=512))
    yield engine
    engine.close()


def test_gguf_seed_is_honoured(gemma: Any) -> None:
    params = SamplingParams(seed=11, max_tokens=24, temperature=0.9)
    a, last = collect(gemma.complete("The capital of France is", params))
    b, _ = collect(gemma.complete("The capital of France is", params))
    c, _ = collect(
        gemma.complete(
            "The capital of France is", SamplingParams(seed=12, max_tokens=24, temperature=0.9)
        )
    )
    assert a == b and a.strip()
    assert c != a
    assert (
        last.usage is not None
        and last.usage.completion_tokens == 24
        and last.finish_reason == "length"
    )
    assert last.usage.prompt_tokens == gemma.count_tokens("The capital of France is")


def test_gguf_chat_uses_gemma_preset_and_stops(gemma: Any) -> None:
    assert gemma.architecture() == "gemma3"
    assert gemma.chat_template.name == "gemma"  # the GGUF has no template of its own
    text, _ = collect(
        gemma.chat(
            [{"role": "user", "content": "Say hello."}], SamplingParams(seed=1, max_tokens=16)
        )
    )
    assert "<end_of_turn>" not in text
    params = SamplingParams(seed=11, max_tokens=24, temperature=0.9, stop=("France",))
    text, _ = collect(gemma.complete("The capital of France is Paris. The capital of", params))
    assert "France" not in text


def test_gguf_context_overflow(gemma: Any) -> None:
    assert gemma.context_length == 512
    with pytest.raises(ContextOverflowError) as info:
        gemma.complete("word " * 600, SamplingParams(max_tokens=4))
    assert info.value.code == "context_length_exceeded" and info.value.http_status == 400
    # Embeddings run in a second llama.cpp context (embedding mode, mean pooling).
    vecs = gemma.embeddings(["refund", "refund", "printer toner"])
    assert len(vecs) == 3 and len(vecs[0]) == 640 and vecs[0] == vecs[1] != vecs[2]
    with pytest.raises(ContextOverflowError):
        gemma.embeddings(["word " * 600])


def test_bad_gguf_files(tmp_path: Path, gemma_gguf: Path) -> None:
    truncated = tmp_path / "cut.gguf"
    with gemma_gguf.open("rb") as fh:
        truncated.write_bytes(fh.read(1_000_000))
    with pytest.raises(ModelLoadError, match="could not load"):
        open_engine(truncated, options=EngineOptions(threads=2))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        open_engine(fake)
    with pytest.raises(ModelLoadError):
        detect_format(tmp_path / "missing")


# --------------------------------------------------------------------------- HF + LoRA


@pytest.fixture(scope="module")
def lora_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(
        str(tiny_llama_dir), use_safetensors=True, local_files_only=True
    )
    # init_lora_weights=False: random A and B, so the adapter really changes the outputs.
    cfg = LoraConfig(
        r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    model = get_peft_model(base, cfg)
    out = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(str(out), safe_serialization=True)
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_llama_dir
    )
    return out


def test_hf_engine_streams_with_seed(tiny_llama_dir: Path) -> None:
    with open_engine(tiny_llama_dir, options=EngineOptions(threads=2)) as engine:
        assert engine.context_length == 512
        assert engine.chat_template.name == "model"  # the tokenizer's own template
        params = SamplingParams(seed=5, max_tokens=12)
        a, last = collect(engine.chat([{"role": "user", "content": "Hello"}], params))
        b, _ = collect(engine.chat([{"role": "user", "content": "Hello"}], params))
        assert a == b
        assert last.usage is not None and 1 <= last.usage.completion_tokens <= 12
        g1, _ = collect(
            engine.complete("The cat reads", SamplingParams(temperature=0, max_tokens=8))
        )
        g2, _ = collect(
            engine.complete("The cat reads", SamplingParams(temperature=0, max_tokens=8, seed=9))
        )
        assert g1 == g2  # greedy ignores the seed
        vectors = engine.embeddings(["hello", "a longer text"])
        assert len(vectors) == 2 and len(vectors[0]) == 256
        with pytest.raises(ContextOverflowError):
            engine.complete("The cat reads a book. " * 200, params)


def test_lora_adapter_changes_output(tiny_llama_dir: Path, lora_dir: Path) -> None:
    assert detect_format(lora_dir) == "lora"
    base = open_engine(tiny_llama_dir, "hf", EngineOptions(threads=2))
    tuned = open_engine(lora_dir, options=EngineOptions(threads=2))
    try:
        assert tuned.base_path == tiny_llama_dir and tuned.adapter_path == lora_dir
        la, lb = base.next_token_logits("The cat reads"), tuned.next_token_logits("The cat reads")
        assert max(abs(x - y) for x, y in zip(la, lb, strict=True)) > 1e-3
        greedy = SamplingParams(temperature=0, max_tokens=16)
        ta, _ = collect(base.complete("The old farmer", greedy))
        tb, last = collect(tuned.complete("The old farmer", greedy))
        assert ta != tb
        assert last.usage is not None and last.usage.completion_tokens > 0
    finally:
        base.close()
        tuned.close()


def test_hf_refuses_pickles_and_empty_folders(
    tiny_llama_dir: Path, tmp_path: Path, lora_dir: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no safetensors"):
        open_engine(empty, "hf")
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle"):
        open_engine(pickled, "hf")
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_dir, adapter)
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors"):
        open_engine(adapter)
