"""A prompt through the model: answer probabilities, logit lens, attention maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def test_probe_hf_lens_attention_and_answer_agree_with_the_model(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from app.core.inspect.probe import load_attention, probe

    att_file = tmp_path / "attention.npy"
    r = probe(tiny_llama_dir, "Hello world", max_tokens=5, top_k=3, attention_file=att_file)
    n_prompt = len(r["prompt_tokens"])
    ids = [t["id"] for t in r["positions"]]
    assert ids == [t["id"] for t in r["prompt_tokens"]] + [a["id"] for a in r["answer"]]
    assert len(r["answer"]) == 5

    # the model itself, loaded independently
    model = AutoModelForCausalLM.from_pretrained(
        str(tiny_llama_dir), use_safetensors=True, local_files_only=True, dtype=torch.float32
    )
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1).numpy()

    # the lens after the last layer is the model's output, position by position
    lens = r["lens"]
    assert lens["layers"] == 2 and all(len(row) == len(ids) for row in lens["rows"])
    last = lens["rows"][-1]
    assert [c["id"] for c in last] == [int(i) for i in probs.argmax(-1)]
    np.testing.assert_allclose([c["prob"] for c in last], probs.max(-1), rtol=1e-5)
    assert [c["id"] for c in lens["output"]] == [c["id"] for c in last]
    # the first layer's lens is not the output (a lens that copied it would pass the above)
    assert [c["id"] for c in lens["rows"][0]] != [c["id"] for c in last]

    # greedy answer: each token is the argmax at the position before it, with its probability
    for k, a in enumerate(r["answer"]):
        pos = n_prompt - 1 + k
        assert a["id"] == int(probs[pos].argmax())
        assert a["prob"] == pytest.approx(float(probs[pos, a["id"]]), rel=1e-4)
        assert [t["id"] for t in a["top"]] == [int(i) for i in np.argsort(-probs[pos])[:3]]

    # attention: (layers, heads, n, n), causal, every row sums to 1
    att = r["_attention_array"]
    assert att.shape == (2, 4, len(ids), len(ids))
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(att, k=1) == 0)
    saved = load_attention(att_file)
    assert saved.dtype == np.float16
    np.testing.assert_allclose(saved, att, atol=1e-3)
    assert r["attention"] == {"layers": 2, "heads": 4, "n": len(ids), "file": str(att_file)}


def test_probe_gguf_answer_probabilities(gemma_gguf: Path) -> None:
    from app.core.inspect.probe import probe

    r = probe(gemma_gguf, "The capital of France is", max_tokens=3, top_k=4)
    assert len(r["answer"]) == 3 and r["text"]
    for a in r["answer"]:
        probs = [t["prob"] for t in a["top"]]
        assert len(probs) == 4 and probs == sorted(probs, reverse=True)
        assert 0 < a["prob"] <= 1 and a["id"] == a["top"][0]["id"]  # greedy
        assert a["prob"] == pytest.approx(probs[0], rel=1e-5)
    assert r["lens"] is None and r["attention"] is None and "llama.cpp" in r["inside_unavailable"]


def test_probe_refuses_bad_parameters(tiny_llama_dir: Path) -> None:
    from app.core.errors import ConfigError
    from app.core.inspect.probe import probe

    with pytest.raises(ConfigError):
        probe(tiny_llama_dir, "")
    with pytest.raises(ConfigError):
        probe(tiny_llama_dir, "hi", max_tokens=10_000)


def test_cli_prompt_writes_report_and_attention(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from tests.support.cli import demoai

    ws = tmp_path / "ws"
    r = demoai(
        ws,
        "models",
        "inspect",
        str(tiny_llama_dir),
        "--prompt",
        "Hello",
        "--max-tokens",
        "3",
        "--json",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    probe = json.loads(r.stdout)["probe"]
    assert len(probe["answer"]) == 3 and len(probe["lens"]["rows"]) == 2
    assert Path(probe["attention"]["file"]).is_file()
    assert "_attention_array" not in probe
