"""Small training data and settings shared by the fine-tuning tests (core, workers, UI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

WORDS = ("apple", "bridge", "candle", "desert", "engine", "feather", "guitar", "harvest")


def write_chat_data(path: Path) -> Path:
    """Eight short question/answer pairs: small enough to memorise."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is the code of {w}?"},
                {"role": "assistant", "content": f"The code of {w} is {i * 7 % 10}{i % 3}."},
            ]
        }
        for i, w in enumerate(WORDS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def one_train_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training in this module uses one CPU thread (import it into a test module to apply)."""
    monkeypatch.setenv("DEMOAI_TRAIN_THREADS", "1")


def add_tiny_model_and_echo_data(ws: Any, tiny_llama_dir: Path, repeats: int) -> None:
    """Register the tiny Llama as ``tiny`` and a dataset ``echo`` of 6 x ``repeats`` rows."""
    import pyarrow as pa

    from app.core.data.store import DatasetStore
    from app.core.models.registry import ModelRegistry

    ModelRegistry(ws).import_hf_folder(tiny_llama_dir, copy=False, name="tiny")
    rows = [
        {"prompt": f"Say {w}:", "completion": f" {w} {w}"}
        for w in ("red", "blue", "green", "cat", "dog", "sun") * repeats
    ]
    DatasetStore(ws).create_dataset("echo", pa.Table.from_pylist(rows))
