"""Compare two models tensor by tensor; a GGUF file against its safetensors source.

For each tensor present in both (same shape): the relative change ``‖a-b‖/‖a‖``, the
cosine similarity, the RMS and the largest absolute difference, streamed chunk by chunk
(both tensors read in step, float64 sums). When one side is a GGUF file and the other a
safetensors model, the HF names are mapped to GGUF names with gguf's own tensor-name map
and the converter's reversible changes are undone before comparing (llama.cpp permutes the
rows of Llama's q/k projections for its rope layout; Gemma's norm weights are stored plus
one), so the numbers are the quantization error per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from app.core.errors import ConfigError
from app.core.inspect.stats import layer_of, module_type
from app.core.inspect.tensors import TensorInfo, TensorSet, UnsupportedTensorError

ProgressFn = Callable[[float, str], None]

_GEMMA_ARCHS = ("gemma", "gemma2", "gemma3", "gemma3n")


def _permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf), applied to an HF q/k weight."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


Transform = Callable[[np.ndarray], np.ndarray]


def _gguf_pairs(
    src: TensorSet, gg: TensorSet
) -> tuple[list[tuple[TensorInfo, TensorInfo, Transform | None]], list[str]]:
    """(source tensor, GGUF tensor, transform of the source) for each mapped pair, and the unmapped."""
    import gguf

    arch_name = gg.meta.get("general.architecture")
    archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if not isinstance(arch_name, str) or arch_name not in archs:
        raise ConfigError(
            f"{gg.path.name} has architecture {arch_name!r}, which gguf's name map does not know.",
            "Compare it with another GGUF file instead.",
        )
    n_blocks = int(gg.meta.get(f"{arch_name}.block_count", 0) or 0)
    name_map = gguf.get_tensor_name_map(archs[arch_name], n_blocks)
    n_head = gg.meta.get(f"{arch_name}.attention.head_count")
    n_head_kv = gg.meta.get(f"{arch_name}.attention.head_count_kv", n_head)
    pairs: list[tuple[TensorInfo, TensorInfo, Transform | None]] = []
    unmatched: list[str] = []
    for t in src.tensors:
        target = name_map.get_name(t.name, try_suffixes=(".weight", ".bias"))
        if target is None or target not in gg:
            unmatched.append(t.name)
            continue
        transform: Transform | None = None
        if arch_name == "llama" and isinstance(n_head, int):
            if t.name.endswith("q_proj.weight"):
                transform = lambda w, h=n_head: _permute(w, h, h)  # noqa: E731
            elif t.name.endswith("k_proj.weight"):
                transform = lambda w, h=n_head, kv=n_head_kv: _permute(w, h, kv)  # noqa: E731
        elif arch_name in _GEMMA_ARCHS and t.name.endswith("norm.weight"):
            transform = lambda w: w + 1.0  # noqa: E731
        pairs.append((t, gg.get(target), transform))
    return pairs, unmatched


def _same_name_pairs(
    a: TensorSet, b: TensorSet
) -> tuple[list[tuple[TensorInfo, TensorInfo, Transform | None]], list[str]]:
    pairs: list[tuple[TensorInfo, TensorInfo, Transform | None]] = [
        (t, b.get(t.name), None) for t in a.tensors if t.name in b
    ]
    unmatched = [t.name for t in a.tensors if t.name not in b]
    return pairs, unmatched


def _chunk_pairs(
    a: TensorSet, ia: TensorInfo, b: TensorSet, ib: TensorInfo, transform: Transform | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if transform is not None:  # a permutation mixes rows: the whole tensor at once
        yield transform(a.read(ia)).reshape(-1), b.read(ib).reshape(-1)
        return
    step = a.rows_per_chunk(ia)
    for start in range(0, ia.n_rows, step):
        n = min(step, ia.n_rows - start)
        yield a.read_rows(ia, start, n).reshape(-1), b.read_rows(ib, start, n).reshape(-1)


def tensor_difference(
    a: TensorSet, ia: TensorInfo, b: TensorSet, ib: TensorInfo, transform: Transform | None = None
) -> dict[str, Any]:
    """Relative change, cosine, RMS and largest absolute difference of two same-shape tensors."""
    aa = bb = ab = dd = 0.0
    max_abs = 0.0
    for xa, xb in _chunk_pairs(a, ia, b, ib, transform):
        da = xa.astype(np.float64)
        db = xb.astype(np.float64)
        aa += float(np.dot(da, da))
        bb += float(np.dot(db, db))
        ab += float(np.dot(da, db))
        db -= da
        dd += float(np.dot(db, db))
        if db.size:
            max_abs = max(max_abs, float(np.abs(db).max()))
    n = ia.n_elements
    na, nb = math.sqrt(aa), math.sqrt(bb)
    return {
        "name": ia.name,
        "other": ib.name,
        "layer": layer_of(ia.name),
        "module": module_type(ia.name),
        "dtype": ia.dtype,
        "other_dtype": ib.dtype,
        "n": n,
        "norm": na,
        "other_norm": nb,
        "rel_change": math.sqrt(dd) / na if na > 0 else (0.0 if dd == 0 else math.inf),
        "cosine": ab / (na * nb) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0),
        "rmse": math.sqrt(dd / n) if n else 0.0,
        "max_abs": max_abs,
    }


def compare_models(
    a: TensorSet,
    b: TensorSet,
    *,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Per-tensor differences of ``b`` against ``a`` (the reference).

    A safetensors model against a GGUF file (either order) maps names and compares the
    source with the GGUF's dequantized values: ``mode`` is ``"quantization"`` and ``a`` is
    taken as the source. Same-kind models are matched by name: ``mode`` is ``"models"``.
    """
    from app.core.jobs.context import Cancelled

    if a.kind == "gguf" and b.kind != "gguf":
        a, b = b, a
    if a.kind != "gguf" and b.kind == "gguf":
        mode = "quantization"
        pairs, only_a = _gguf_pairs(a, b)
        matched_b = {p[1].name for p in pairs}
    else:
        mode = "models"
        pairs, only_a = _same_name_pairs(a, b)
        matched_b = {p[1].name for p in pairs}
    only_b = [t.name for t in b.tensors if t.name not in matched_b]
    shape_mismatch = [
        {"name": ia.name, "shape": list(ia.shape), "other_shape": list(ib.shape)}
        for ia, ib, _ in pairs
        if ia.shape != ib.shape
    ]
    pairs = [p for p in pairs if p[0].shape == p[1].shape]
    if not pairs:
        raise ConfigError(
            f"{a.path.name} and {b.path.name} have no tensor in common with the same shape.",
            "Compare two models of the same architecture (a base and its fine-tune, a model "
            "and its GGUF export).",
        )
    total = sum(ia.nbytes for ia, _, _ in pairs) or 1
    done = 0
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for ia, ib, transform in pairs:
        if cancelled and cancelled():
            raise Cancelled
        if progress:
            progress(done / total, ia.name)
        try:
            rows.append(tensor_difference(a, ia, b, ib, transform))
        except UnsupportedTensorError as exc:
            skipped.append({"name": ia.name, "reason": exc.message})
        done += ia.nbytes
    if progress:
        progress(1.0, "done")
    return {
        "mode": mode,
        "reference": str(a.path),
        "other": str(b.path),
        "tensors": rows,
        "only_in_reference": only_a,
        "only_in_other": only_b,
        "shape_mismatch": shape_mismatch,
        "skipped": skipped,
    }
