"""The whole loop with real jobs: fine-tune the tiny model, merge, export GGUF F16 and Q8_0
(verified), and get an answer from the exported GGUF through the model host."""

from __future__ import annotations

from pathlib import Path

import openai
import pyarrow as pa

from app.core.data.store import DatasetStore
from app.core.jobs.store import JobService, JobState
from app.core.models.registry import ModelRegistry
from app.core.train.library import config_from_library
from app.workers.host_client import HostProcess
from app.workers.supervisor import Supervisor


def _run(sup: Supervisor, kind: str, params: dict, timeout: float = 600) -> dict:
    job = JobService(sup.ws).submit(kind, params)
    assert sup.start(job.id)
    done = sup.wait(job.id, timeout=timeout)
    assert done.state == JobState.SUCCEEDED, f"{kind}: {done.error}"
    return done.result or {}


def test_finetune_merge_export_verify_and_serve(workspace, tiny_llama_dir: Path) -> None:
    reg = ModelRegistry(workspace)
    base = reg.import_hf_folder(tiny_llama_dir, copy=False, name="tiny")
    rows = [{"prompt": f"Colour {c}:", "completion": f" {c}"} for c in ("red", "blue", "green") * 6]
    ds = DatasetStore(workspace).create_dataset("colours", pa.Table.from_pylist(rows))
    cfg = config_from_library(
        workspace,
        base.id,
        ds.dataset_id,
        preset="quick_test",
        max_steps=12,
        device="cpu",
        name="colours",
    )
    sup = Supervisor(workspace)
    trained = _run(sup, "train.lora", cfg.to_dict())
    adapter = reg.get(trained["model_id"])
    merged = _run(sup, "train.merge", {"adapter": adapter.id})
    out = _run(sup, "export.gguf", {"model": merged["model_id"], "quants": ["F16", "Q8_0"]})
    by_type = {o["quant"]: o for o in out["outputs"]}
    f16 = by_type["F16"]["verification"]
    assert f16["passed"] and f16["top1_agreement"] == 1.0 and abs(f16["ppl_ratio"] - 1) < 0.01
    assert by_type["Q8_0"]["verification"]["passed"]
    gguf = reg.get(by_type["Q8_0"]["model_id"])
    rels = {(e.model_id, e.relation) for e in reg.lineage(gguf.id).parents}
    assert rels & {(merged["model_id"], "quantized-from"), (merged["model_id"], "converted-from")}
    prompt = "The teacher repairs the"
    with HostProcess(threads=2) as host:
        host.start({"g": (str(gguf.path), "gguf")})
        client = openai.OpenAI(base_url=host.base_url, api_key=host.token, max_retries=0)
        r = client.completions.create(model="g", prompt=prompt, max_tokens=6, temperature=0)
    assert r.usage.prompt_tokens > 0
    # The served GGUF continues the text as the merged HF model does (greedy).
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = reg.get(merged["model_id"]).path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    ids = tok(prompt, return_tensors="pt").input_ids
    out_ids = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
    expected = tok.decode(out_ids, skip_special_tokens=True)
    assert r.choices[0].text.strip() == expected.strip()
