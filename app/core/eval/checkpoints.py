"""Evaluate every checkpoint of a training run: perplexity per step, to plot beside the loss.

Checkpoints are given as explicit ``(step, adapter_folder)`` pairs, where each
folder is a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``);
:func:`find_checkpoints` lists such folders under ``runs/<job>/checkpoints/``.
Training's own resume checkpoints hold raw optimizer state and weights only
(``adapter.safetensors``); those are not loaded here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.core.errors import ConfigError

_STEP = re.compile(r"checkpoint-(\d+)$")


def find_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of each ``checkpoints/checkpoint-<step>`` holding a PEFT adapter."""
    root = Path(run_dir)
    base = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    out = []
    for p in base.iterdir() if base.is_dir() else []:
        m = _STEP.search(p.name)
        if m and p.is_dir() and (p / "adapter_config.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def evaluate_checkpoints(
    base_model: str | Path,
    checkpoints: Sequence[tuple[int, str | Path]],
    texts: Sequence[str],
    *,
    context: int = 256,
    stride: int | None = None,
    threads: int = 0,
    include_base: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> list[dict[str, Any]]:
    """Sliding-window perplexity of ``texts`` (joined by blank lines) for the base and each step.

    Returns ``[{"step", "path", "perplexity", "n_tokens"}]`` sorted by step (the base is step 0).
    """
    from app.core.eval.perplexity import HFScorer, text_perplexity
    from app.core.infer.engines import EngineOptions, open_engine

    if not texts:
        raise ConfigError("Give some text to compute the perplexity on.")
    text = "\n\n".join(texts)
    todo: list[tuple[int, Path]] = [(int(s), Path(p)) for s, p in checkpoints]
    if include_base:
        todo.insert(0, (0, Path(base_model)))
    rows = []
    for step, path in sorted(todo, key=lambda t: t[0]):
        opts = EngineOptions(threads=threads, base_path=Path(base_model))
        engine: Any = open_engine(path, None, opts)
        try:
            res = text_perplexity(
                HFScorer(engine.model, engine.tokenizer), text, context=context, stride=stride
            )
        finally:
            engine.close()
        rows.append(
            {
                "step": step,
                "path": str(path),
                "perplexity": res.perplexity,
                "n_tokens": res.n_tokens,
            }
        )
        if on_step is not None:
            on_step(step, res.perplexity)
    return rows
