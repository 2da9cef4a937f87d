"""Merge a LoRA adapter into its base model: a new, standalone HF folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from app.core.errors import ConfigError
from app.core.store.files import _fsync_dir, sha256_file

#: Tokenizer and generation files copied from the base folder when present.
_COPY = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def merge_adapter(
    base_path: str | os.PathLike[str],
    adapter_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    dtype: str = "auto",
) -> Path:
    """Write base + adapter as a merged HF folder (safetensors) at ``out_path``; returns it.

    Built in a temporary folder beside ``out_path`` and renamed into place, so
    a crash never leaves a half-written model. ``dtype`` is ``auto`` (the
    base's own), ``float32``, ``bfloat16`` or ``float16``. The folder gets a
    ``merge.json`` with the base and adapter paths and hashes (lineage).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter, out = Path(base_path), Path(adapter_path), Path(out_path)
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json).")
    if not (base / "config.json").is_file():
        raise ConfigError(f"{base} is not a Hugging Face model folder (no config.json).")
    if out.exists():
        raise ConfigError(f"{out} already exists.", "Choose a new output folder.")
    torch_dtype: object = "auto" if dtype == "auto" else getattr(torch, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch_dtype)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        merged.save_pretrained(str(tmp), safe_serialization=True)
        for name in _COPY:
            if (base / name).is_file():
                shutil.copy2(base / name, tmp / name)
        lineage = {
            "created_at": time.time(),
            "base_model": str(base.resolve()),
            "adapter": str(adapter.resolve()),
            "adapter_sha256": {
                p.name: sha256_file(p) for p in sorted(adapter.iterdir()) if p.is_file()
            },
        }
        (tmp / "merge.json").write_text(json.dumps(lineage, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
