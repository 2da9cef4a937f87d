"""Conversion throughput and output sizes of GGUF export, per type.

    .venv/bin/python bench/export.py [--large]

Uses the tiny test Llama (and with ``--large`` a random Llama with hidden 1024,
8 layers). Prints HF->GGUF conversion MB/s (source safetensors bytes / seconds,
including the converter's start-up), quantization time, output size and the
verification numbers. The baseline is F16 measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUANTS = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"]


def _large(dest: Path, tiny: Path) -> Path:
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=512, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
        num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(dest, safe_serialization=True)
    for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tiny / f, dest / f)
    return dest


def bench(model_dir: Path, label: str) -> None:
    from app.core.export.gguf import convert_hf, quantize
    from app.core.export.verify import source_reference, verify_gguf

    src_mb = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        f16 = convert_hf(model_dir, Path(tmp) / "f16.gguf", "f16")
        conv_s = time.perf_counter() - t0
        ref = source_reference(model_dir)
        print(f"\n{label}: source {src_mb:.1f} MB; convert to F16 {conv_s:.2f} s "
              f"= {src_mb / conv_s:.1f} MB/s (incl. converter start-up)")  # fmt: skip
        print(
            f"{'type':7} {'size MB':>8} {'x F16':>6} {'quant s':>8} {'top-1':>7} {'ppl ratio':>10}"
        )
        f16_mb = f16.stat().st_size / 2**20
        for q in QUANTS:
            if q == "F16":
                path, qs = f16, 0.0
            else:
                t1 = time.perf_counter()
                path = quantize(f16, Path(tmp) / f"{q}.gguf", q)
                qs = time.perf_counter() - t1
            v = verify_gguf(ref, path, q)
            mb = path.stat().st_size / 2**20
            print(f"{q:7} {mb:8.2f} {mb / f16_mb:6.2f} {qs:8.2f} {v.top1_agreement:7.1%} "
                  f"{v.ppl_ratio:10.4f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--large", action="store_true", help="also a random Llama, hidden 1024")
    args = ap.parse_args()
    from tests.support.models import tiny_llama_cached

    tiny = tiny_llama_cached()
    bench(tiny, "tiny Llama (hidden 256, 2 layers)")
    if args.large:
        with tempfile.TemporaryDirectory() as tmp:
            bench(_large(Path(tmp) / "large", tiny), "random Llama (hidden 1024, 8 layers)")


if __name__ == "__main__":
    main()
