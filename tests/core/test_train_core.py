"""Fine-tuning core: config checks, data masking and order, CPU LoRA/QLoRA, merge, estimates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import ConfigError
from app.core.train.config import PRESETS, TrainConfig, validate_against_model
from app.core.train.data import (
    IGNORE_INDEX,
    DataOrder,
    check_data_file,
    pack,
    split_eval,
    tokenize_record,
)
from tests.support.training import one_train_thread, write_chat_data  # noqa: F401


def make_config(base: Path, data: Path, **over: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "base_model": str(base),
        "data_path": str(data),
        "max_steps": 40,
        "batch_size": 4,
        "learning_rate": 3e-3,
        "lr_scheduler": "constant",
        "lora_rank": 8,
        "lora_dropout": 0.0,
        "max_seq_len": 128,
        "device": "cpu",
        "save_every": 0,
        **over,
    }
    return TrainConfig.from_dict(values)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_chat_data(tmp_path / "train.jsonl")


# ----------------------------------------------------------------------------- config


def test_config_rejects_bad_values_on_creation(tiny_llama_dir: Path, data: Path) -> None:
    with pytest.raises(ConfigError, match="lora_rank"):
        make_config(tiny_llama_dir, data, lora_rank=0)
    with pytest.raises(ConfigError, match="method must be one of"):
        make_config(tiny_llama_dir, data, method="full")
    with pytest.raises(ConfigError, match="Unknown training option"):
        make_config(tiny_llama_dir, data, learning_rat=1e-4)
    with pytest.raises(ConfigError, match="nothing would be trainable"):
        make_config(tiny_llama_dir, data, target_modules=[])


def test_config_json_round_trip_and_presets(
    tiny_llama_dir: Path, data: Path, tmp_path: Path
) -> None:
    cfg = make_config(tiny_llama_dir, data, target_modules=["q_proj", "v_proj"], packing=True)
    cfg.to_json(tmp_path / "c.json")
    assert TrainConfig.from_json(tmp_path / "c.json") == cfg
    # A job's config.json ({"kind", "params"}) and a manifest ({"config"}) read too.
    wrapped = json.dumps({"kind": "train.lora", "params": cfg.to_dict()})
    assert TrainConfig.from_json(wrapped) == cfg
    for name in PRESETS:
        p = TrainConfig.preset(name, base_model="b", data_path="d")
        assert p.problems() == []
    with pytest.raises(ConfigError, match="Unknown preset"):
        TrainConfig.preset("fastest", base_model="b", data_path="d")


def test_validate_reports_missing_columns_unknown_modules_and_context(
    tiny_llama_dir: Path, tmp_path: Path, data: Path
) -> None:
    assert validate_against_model(make_config(tiny_llama_dir, data)) == []
    pc = tmp_path / "pc.jsonl"
    pc.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n")
    problems = validate_against_model(
        make_config(tiny_llama_dir, pc, data_format="prompt_completion")
    )
    assert len(problems) == 1 and "lacks column(s) completion" in problems[0]
    problems = validate_against_model(
        make_config(tiny_llama_dir, data, target_modules=["qkv", "q_proj"])
    )
    assert len(problems) == 1 and "unknown target module(s) qkv" in problems[0]
    assert "q_proj" in problems[0]
    problems = validate_against_model(make_config(tiny_llama_dir, data, max_seq_len=4096))
    assert len(problems) == 1 and "beyond the model's context of 512" in problems[0]


def test_validate_gguf_only_and_missing_bitsandbytes(
    tiny_llama_dir: Path, tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_dir = tmp_path / "gguf-model"
    gguf_dir.mkdir()
    (gguf_dir / "model.gguf").write_bytes(b"GGUF")
    problems = validate_against_model(make_config(gguf_dir, data))
    assert any("training needs HF weights" in p for p in problems)
    problems = validate_against_model(make_config(gguf_dir / "model.gguf", data))
    assert any("training needs HF weights" in p for p in problems)

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    problems = validate_against_model(make_config(tiny_llama_dir, data, method="qlora"))
    assert problems == [p for p in problems if "bitsandbytes" in p] and problems


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama_dir))


def test_chat_labels_cover_only_assistant_turns(tokenizer: Any) -> None:
    rec = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "An apple."},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "A lemon."},
        ]
    }
    ex = tokenize_record(rec, tokenizer, "chat", 256)
    assert ex is not None
    learned = tokenizer.decode([t for t in ex.labels if t != IGNORE_INDEX])
    assert "An apple." in learned and "A lemon." in learned
    assert "fruit" not in learned and "Be brief" not in learned and "Another" not in learned
    assert "</s>" in learned  # the model learns to stop
    everything = tokenize_record(rec, tokenizer, "chat", 256, assistant_only=False)
    assert everything is not None and everything.n_label_tokens > ex.n_label_tokens


def test_prompt_completion_and_instruction_masks(tokenizer: Any) -> None:
    ex = tokenize_record(
        {"prompt": "Q: two plus two? A:", "completion": " four"}, tokenizer, "prompt_completion", 64
    )
    assert ex is not None
    assert tokenizer.decode([t for t in ex.labels if t != IGNORE_INDEX]).strip() == "four</s>"
    ins = {"instruction": "Translate", "input": "chat", "output": "cat"}
    ex2 = tokenize_record(ins, tokenizer, "instruction", 64)
    assert ex2 is not None
    learned = tokenizer.decode([t for t in ex2.labels if t != IGNORE_INDEX])
    assert "cat" in learned and "Translate" not in learned
    assert tokenize_record(ins, tokenizer, "instruction", 4) is None  # cut before the answer


def test_packing_split_and_seeded_order(tokenizer: Any, data: Path) -> None:
    from app.core.train.data import read_records

    exs = [tokenize_record(r, tokenizer, "chat", 128) for r in read_records(data)]
    rows = pack([e for e in exs if e], 100)
    assert sum(len(r.input_ids) for r in rows) == sum(len(e.input_ids) for e in exs if e)
    assert all(len(r.input_ids) <= 100 for r in rows) and len(rows) < len(exs)
    assert rows[0].position_ids[0] == 0 and 0 in rows[0].position_ids[1:]
    tr, ev = split_eval(100, 0.1, seed=3)
    assert len(ev) == 10 and not set(tr) & set(ev) and split_eval(100, 0.1, seed=3) == (tr, ev)
    a, b = DataOrder(10, 3, seed=1), DataOrder(10, 3, seed=1)
    assert [a.batch(k) for k in range(12)] == [b.batch(k) for k in reversed(range(12))][::-1]
    epoch0 = [i for k in range(4) for i in a.batch(k)[1]]
    assert sorted(epoch0) == list(range(10)) and a.batch(4)[0] == 1
    assert check_data_file(data, "prompt_completion")[0].startswith("data record 1 lacks")


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """40 CPU LoRA steps on the memorisable data, adapter saved."""
    import os

    from app.core.train.loop import TrainSession

    os.environ["DEMOAI_TRAIN_THREADS"] = "1"
    tmp = tmp_path_factory.mktemp("trained")
    data = write_chat_data(tmp / "train.jsonl")
    session = TrainSession(make_config(tiny_llama_dir, data))
    losses = [session.train_step().loss for _ in range(40)]
    adapter = session.save_adapter(tmp / "adapter")
    return {"losses": losses, "adapter": adapter, "data": data, "tmp": tmp}


def test_lora_loss_goes_down(trained: dict[str, Any]) -> None:
    losses = trained["losses"]
    assert all(x == x for x in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def _logits(model: Any, ids: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapter_loads_changes_output_and_merge_matches(
    trained: dict[str, Any], tiny_llama_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from app.core.train.merge import merge_adapter

    adapter: Path = trained["adapter"]
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    ids = torch.tensor([[1, 20, 30, 40, 50, 60, 70]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    before = _logits(base, ids)
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    after = _logits(tuned, ids)
    assert (after - before).abs().max() > 1e-2

    out = merge_adapter(tiny_llama_dir, adapter, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".merged.*"))  # no temp folder left
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert (_logits(merged, ids) - after).abs().max() < 1e-4
    with pytest.raises(ConfigError, match="already exists"):
        merge_adapter(tiny_llama_dir, adapter, out)


def test_cpu_repeat_is_deterministic_and_checkpoint_resume_is_exact(
    tiny_llama_dir: Path, data: Path, tmp_path: Path
) -> None:
    import torch

    from app.core.train.loop import TrainSession, complete_checkpoints

    cfg = make_config(
        tiny_llama_dir,
        data,
        max_steps=8,
        lora_dropout=0.1,
        batch_size=3,
        grad_accum=2,
        lr_scheduler="cosine",
        warmup_steps=2,
    )

    def weights(s: TrainSession) -> dict[str, Any]:
        return {n: p.detach().clone() for n, p in s.model.named_parameters() if p.requires_grad}

    a = TrainSession(cfg)
    la = [a.train_step().loss for _ in range(8)]
    b = TrainSession(cfg)
    lb = [b.train_step().loss for _ in range(4)]
    b.save_checkpoint(tmp_path)
    # A fresh session (as after a crash) restored from the checkpoint finishes the run.
    c = TrainSession(cfg)
    c.load_checkpoint(complete_checkpoints(tmp_path)[-1])
    lc = [c.train_step().loss for _ in range(4)]
    assert la == lb + lc
    wa, wc = weights(a), weights(c)
    assert max(float((wa[n] - wc[n]).abs().max()) for n in wa) == 0.0
    assert [h["step"] for h in c.history] == list(range(1, 9))
    d = TrainSession(cfg)
    for _ in range(8):
        d.train_step()
    assert all(torch.equal(wa[n], t) for n, t in weights(d).items())


def test_cpu_qlora_trains_a_few_steps_and_saves(
    tiny_llama_dir: Path, data: Path, tmp_path: Path
) -> None:
    from app.core.train.loop import TrainSession

    s = TrainSession(make_config(tiny_llama_dir, data, method="qlora", max_steps=3))
    kinds = {type(m).__name__ for m in s.model.modules()}
    assert "Linear4bit" in kinds
    losses = [s.train_step().loss for _ in range(3)]
    assert all(x == x and x > 0 for x in losses)
    out = s.save_adapter(tmp_path / "qadapter")
    assert (out / "adapter_model.safetensors").is_file()


def test_nan_guard_stops_the_step(tiny_llama_dir: Path, data: Path) -> None:
    import torch

    from app.core.train.loop import TrainSession

    s = TrainSession(make_config(tiny_llama_dir, data, max_steps=2))
    with torch.no_grad():
        next(p for p in s.params).fill_(float("nan"))
    before = [p.detach().clone() for p in s.params]
    st = s.train_step()
    assert st.skipped and st.loss != st.loss
    assert all(
        torch.equal(a, b) or torch.isnan(a).all() for a, b in zip(before, s.params, strict=True)
    )


# ----------------------------------------------------------------------------- estimates


def test_estimates_explain_themselves(tiny_llama_dir: Path, data: Path) -> None:
    from app.core.train.estimate import estimate_duration, estimate_memory, estimate_run

    qwen_05b = {
        "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
        "tie_word_embeddings": True,
    }  # fmt: skip
    cfg = make_config(tiny_llama_dir, data, device="cuda", max_seq_len=512)
    lora = estimate_memory(cfg, qwen_05b)
    qlora = estimate_memory(cfg.with_changes(method="qlora"), qwen_05b)
    assert qlora.parts["weights"] < lora.parts["weights"] / 1.5
    ckpt = estimate_memory(cfg.with_changes(gradient_checkpointing=True), qwen_05b)
    assert ckpt.parts["activations"] < lora.parts["activations"]
    assert "494M parameters" in lora.explanation
    dur = estimate_duration(cfg, qwen_05b, 1_000_000, tokens_per_s=1000.0)
    assert dur.seconds == pytest.approx(1000.0)
    run = estimate_run(cfg.with_changes(device="cpu"))
    assert run.total_bytes > 0 and run.seconds is not None and "tokens/s" in run.explanation


def test_gradient_checkpointing_and_packing_keep_the_loss(tiny_llama_dir: Path, data: Path) -> None:
    from app.core.train.loop import TrainSession

    plain = TrainSession(make_config(tiny_llama_dir, data, max_steps=2))
    ckpt = TrainSession(make_config(tiny_llama_dir, data, max_steps=2, gradient_checkpointing=True))
    a, b = plain.train_step(), ckpt.train_step()
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-4)
    packed = TrainSession(
        make_config(tiny_llama_dir, data, max_steps=2, packing=True, batch_size=1)
    )
    assert len(packed.train_samples) < len(plain.train_samples)
    assert packed.train_step().label_tokens > a.label_tokens / 4


def test_cpu_lora8bit_runs_a_step(tiny_llama_dir: Path, data: Path) -> None:
    from app.core.train.loop import TrainSession

    s = TrainSession(make_config(tiny_llama_dir, data, method="lora8bit", max_steps=2))
    assert "Linear8bitLt" in {type(m).__name__ for m in s.model.modules()}
    st = s.train_step()
    assert st.loss == st.loss and not st.skipped


# ----------------------------------------------------------------------------- out of memory


def test_micro_batch_option_checks_and_halving_rule(tiny_llama_dir: Path, data: Path) -> None:
    from app.core.train.config import field_defaults, field_help
    from app.core.train.loop import next_micro_batch

    assert field_defaults()["auto_reduce_batch"] is True
    assert "out-of-memory" in field_help()["auto_reduce_batch"]
    assert "effective batch" in field_help()["auto_reduce_batch"]
    cfg = make_config(tiny_llama_dir, data, batch_size=6, micro_batch_size=3)
    assert cfg.micro_batch == 3 and cfg.effective_batch == 6
    assert make_config(tiny_llama_dir, data, batch_size=6).micro_batch == 6
    from app.core.train.estimate import estimate_run  # a pass holds micro-batch sequences

    full = estimate_run(cfg.with_changes(micro_batch_size=None)).parts["activations"]
    assert estimate_run(cfg).parts["activations"] == pytest.approx(full / 2, rel=0.01)
    for bad in (4, 0, 7):
        with pytest.raises(ConfigError, match="micro_batch_size must divide batch_size 6"):
            make_config(tiny_llama_dir, data, batch_size=6, micro_batch_size=bad)
    # Halving keeps every pass of a step the same size: divisors of batch_size only.
    chain, m = [], 8
    while (nxt := next_micro_batch(8, m)) is not None:
        chain.append(m := nxt)
    assert chain == [4, 2, 1]
    assert next_micro_batch(6, 6) == 3 and next_micro_batch(6, 3) == 1
    assert next_micro_batch(5, 5) == 1 and next_micro_batch(5, 1) is None


def test_allocator_failures_count_as_out_of_memory() -> None:
    import torch

    from app.core.errors import is_out_of_memory

    errors: list[BaseException] = []
    for alloc in (lambda: torch.empty(2**50, dtype=torch.uint8), lambda: bytearray(2**50)):
        try:
            alloc()
        except (RuntimeError, MemoryError) as exc:  # the real allocators' errors
            errors.append(exc)
    assert len(errors) == 2 and all(is_out_of_memory(e) for e in errors), errors
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_micro_batches_cut_the_same_data_and_keep_the_loss(
    tiny_llama_dir: Path, data: Path, tmp_path: Path
) -> None:
    from app.core.train.loop import TrainSession, complete_checkpoints

    cfg = make_config(tiny_llama_dir, data, max_steps=3, batch_size=4, grad_accum=2)
    whole = TrainSession(cfg)
    small = TrainSession(cfg.with_changes(micro_batch_size=1))
    assert small.accum_passes == 8 and whole.accum_passes == 2
    for step in range(3):
        cut = small.micro_batches(step)
        assert [len(b) for b in cut] == [1] * 8
        assert [i for b in cut for i in b] == [i for b in whole.micro_batches(step) for i in b]
    a = [whole.train_step() for _ in range(3)]
    b = [small.train_step() for _ in range(3)]
    assert [s.loss for s in a] == pytest.approx([s.loss for s in b], rel=1e-5)
    assert [s.lr for s in a] == [s.lr for s in b] and b[0].micro_batch == 1
    # A reduction is kept by checkpoints; one written before the option existed still loads.
    red = whole.reduce_micro_batch(whole.step + 1, "RuntimeError: can't allocate memory")
    assert red is not None and (red.old, red.new) == (4, 2) and whole.micro_batch == 2
    path = whole.save_checkpoint(tmp_path)
    again = TrainSession(cfg)
    again.load_checkpoint(path)
    assert again.micro_batch == 2 and again.reductions == whole.reductions
    state = json.loads((path / "state.json").read_text())
    for key in ("micro_batch_size", "oom_reductions"):
        del state[key]
    for key in ("micro_batch_size", "auto_reduce_batch"):
        del state["config"][key]
    (path / "state.json").write_text(json.dumps(state))
    old = TrainSession(cfg)
    old.load_checkpoint(complete_checkpoints(tmp_path)[-1])
    assert old.step == 3 and old.micro_batch == 4
