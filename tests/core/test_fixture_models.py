"""The offline model fixtures in ``tests/support/models.py`` are what they claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.ci import needs
from tests.support.models import (
    BOS_ID,
    CHAT_TEMPLATE,
    EOS_ID,
    FIXTURE_STAMP,
    GEMMA_GGUF_NAME,
    PAD_ID,
    REPO_ROOT,
    SAMPLE_TEXTS,
    TINY_CORPUS,
    TINY_LLAMA_DIRNAME,
    TINY_VOCAB_SIZE,
    UNK_ID,
    build_tiny_llama,
    convert_hf_to_gguf,
    fixture_cache_dir,
    gemma_gguf_cached,
    llama_cpp_source,
    tiny_llama_cached,
)

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

needs_llama_cpp_src = needs(
    llama_cpp_source() is not None,
    "no llama.cpp source tree (.demoai-llama-cpp-src in the venv); run installers/setup.sh",
)

PROMPT = "Our teacher repairs the broken clock near the station"
CONVERSATION = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And the largest planet?"},
]
EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    FIXTURE_STAMP,
}


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return tiny_llama_cached()


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)


@pytest.fixture(scope="module")
def hf_model(tiny_dir: Path) -> LlamaForCausalLM:
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    assert isinstance(model, LlamaForCausalLM)
    model.eval()  # type: ignore[no-untyped-call]
    return model


def test_cached_folder_layout(tiny_dir: Path) -> None:
    assert tiny_dir == fixture_cache_dir() / TINY_LLAMA_DIRNAME
    assert tiny_llama_cached() == tiny_dir
    names = {p.name for p in tiny_dir.iterdir()}
    assert names == EXPECTED_FILES  # safetensors only: no *.bin, no leftovers
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["intermediate_size"]) == (256, 512)
    assert (config["num_hidden_layers"], config["num_attention_heads"]) == (2, 4)
    assert config["num_key_value_heads"] == 2
    assert config["max_position_embeddings"] == 512
    assert config["vocab_size"] == TINY_VOCAB_SIZE
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (BOS_ID, EOS_ID)
    special = json.loads((tiny_dir / "special_tokens_map.json").read_text())
    assert special == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
    }


def test_tiny_llama_loads_and_gives_logits(
    tokenizer: PreTrainedTokenizerBase, hf_model: LlamaForCausalLM
) -> None:
    import torch
    from transformers import LlamaForCausalLM

    assert isinstance(hf_model, LlamaForCausalLM)
    assert hf_model.config.vocab_size == len(tokenizer) == TINY_VOCAB_SIZE
    enc = tokenizer(PROMPT, return_tensors="pt")
    seq = enc["input_ids"].shape[1]
    assert seq > 5
    assert enc["input_ids"][0, 0].item() == BOS_ID
    with torch.no_grad():
        logits = hf_model(**enc).logits
    assert tuple(logits.shape) == (1, seq, TINY_VOCAB_SIZE)
    assert torch.isfinite(logits).all()
    assert logits.dtype == torch.float32


def test_sentencepiece_and_fast_tokenizers_agree(
    tiny_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))
    assert sp.get_piece_size() == len(tokenizer) == TINY_VOCAB_SIZE
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (UNK_ID, BOS_ID, EOS_ID, PAD_ID)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id) == (UNK_ID, BOS_ID)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (EOS_ID, PAD_ID)
    assert all(tokenizer.convert_ids_to_tokens(i) == sp.id_to_piece(i) for i in range(len(sp)))

    texts = [t for t in SAMPLE_TEXTS if t] + list(TINY_CORPUS[::23])
    assert len(texts) > 30
    for text in texts:
        ids = sp.encode(text)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids, text
        assert tokenizer(text)["input_ids"] == [BOS_ID, *ids], text
        # Byte fallback: even unseen characters round-trip, through both.
        assert sp.decode(ids) == text
        assert tokenizer.decode(ids) == text
    assert UNK_ID not in sp.encode("Zürich, 東京 and 🙂")


def test_chat_template_renders_a_conversation(
    tiny_dir: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE
    assert tokenizer.chat_template == CHAT_TEMPLATE

    prompt = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<s><|system|>\nYou are a careful assistant.</s>\n"
        "<|user|>\nWhat is the capital of France?</s>\n"
        "<|assistant|>\nParis is the capital of France.</s>\n"
        "<|user|>\nAnd the largest planet?</s>\n"
        "<|assistant|>\n"
    )
    without = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert isinstance(without, str)
    assert "And the largest planet?" in without
    assert not without.endswith("<|assistant|>\n")

    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[0] == BOS_ID
    assert ids.count(BOS_ID) == 1
    assert ids.count(EOS_ID) == len(CONVERSATION)  # the literal "</s>" maps to the EOS id
    assert UNK_ID not in ids

    with pytest.raises(Exception, match="Unknown role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_build_tiny_llama_honours_seed_and_never_overwrites(tiny_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    dest = build_tiny_llama(tmp_path / "seed1", seed=1)
    assert dest == tmp_path / "seed1"
    assert {p.name for p in tmp_path.iterdir()} == {"seed1"}  # the temporary folder is gone
    assert {p.name for p in dest.iterdir()} == EXPECTED_FILES
    # The tokenizer does not depend on the seed; the weights do.
    for name in ("tokenizer.model", "tokenizer.json"):
        assert (dest / name).read_bytes() == (tiny_dir / name).read_bytes()
    w0 = load_file(tiny_dir / "model.safetensors")
    w1 = load_file(dest / "model.safetensors")
    assert w0.keys() == w1.keys()
    emb = "model.embed_tokens.weight"
    assert w0[emb].shape == w1[emb].shape == (TINY_VOCAB_SIZE, 256)
    assert (w0[emb] != w1[emb]).any()

    before = (dest / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        build_tiny_llama(dest, seed=2)
    assert (dest / "model.safetensors").read_bytes() == before
    assert {p.name for p in tmp_path.iterdir()} == {"seed1"}


def test_tiny_llama_cached_survives_a_race(tmp_path: Path) -> None:
    code = "from tests.support.models import tiny_llama_cached; print(tiny_llama_cached())"
    env = {**os.environ, "DEMOAI_TEST_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    paths = {out.strip() for out, _ in outs}
    assert paths == {str(tmp_path / TINY_LLAMA_DIRNAME)}
    assert [p.name for p in tmp_path.iterdir()] == [TINY_LLAMA_DIRNAME]  # loser cleaned up
    assert {p.name for p in (tmp_path / TINY_LLAMA_DIRNAME).iterdir()} == EXPECTED_FILES


@needs_llama_cpp_src
def test_llama_cpp_converts_and_matches_transformers(
    tiny_dir: Path, tokenizer: PreTrainedTokenizerBase, hf_model: LlamaForCausalLM, tmp_path: Path
) -> None:
    import numpy as np
    import torch
    from llama_cpp import Llama

    gguf_path = convert_hf_to_gguf(tiny_dir, tmp_path / "tiny-f16.gguf", outtype="f16")
    assert gguf_path.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-f16.gguf"]

    ids = tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor([ids])).logits[0, -1].numpy()

    llm = Llama(model_path=str(gguf_path), n_ctx=128, verbose=False, logits_all=True)
    try:
        assert llm.n_vocab() == TINY_VOCAB_SIZE
        assert llm.metadata.get("tokenizer.chat_template") == CHAT_TEMPLATE
        # llama.cpp's SPM tokenizer agrees with sentencepiece BPE, byte fallback included.
        for text in (PROMPT, "Zürich, 東京 and 🙂", "  two leading spaces"):
            want = tokenizer(text)["input_ids"]
            assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=False) == want
        llm.eval(ids)
        cpp_logits = np.asarray(llm.scores[len(ids) - 1], dtype=np.float32)
    finally:
        llm.close()
    assert int(cpp_logits.argmax()) == int(hf_logits.argmax())
    assert float(np.abs(cpp_logits - hf_logits).max()) < 0.05  # f16 weights: ~2e-3 measured


def test_gemma_gguf_cached_is_a_real_gguf() -> None:
    path = gemma_gguf_cached()
    assert path == fixture_cache_dir() / GEMMA_GGUF_NAME
    assert path.is_file()
    assert path.stat().st_size > 200_000_000
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert gemma_gguf_cached() == path
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{GEMMA_GGUF_NAME}.")]
