"""A LoRA adapter's updates per layer and module: ‖B·A‖·scale, singular values, effective rank.

The update of a module is ``ΔW = scale · B @ A`` with ``A`` (r × in), ``B`` (out × r) and
``scale = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA; per-module ``rank_pattern``
and ``alpha_pattern`` win). ``ΔW`` is never formed: with ``B = Q_B R_B`` and
``Aᵀ = Q_A R_A`` (thin QR), ``B @ A = Q_B (R_B R_Aᵀ) Q_Aᵀ``, so its singular values are
those of the r × r matrix ``R_B R_Aᵀ`` and its Frobenius norm is theirs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import ConfigError
from app.core.inspect.stats import layer_of, module_type
from app.core.inspect.tensors import TensorSet
from app.core.models.metadata import InvalidModelError

ProgressFn = Callable[[float, str], None]

_A_MARKERS = (".lora_A.", ".lora_embedding_A")
_B_FOR_A = {".lora_A.": ".lora_B.", ".lora_embedding_A": ".lora_embedding_B"}


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """adapter_config.json of a LoRA folder (a JSON object), bounded in size."""
    path = folder / "adapter_config.json"
    try:
        if path.stat().st_size > 1_000_000:
            raise InvalidModelError(f"{path} is larger than 1 MB, which no adapter config is.")
        cfg = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{folder} has no adapter_config.json, so it is not a LoRA adapter."
        ) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"{path} is not valid JSON: {exc}.") from exc
    if not isinstance(cfg, dict):
        raise InvalidModelError(f"{path} does not hold a JSON object.")
    return cfg


def _pattern_value(patterns: Any, module: str, default: float) -> float:
    """PEFT's per-module override: a key equal to the module path or to a dotted suffix of it."""
    if isinstance(patterns, dict):
        for key, value in patterns.items():
            if isinstance(key, str) and (module == key or module.endswith("." + key)):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return float(value)
    return default


def lora_scale(cfg: dict[str, Any], module: str, rank: int) -> float:
    """The factor PEFT multiplies ``B @ A`` by for ``module``."""
    alpha = cfg.get("lora_alpha", 8)
    alpha = float(alpha) if isinstance(alpha, int | float) else 8.0
    alpha = _pattern_value(cfg.get("alpha_pattern"), module, alpha)
    if rank <= 0:
        return 0.0
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def effective_rank(s: np.ndarray) -> float:
    """exp of the entropy of the normalised singular values (Roy & Vetterli, 2007)."""
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(math.exp(-float((p * np.log(p)).sum())))


def lora_updates(
    folder: Path,
    *,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Per adapted module: layer, module type, rank, scale, ‖ΔW‖_F, singular values, ranks."""
    from app.core.inspect.tensors import open_tensors
    from app.core.jobs.context import Cancelled

    cfg = read_adapter_config(folder)
    ts: TensorSet = open_tensors(folder)
    a_names = [t.name for t in ts.tensors if any(m in t.name for m in _A_MARKERS)]
    if not a_names:
        raise ConfigError(
            f"{folder} holds no lora_A / lora_B weights.",
            "Only LoRA adapters (not other PEFT methods) are analysed.",
        )
    rows: list[dict[str, Any]] = []
    for i, a_name in enumerate(a_names):
        if cancelled and cancelled():
            raise Cancelled
        marker = next(m for m in _A_MARKERS if m in a_name)
        b_name = a_name.replace(marker, _B_FOR_A[marker])
        if b_name not in ts:
            continue
        module = a_name.split(marker)[0]
        if progress:
            progress(i / len(a_names), module)
        a = ts.read(ts.get(a_name)).astype(np.float64)
        b = ts.read(ts.get(b_name)).astype(np.float64)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise InvalidModelError(
                f"{folder.name}: {a_name} {list(a.shape)} and {b_name} {list(b.shape)} do not "
                "multiply (B is out × r, A is r × in).",
            )
        rank = a.shape[0]
        scale = lora_scale(cfg, _strip_prefix(module), rank)
        _, rb = np.linalg.qr(b)
        _, ra = np.linalg.qr(a.T)
        s = np.linalg.svd(rb @ ra.T, compute_uv=False) * abs(scale)
        norm = float(math.sqrt(float((s**2).sum())))
        smax = float(s[0]) if s.size else 0.0
        name = _strip_prefix(module)
        rows.append(
            {
                "module": name,
                "layer": layer_of(name),
                "module_type": module_type(name),
                "rank": rank,
                "shape": [b.shape[0], a.shape[1]],
                "scale": scale,
                "norm": norm,
                "singular_values": [float(v) for v in s],
                "effective_rank": effective_rank(s),
                "stable_rank": float((s**2).sum() / smax**2) if smax > 0 else 0.0,
                "norm_a": float(np.linalg.norm(a)),
                "norm_b": float(np.linalg.norm(b)),
            }
        )
    if progress:
        progress(1.0, "done")
    return {
        "adapter": str(folder),
        "r": cfg.get("r"),
        "lora_alpha": cfg.get("lora_alpha"),
        "use_rslora": bool(cfg.get("use_rslora")),
        "base_model": cfg.get("base_model_name_or_path"),
        "modules": rows,
    }


def _strip_prefix(module: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj`` -> ``model.layers.0.self_attn.q_proj``."""
    return module.removeprefix("base_model.model.")
