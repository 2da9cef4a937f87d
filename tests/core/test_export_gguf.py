"""GGUF export: LoRA merge -> f16/Q8_0 with llama.cpp's converter, verification, lineage."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ci import needs_converter


def _make_adapter(base: Path, dest: Path) -> Path:
    """A peft LoRA on the tiny Llama with random, non-zero B weights (so the merge matters)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(str(dest))
    for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy2(base / f, dest / f)
    return dest


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[Any]:
    """A workspace with the tiny Llama and a LoRA adapter of it."""
    from app.core.models import ModelRegistry
    from app.core.workspace import Workspace

    root = tmp_path_factory.mktemp("export-ws")
    ws = Workspace.open(root / "ws")
    reg = ModelRegistry(ws)
    base = reg.import_path(tiny_llama_dir)
    adapter_dir = _make_adapter(base.path, root / "adapter")
    adapter = reg.import_path(adapter_dir, name="tiny-lora")
    reg.add_lineage(adapter.id, base.id, "adapter-of")
    yield ws, base, adapter
    ws.close()


@pytest.fixture(scope="module")
def exported(lib: Any) -> Any:
    from app.core.export.gguf import export_gguf

    ws, _base, adapter = lib
    return export_gguf(ws, adapter.id, ["F16", "Q8_0"])


@needs_converter
def test_lora_merge_exports_f16_and_q8_and_verifies(lib: Any, exported: Any) -> None:
    from app.core.export.checksums import check_sums
    from app.core.export.records import ExportStore
    from app.core.models import ModelRegistry

    ws, base, adapter = lib
    by_q = {o.quant: o for o in exported}
    assert set(by_q) == {"F16", "Q8_0"}
    f16, q8 = by_q["F16"].verification, by_q["Q8_0"].verification
    assert f16["passed"] and f16["top1_agreement"] == 1.0 and f16["ppl_ratio"] < 1.01
    assert q8["passed"] and q8["top1_agreement"] >= 0.95
    assert f16["tokenizer_match"]
    reg = ModelRegistry(ws)
    for o in exported:
        assert o.path.is_file() and o.path.parent.parent == ws.root / "exports"
        check_sums(o.path.parent)
        rec = reg.get(o.model_id)
        assert rec.format == "gguf"
        rels = {(e.model_id, e.relation) for e in reg.lineage(rec.id).parents}
        want = "converted-from" if o.quant == "F16" else "quantized-from"
        assert (adapter.id, want) in rels and (base.id, "merged-from") in rels
        row = ExportStore(ws).get(o.export_id)
        assert row.state == "succeeded" and row.verification == o.verification
        assert row.result_model_id == o.model_id
    assert by_q["Q8_0"].size_bytes < by_q["F16"].size_bytes


@needs_converter
def test_exported_gguf_answers_through_the_model_host(exported: Any) -> None:
    from openai import OpenAI

    from app.workers.host_client import HostProcess

    q8 = next(o for o in exported if o.quant == "Q8_0")
    with HostProcess(threads=2) as host:
        host.start({"tiny": (q8.path, "gguf")})
        client = OpenAI(base_url=host.base_url, api_key=host.token)
        out = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=8
        )
    assert out.choices[0].finish_reason in ("length", "stop")
    assert out.usage is not None and out.usage.completion_tokens > 0


@needs_converter
def test_corrupted_conversion_fails_verification(lib: Any) -> None:
    import numpy as np
    from gguf import GGUFReader

    from app.core.export.gguf import export_gguf
    from app.core.export.records import ExportStore
    from app.core.jobs.context import JobFailed
    from app.core.models import ModelRegistry

    ws, base, _ = lib
    before = {r.id for r in ModelRegistry(ws).list()}

    def corrupt(path: Path, quant: str) -> None:
        reader = GGUFReader(str(path), "r+")
        t = next(t for t in reader.tensors if t.name == "output.weight")
        data = np.asarray(t.data)
        rng = np.random.default_rng(0)
        data[...] = rng.permutation(data.reshape(-1)).reshape(data.shape)
        del reader

    with pytest.raises(JobFailed, match="Verification failed for F16"):
        export_gguf(ws, base.id, ["F16"], _after_write=corrupt)
    assert {r.id for r in ModelRegistry(ws).list()} == before  # nothing registered
    row = ExportStore(ws).list(model_id=base.id)[0]
    assert row.state == "failed" and row.verification is not None
    assert not row.verification["passed"] and row.verification["top1_agreement"] < 0.5
    assert row.path is not None and row.path.endswith(".failed-verification")


@needs_converter
def test_unrecognised_tokenizer_gives_a_clear_message(tmp_path: Path, lib: Any) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from app.core.export.gguf import export_gguf
    from app.core.jobs.context import JobFailed
    from app.core.models import ModelRegistry
    from tests.support.models import TINY_CORPUS

    ws, base, _ = lib
    folder = tmp_path / "bpe-model"
    shutil.copytree(base.path, folder)
    (folder / "tokenizer.model").unlink()
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False
    )
    tok.train_from_iterator(TINY_CORPUS, trainer)
    tok.save(str(folder / "tokenizer.json"))
    rec = ModelRegistry(ws).import_path(folder, name="bpe-from-scratch")
    with pytest.raises(JobFailed) as info:
        export_gguf(ws, rec.id, ["F16"])
    assert "does not recognise this model's tokenizer" in info.value.message
    assert info.value.hint is not None and "docs/export.md" in info.value.hint
    assert "Traceback" not in info.value.message
