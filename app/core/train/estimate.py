"""Rough memory and duration estimates of a training run, with the reasoning spelled out.

Pure arithmetic on the model's config.json (and the safetensors header shapes
when the folder is at hand): no torch, so the window can show it before a run.
The numbers are estimates for planning, typically within ~30%; the run's
``cpu_mem_mb`` / ``gpu_mem_mb`` metrics give the truth.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.format import human_duration, human_size
from app.core.train.config import (
    TrainConfig,
    linear_modules,
    read_model_config,
    safetensors_shapes,
)

#: Sustained training throughput in FLOP/s used when no measurement is given.
#: CPU: measured with our loop on the tiny test Llama, one thread (~31 GFLOP/s);
#: CUDA: an assumption of ~35% utilisation of a 16-bit tensor-core GPU.
DEFAULT_FLOPS: dict[str, float] = {"cpu": 3.0e10, "cuda": 1.0e14}

#: Bytes per activation value kept for backward, per token, hidden unit and layer
#: (Korthikanti et al. 2022: ~34 bytes in 16-bit without recomputation).
ACTIVATION_BYTES_16BIT = 34


@dataclass
class Estimate:
    """An estimate with its parts and a human explanation."""

    total_bytes: int
    parts: dict[str, int] = field(default_factory=dict)
    seconds: float | None = None
    tokens_per_s: float | None = None
    explanation: str = ""

    def summary(self) -> str:
        """One sentence for the user: the memory and, when known, the time (never "0 min")."""
        text = f"Needs about {human_size(self.total_bytes)} of memory"
        if self.seconds is not None:
            text += f", about {human_duration(self.seconds)}"
        return text + "."

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_bytes": self.total_bytes,
            "parts": dict(self.parts),
            "seconds": self.seconds,
            "tokens_per_s": self.tokens_per_s,
            "explanation": self.explanation,
        }


def _device(config: TrainConfig) -> str:
    """The device a config will train on, without importing torch (auto: CUDA if a driver is seen)."""
    import shutil

    if config.device != "auto":
        return config.device
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def _dims(mc: Mapping[str, Any]) -> tuple[int, int, int, int, int, int]:
    h = int(mc.get("hidden_size") or mc.get("n_embd") or mc.get("d_model") or 0)
    layers = int(mc.get("num_hidden_layers") or mc.get("n_layer") or mc.get("num_layers") or 0)
    heads = int(mc.get("num_attention_heads") or mc.get("n_head") or 1)
    kv = int(mc.get("num_key_value_heads") or heads)
    inter = int(mc.get("intermediate_size") or mc.get("n_inner") or 4 * h)
    vocab = int(mc.get("vocab_size") or 32000)
    return h, layers, heads, kv, inter, vocab


def _llama_modules(mc: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) of each per-layer projection of a Llama-style block."""
    h, _, heads, kv, inter, _ = _dims(mc)
    hd = int(mc.get("head_dim") or (h // max(1, heads)))
    return {
        "q_proj": (h, heads * hd),
        "k_proj": (h, kv * hd),
        "v_proj": (h, kv * hd),
        "o_proj": (heads * hd, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }


def count_params(
    mc: Mapping[str, Any], modules: Mapping[str, tuple[int, int]] | None = None
) -> tuple[int, int]:
    """(parameters in the per-layer projections, all parameters), from the config."""
    h, layers, *_, vocab = _dims(mc)
    mods = modules or _llama_modules(mc)
    linear = layers * sum(i * o for i, o in mods.values())
    embed = vocab * h * (1 if mc.get("tie_word_embeddings") else 2)
    return linear, linear + embed + layers * 2 * h


def estimate_memory(
    config: TrainConfig,
    model_config: Mapping[str, Any],
    modules: Mapping[str, tuple[int, int]] | None = None,
    *,
    device: str | None = None,
) -> Estimate:
    """Peak memory of a run: weights (by method) + LoRA params, grads and AdamW + activations.

    ``modules`` maps projection names to (in, out) (from the safetensors headers,
    see :func:`estimate_run`); without it a Llama-style block is assumed.
    ``device`` is ``cpu`` or ``cuda`` (default: from the config, ``auto`` = cuda).
    """
    dev = device or _device(config)
    h, layers, heads, _, _, vocab = _dims(model_config)
    mods = dict(modules or _llama_modules(model_config))
    linear, total_params = count_params(model_config, mods)
    other = total_params - linear
    wide = 4 if dev == "cpu" else 2  # float32 on CPU, bf16 on CUDA
    if config.method == "qlora":
        weights = int(linear * (0.5 + 0.127 / 8)) + other * wide  # NF4 + double-quant constants
        wdesc = "4-bit NF4 projections, 16/32-bit embeddings"
    elif config.method == "lora8bit":
        weights = int(linear * 1.03) + other * wide
        wdesc = "8-bit projections, 16/32-bit embeddings"
    else:
        weights = total_params * wide
        wdesc = f"{wide * 8}-bit weights"
    targets = config.target_modules or list(mods)
    lora_params = layers * sum(
        config.lora_rank * (mods[t][0] + mods[t][1]) for t in targets if t in mods
    )
    lora = lora_params * 16  # fp32 weights + grads + AdamW's two moments
    b, s = config.micro_batch, config.max_seq_len  # one forward/backward pass
    act_per = ACTIVATION_BYTES_16BIT * (2 if wide == 4 else 1)
    if config.gradient_checkpointing:
        acts = b * s * h * layers * wide + b * s * h * act_per
        adesc = "layer inputs kept, one layer recomputed (gradient checkpointing)"
    else:
        acts = b * s * h * layers * act_per
        adesc = f"~{act_per} bytes per token x hidden x layer"
    if dev == "cpu":
        acts += layers * b * heads * s * s * 4  # attention scores are materialised on CPU
    logits = b * s * vocab * 4  # float32, upper bound (only label positions are computed)
    overhead = 600 * 2**20 if dev == "cuda" else 300 * 2**20
    parts = {
        "weights": weights,
        "lora_and_optimizer": lora,
        "activations": acts,
        "logits": logits,
        "runtime": overhead,
    }
    total = int(sum(parts.values()) * 1.1)
    lines = [
        f"About {human_size(total)} on {dev} for {config.method} "
        f"(batch {b} x {s} tokens, {layers} layers, hidden {h}):",
        f"  weights {human_size(weights)} ({total_params / 1e6:.0f}M parameters, {wdesc})",
        f"  LoRA {human_size(lora)} ({lora_params / 1e6:.2f}M trainable x 16 bytes: "
        "weights, gradients, AdamW moments)",
        f"  activations {human_size(acts)} ({adesc})",
        f"  logits {human_size(logits)}, runtime {human_size(overhead)}, +10% fragmentation",
    ]
    return Estimate(total, parts, explanation="\n".join(lines))


def estimate_duration(
    config: TrainConfig,
    model_config: Mapping[str, Any],
    total_tokens: int,
    *,
    tokens_per_s: float | None = None,
    device: str | None = None,
) -> Estimate:
    """Run time from the tokens to process and a throughput (measured, or from FLOPs).

    LoRA training costs ~4 x parameters FLOPs per token (forward + backward
    through the frozen weights, no weight gradients), 6x with gradient checkpointing.
    """
    dev = device or _device(config)
    _, total_params = count_params(model_config)
    per_token = (6 if config.gradient_checkpointing else 4) * total_params
    if tokens_per_s is None:
        flops = DEFAULT_FLOPS[dev] * (0.6 if config.method != "lora" and dev == "cuda" else 1.0)
        tokens_per_s = flops / max(1, per_token)
        how = f"assumed {flops / 1e12:.2f} TFLOP/s sustained on {dev}"
    else:
        how = "measured throughput"
    seconds = total_tokens / max(tokens_per_s, 1e-9)
    text = (
        f"About {human_duration(seconds)}: {total_tokens:,} tokens at ~{tokens_per_s:,.0f} "
        f"tokens/s ({how}; {per_token / 1e9:.2f} GFLOP per token)."
    )
    return Estimate(0, {}, seconds, tokens_per_s, text)


def estimate_run(config: TrainConfig, *, tokens_per_s: float | None = None) -> Estimate:
    """Memory and duration for a config, reading the model folder and the data file.

    Tokens are counted roughly (4 characters per token) so no tokenizer loads.
    """
    base = Path(config.base_model).expanduser()
    mc = read_model_config(base)
    mods = linear_modules(safetensors_shapes(base)) or None
    mem = estimate_memory(config, mc, mods)
    chars = 0
    records = 0
    data = Path(config.data_path).expanduser()
    with open(data, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                records += 1
                chars += len(line)
    per_record = min(config.max_seq_len, max(1, chars // max(1, records) // 4))
    if config.max_steps is not None:
        tokens = config.max_steps * config.effective_batch * per_record
    else:
        tokens = int(config.epochs * records * per_record)
    dur = estimate_duration(config, mc, tokens, tokens_per_s=tokens_per_s)
    mem.seconds, mem.tokens_per_s = dur.seconds, dur.tokens_per_s
    mem.explanation += "\n" + dur.explanation
    return mem


def model_config_of(path: str | Path) -> dict[str, Any]:
    """config.json of a model folder (a small convenience for callers)."""
    return dict(json.loads((Path(path) / "config.json").read_text(encoding="utf-8")))
