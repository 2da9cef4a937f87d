"""eval.checkpoints: a real short CPU training run, then the perplexity of each checkpoint."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from app.core.jobs.events import EventReader
from app.core.jobs.store import JobState
from app.workers.supervisor import Supervisor
from tests.support.training import one_train_thread, write_chat_data  # noqa: F401


def _metric(job: Any, name: str) -> dict[int, float]:
    events = EventReader(job.run_dir / "events.jsonl").read_all()
    return {e["step"]: e["value"] for e in events if e["type"] == "metric" and e["name"] == name}


def _direct_perplexity(base: Path, adapter: Path, texts: list[str]) -> float:
    """Plain transformers + peft: exp of the mean next-token loss over the joined texts."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    ids = tok("\n\n".join(texts), return_tensors="pt")["input_ids"]
    assert ids.shape[1] <= 256  # one window: the sliding window scores every token once
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    return math.exp(float(loss))


def test_each_checkpoint_of_a_run_gets_a_perplexity(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from app.core.eval.checkpoints import run_adapters, training_texts
    from app.core.train.config import TrainConfig
    from app.core.workspace import Workspace

    os.environ["DEMOAI_TRAIN_THREADS"] = "1"
    data = write_chat_data(tmp_path / "train.jsonl")
    cfg = TrainConfig.from_dict(
        {
            "base_model": str(tiny_llama_dir),
            "data_path": str(data),
            "max_steps": 10,
            "batch_size": 3,
            "learning_rate": 3e-3,
            "lora_rank": 8,
            "lora_dropout": 0.1,
            "max_seq_len": 128,
            "device": "cpu",
            "save_every": 3,
            "keep_checkpoints": 2,
            "eval_fraction": 0.25,
        }
    )
    ws = Workspace.open(tmp_path / "ws")
    try:
        sup = Supervisor(ws)
        train = sup.jobs.submit("train.lora", cfg.to_dict())
        assert sup.start(train.id)
        train = sup.wait(train.id, timeout=300)
        assert train.state == JobState.SUCCEEDED, (train.error, sup.jobs.log_tail(train.id))
        ck6 = train.run_dir / "checkpoints" / "checkpoint-6"
        # A resume checkpoint is also a PEFT adapter holding the same weights.
        assert (ck6 / "adapter_config.json").is_file()
        raw = load_file(str(ck6 / "adapter.safetensors"))
        peft_w = load_file(str(ck6 / "adapter_model.safetensors"))
        assert {k.replace(".default.", "."): v for k, v in raw.items()}.keys() == peft_w.keys()
        assert all((raw[k] == peft_w[k.replace(".default.", ".")]).all() for k in raw)
        assert [s for s, _ in run_adapters(train.run_dir, train.result)] == [6, 9, 10]

        ev = sup.jobs.submit("eval.checkpoints", {"train_job": train.id, "max_samples": 8})
        assert sup.start(ev.id)
        ev = sup.wait(ev.id, timeout=300)
        assert ev.state == JobState.SUCCEEDED, (ev.error, sup.jobs.log_tail(ev.id))
    finally:
        ws.close()

    ppl = _metric(ev, "ckpt_perplexity")
    loss = _metric(ev, "ckpt_eval_loss")
    assert sorted(ppl) == sorted(loss) == [0, 6, 9, 10]  # base, two checkpoints, final
    assert all(math.isfinite(v) and v > 1 for v in ppl.values())
    assert all(loss[s] == pytest.approx(math.log(ppl[s])) for s in ppl)
    points = ev.result["points"]
    assert [(p["step"], p["kind"]) for p in points] == [
        (0, "base"),
        (6, "checkpoint"),
        (9, "checkpoint"),
        (10, "final"),
    ]
    assert [p["perplexity"] for p in points] == [ppl[s] for s in (0, 6, 9, 10)]
    assert ev.result["n_samples"] == 2  # the 25% held-out split of 8 records
    assert (ev.run_dir / "checkpoint_eval.json").is_file()

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    texts, _ = training_texts(cfg, tok, 8)
    assert len(texts) == 2 and all("The code of" in t for t in texts)
    assert ppl[6] == pytest.approx(_direct_perplexity(tiny_llama_dir, ck6, texts), rel=1e-4)


def test_bad_params_fail_with_a_message(tmp_path: Path) -> None:
    from app.core.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    try:
        sup = Supervisor(ws)
        job = sup.jobs.submit("eval.checkpoints", {"train_job": "nope"})
        assert sup.start(job.id)
        job = sup.wait(job.id, timeout=120)
    finally:
        ws.close()
    assert job.state == JobState.FAILED and "no training job nope" in (job.error or "")
