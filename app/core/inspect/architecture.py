"""The module tree of a model from its tensor names: shapes, types, parameters and bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.core.inspect.stats import layer_of, module_type
from app.core.inspect.tensors import TensorInfo, TensorSet


@dataclass
class Node:
    """A module (or a tensor, at the leaves) with the totals of everything under it."""

    name: str  # the last segment of the path
    path: str
    params: int = 0
    nbytes: int = 0
    tensor: TensorInfo | None = None
    children: dict[str, Node] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "path": self.path,
            "params": self.params,
            "nbytes": self.nbytes,
        }
        if self.tensor is not None:
            out["shape"] = list(self.tensor.shape)
            out["dtype"] = self.tensor.dtype
        if self.children:
            out["children"] = [c.to_dict() for c in self.children.values()]
        return out


def build_tree(ts: TensorSet) -> Node:
    """The tree of modules, tensors as leaves; numeric path segments are layers."""
    root = Node(name="", path="")
    for t in ts.tensors:
        node = root
        node.params += t.n_elements
        node.nbytes += t.nbytes
        parts = t.name.split(".")
        for i, part in enumerate(parts):
            path = ".".join(parts[: i + 1])
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = Node(name=part, path=path)
            child.params += t.n_elements
            child.nbytes += t.nbytes
            node = child
        node.tensor = t
    return root


def layer_summary(ts: TensorSet) -> list[dict[str, Any]]:
    """Parameters and bytes per layer (tensors outside layers under ``layer: None``)."""
    rows: dict[int | None, dict[str, Any]] = {}
    for t in ts.tensors:
        layer = layer_of(t.name)
        row = rows.setdefault(layer, {"layer": layer, "params": 0, "nbytes": 0, "tensors": 0})
        row["params"] += t.n_elements
        row["nbytes"] += t.nbytes
        row["tensors"] += 1
    return sorted(rows.values(), key=lambda r: (r["layer"] is not None, r["layer"] or 0))


def architecture(ts: TensorSet) -> dict[str, Any]:
    """Everything the headers say about a model's weights, as JSON-ready data."""
    by_dtype: dict[str, dict[str, int]] = {}
    for t in ts.tensors:
        d = by_dtype.setdefault(t.dtype, {"tensors": 0, "params": 0, "nbytes": 0})
        d["tensors"] += 1
        d["params"] += t.n_elements
        d["nbytes"] += t.nbytes
    types = sorted({module_type(t.name) for t in ts.tensors if layer_of(t.name) is not None})
    info: dict[str, Any] = {
        "path": str(ts.path),
        "kind": ts.kind,
        "tensor_count": len(ts.tensors),
        "params": sum(t.n_elements for t in ts.tensors),
        "nbytes": sum(t.nbytes for t in ts.tensors),
        "dtypes": by_dtype,
        "layers": layer_summary(ts),
        "module_types": types,
        "tensors": [t.to_dict() for t in ts.tensors],
        "tree": build_tree(ts).to_dict(),
    }
    if ts.kind == "gguf":
        arch = ts.meta.get("general.architecture")
        info["architecture"] = arch if isinstance(arch, str) else None
    return info
