"""A statistic over layer × module type, from the rows of a report (for heatmaps and CSV)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

from app.core.inspect.stats import layer_of, module_type

#: (report section, value key, label) of every statistic a heatmap can show.
CHOICES: tuple[tuple[str, str, str], ...] = (
    ("stats", "l2", "L2 norm"),
    ("stats", "std", "Standard deviation"),
    ("stats", "mean", "Mean"),
    ("stats", "absmax", "Largest |value|"),
    ("stats", "near_zero", "Share near zero"),
    ("compare", "rel_change", "Relative change ‖b−a‖/‖a‖"),
    ("compare", "cosine", "Cosine similarity"),
    ("lora", "norm", "LoRA update ‖B·A‖·scale"),
    ("lora", "effective_rank", "LoRA effective rank"),
)


@dataclass
class Grid:
    """``values[i][j]``: the statistic of module type ``types[i]`` in layer ``layers[j]``."""

    title: str
    layers: list[int]
    types: list[str]
    values: list[list[float]]  # NaN where a layer has no such module

    def to_csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["module", *[str(layer) for layer in self.layers]])
        for t, row in zip(self.types, self.values, strict=True):
            w.writerow([t, *["" if math.isnan(v) else repr(v) for v in row]])
        return out.getvalue()


def _rows(report: dict[str, Any], section: str) -> list[dict[str, Any]]:
    if section == "stats":
        return list(report.get("stats", {}).get("tensors", []))
    if section == "compare":
        return list(report.get("compare", {}).get("tensors", []))
    if section == "lora":
        return list(report.get("lora", {}).get("modules", []))
    return []


def available(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The choices whose section is in ``report``."""
    return [c for c in CHOICES if _rows(report, c[0])]


def grid(report: dict[str, Any], section: str, key: str) -> Grid:
    """The statistic ``key`` of ``section`` arranged by layer and module type."""
    label = next((c[2] for c in CHOICES if c[:2] == (section, key)), key)
    cells: dict[tuple[str, int], float] = {}
    for row in _rows(report, section):
        name = str(row.get("module") if section == "lora" else row.get("name"))
        layer = layer_of(name)
        if layer is None:
            continue
        kind = module_type(name)
        if key == "absmax":
            value = max(abs(float(row["min"])), abs(float(row["max"])))
        else:
            value = float(row[key])
        cells[(kind, layer)] = value
    layers = sorted({layer for _, layer in cells})
    types = sorted({kind for kind, _ in cells})
    values = [[cells.get((t, layer), math.nan) for layer in layers] for t in types]
    return Grid(label, layers, types, values)


def short_names(types: list[str]) -> list[str]:
    """Module types without the prefix and suffix they all share (``self_attn.q_proj``)."""
    if len(types) < 2:
        return list(types)
    parts = [t.split(".") for t in types]
    head = 0
    while all(len(p) > head + 1 and p[head] == parts[0][head] for p in parts):
        head += 1
    tail = 0
    while all(len(p) > head + tail + 1 and p[-1 - tail] == parts[0][-1 - tail] for p in parts):
        tail += 1
    return [".".join(p[head : len(p) - tail]) for p in parts]
