"""Regression gate: compare a run's aggregates with a baseline against thresholds.

Thresholds, per metric (any of)::

    {"f1": {"max_drop_points": 1.0}, "exact_match": {"min": 0.5}, "latency_ms": {"max": 800}}

* ``min`` / ``max``: bounds on the candidate's value (the metric's own unit);
* ``max_drop``: how much worse than the baseline it may be, in the metric's unit
  (for lower-is-better metrics, "worse" is higher);
* ``max_drop_points``: the same in points (x100 for 0..1 metrics such as F1);
* ``max_drop_pct``: the same relative to the baseline, in percent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError
from app.core.eval.metrics import canonical_name, get_metric

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

RULES = ("min", "max", "max_drop", "max_drop_points", "max_drop_pct")


@dataclass
class GateCheck:
    model: str
    metric: str
    rule: str
    threshold: float
    value: float | None
    baseline: float | None
    passed: bool
    detail: str


@dataclass
class GateResult:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [c.__dict__ for c in self.checks]}

    def describe(self) -> str:
        lines = [f"gate: {'PASS' if self.passed else 'FAIL'}"]
        for c in self.checks:
            lines.append(f"  [{'ok' if c.passed else 'FAIL'}] {c.model} {c.metric}: {c.detail}")
        return "\n".join(lines)


def load_thresholds(source: str | Path | Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Thresholds from a mapping or a JSON file, validated (metric names, rule names)."""
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"Cannot read the gate file {source}: {exc}.") from exc
    if isinstance(data, dict) and "thresholds" in data:
        data = data["thresholds"]
    if not isinstance(data, dict) or not data:
        raise ConfigError("A gate is a JSON object {metric: {rule: number}}.")
    out: dict[str, dict[str, float]] = {}
    for metric, rules in data.items():
        name = canonical_name(str(metric))
        if not isinstance(rules, dict) or not rules:
            raise ConfigError(f'Gate rules of {metric} must be an object, e.g. {{"min": 0.5}}.')
        bad = sorted(set(rules) - set(RULES))
        if bad:
            raise ConfigError(f"Unknown gate rules {bad} for {metric}.", f"Use {', '.join(RULES)}.")
        out[name] = {k: float(v) for k, v in rules.items()}
    return out


def evaluate_gate(
    candidate: Mapping[str, Mapping[str, Any]],
    thresholds: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Any] | None = None,
) -> GateResult:
    """Check each candidate model's aggregates (``{model: {metric: {"value": ...}}}``).

    ``baseline`` is one model's aggregates (``{metric: {"value": ...}}``); it is needed
    for the ``max_drop*`` rules. A missing value fails its check.
    """
    checks: list[GateCheck] = []
    for model, per in candidate.items():
        for metric, rules in thresholds.items():
            spec = get_metric(metric)
            value = (per.get(metric) or {}).get("value")
            base = ((baseline or {}).get(metric) or {}).get("value")
            for rule, thr in rules.items():
                checks.append(
                    _check(
                        model, metric, rule, thr, value, base, spec.higher_is_better, spec.points
                    )
                )
    return GateResult(all(c.passed for c in checks), checks)


def _check(
    model: str,
    metric: str,
    rule: str,
    thr: float,
    value: float | None,
    base: float | None,
    higher: bool,
    points: float,
) -> GateCheck:
    def mk(ok: bool, detail: str) -> GateCheck:
        return GateCheck(model, metric, rule, thr, value, base, ok, detail)

    if value is None:
        return mk(False, "no value (every sample failed?)")
    if rule == "min":
        return mk(value >= thr, f"{value:.4g} >= {thr:g} required")
    if rule == "max":
        return mk(value <= thr, f"{value:.4g} <= {thr:g} required")
    if base is None:
        return mk(False, f"{rule} needs a baseline value, and the baseline has none")
    drop = (base - value) if higher else (value - base)
    if rule == "max_drop":
        return mk(drop <= thr, f"{value:.4g} vs baseline {base:.4g}: drop {drop:.4g} (max {thr:g})")
    if rule == "max_drop_points":
        d = drop * points
        return mk(
            d <= thr, f"{value:.4g} vs baseline {base:.4g}: drop {d:.3g} points (max {thr:g})"
        )
    pct = 100.0 * drop / abs(base) if base else (0.0 if drop <= 0 else float("inf"))
    return mk(pct <= thr, f"{value:.4g} vs baseline {base:.4g}: drop {pct:.3g}% (max {thr:g}%)")


def gate_runs(
    ws: Workspace,
    run_id: str,
    thresholds: Mapping[str, Mapping[str, float]],
    *,
    baseline_run: str | None = None,
    baseline_model: str | None = None,
) -> GateResult:
    """Gate every model of ``run_id`` against a baseline run's model (its first by default)."""
    from app.core.eval.runner import EvalStore

    store = EvalStore(ws)
    cand = store.aggregates(run_id)
    base: Mapping[str, Any] | None = None
    if baseline_run:
        bagg = store.aggregates(baseline_run)
        if not bagg:
            raise ConfigError(f"The baseline run {baseline_run} has no results.")
        key = baseline_model or next(iter(bagg))
        if key not in bagg:
            raise ConfigError(
                f"The baseline run has no model '{key}'.", f"It has: {', '.join(bagg)}."
            )
        base = bagg[key]
    return evaluate_gate(cand, thresholds, base)
