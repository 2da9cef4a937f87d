"""Experiments: a named group of runs with one control, compared side by side.

A member is a pipeline run (its train step's config and loss curve, its eval step's
metrics with bootstrap CIs), a fine-tuning job (``train.lora``: its config, final
losses and curve) or an eval run (its first model's metrics). ``compare`` keeps only
the config fields that differ between members; ``report_html`` writes one
self-contained HTML file whose tables and inline SVG plots are drawn from the same
numbers ``compare`` returns (each figure carries its exact value in ``data-value``).
"""

from __future__ import annotations

import html
import json
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError, NotFoundError
from app.core.runs.engine import flatten

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

#: Train config fields that say where things are: never a "difference" worth showing.
_HIDDEN = ("base_model", "data_path", "name", "base_model_id", "dataset_version")


@dataclass
class Member:
    ref: str
    kind: str  # pipeline_run, train_job, eval_run
    label: str
    control: bool
    config: dict[str, Any]
    metrics: dict[str, dict[str, Any]]  # name -> {value, ci_low, ci_high, n}
    curve: list[tuple[int, float]]  # (step, train_loss)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["curve"] = [list(p) for p in self.curve]
        return d


def _curve_of(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train_loss) from the job's ``history.json``, else its event log."""
    hist = run_dir / "history.json"
    if hist.is_file():
        rows = json.loads(hist.read_text(encoding="utf-8"))
        return [
            (int(r["step"]), float(r["train_loss"]))
            for r in rows
            if r.get("train_loss") is not None
        ]
    from app.core.jobs.events import EventReader

    points: dict[int, float] = {}
    for e in EventReader(run_dir / "events.jsonl").read_new():
        if e.get("type") == "metric" and e.get("name") == "train_loss":
            points[int(e["step"])] = float(e["value"])
    return sorted(points.items())


def _train_member(
    ws: Workspace, job_dir: Path, config: dict[str, Any]
) -> tuple[dict[str, Any], list[tuple[int, float]]]:
    metrics: dict[str, dict[str, Any]] = {}
    manifest = job_dir / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text(encoding="utf-8")).get("metrics") or {}
        for name in ("train_loss", "eval_loss"):
            if m.get(name) is not None:
                metrics[name] = {"value": float(m[name]), "ci_low": None, "ci_high": None}
    return metrics, _curve_of(job_dir)


def describe(
    ws: Workspace, ref: str
) -> tuple[str, dict[str, Any], dict[str, Any], list[tuple[int, float]]]:
    """(kind, config, metrics, curve) of a pipeline run, a train job or an eval run."""
    from app.core.runs.store import PipelineStore

    try:
        run = PipelineStore(ws).get_run(ref)
    except NotFoundError:
        run = None
    if run is not None:
        config: dict[str, Any] = {}
        metrics: dict[str, Any] = {}
        curve: list[tuple[int, float]] = []
        for step in run.snapshot.get("steps", {}).values():
            out = step.get("output") or {}
            if step["kind"] == "train":
                config.update({k: v for k, v in step["config"].items() if k not in _HIDDEN})
                if out.get("manifest"):
                    tm, curve = _train_member(ws, Path(out["manifest"]).parent, config)
                    metrics.update(tm)
            elif step["kind"] in ("eval", "harness"):
                config.update({f"eval.{k}": v for k, v in step["config"].items()})
                metrics.update(out.get("metrics") or {})
        return "pipeline_run", config, metrics, curve
    from app.core.jobs.store import JobService

    try:
        job = JobService(ws).get(ref)
    except NotFoundError:
        job = None
    if job is not None and job.kind == "train.lora":
        config = {k: v for k, v in job.params.items() if k not in _HIDDEN}
        tm, curve = _train_member(ws, job.run_dir, config)
        return "train_job", config, tm, curve
    from app.core.eval.runner import EvalStore

    try:
        er = EvalStore(ws).get_run(ref)
    except NotFoundError:
        raise NotFoundError(
            f"'{ref}' is not a pipeline run, a fine-tuning job or an eval run.",
            "See `demoai pipeline show NAME`, `demoai jobs list` or `demoai eval list`.",
        ) from None
    agg = EvalStore(ws).aggregates(er.id)
    first: dict[str, Any] = next(iter(agg.values()), {})
    cfg = {k: v for k, v in er.config.items() if k not in ("name",)}
    return "eval_run", cfg, dict(first), []


class ExperimentStore:
    def __init__(self, workspace: Workspace) -> None:
        self.ws = workspace
        self.db = workspace.db

    def create(self, name: str, description: str = "") -> str:
        from app.core.runs.spec import _name

        _name(name, "experiment name")
        if self.db.query_one("SELECT id FROM experiments WHERE name = ?", (name,)):
            raise ConfigError(f"There is already an experiment '{name}'.")
        eid = uuid.uuid4().hex[:12]
        self.db.execute(
            "INSERT INTO experiments(id, name, description, created_at) VALUES (?, ?, ?, ?)",
            (eid, name, description, time.time()),
        )
        return eid

    def _row(self, ref: str) -> dict[str, Any]:
        row = self.db.query_one("SELECT * FROM experiments WHERE id = ? OR name = ?", (ref, ref))
        if row is None:
            raise NotFoundError(f"No experiment '{ref}'.", "Create it: demoai experiment create.")
        return row

    def add(self, experiment: str, ref: str, *, label: str = "", control: bool = False) -> None:
        exp = self._row(experiment)
        kind, _c, _m, _curve = describe(self.ws, ref)  # fails on an unknown ref
        with self.db.transaction() as c:
            if control:
                c.execute(
                    "UPDATE experiment_members SET control = 0 WHERE experiment_id = ?",
                    (exp["id"],),
                )
            c.execute(
                "INSERT OR REPLACE INTO experiment_members(experiment_id, ref, kind, label, "
                "control, added_at) VALUES (?, ?, ?, ?, ?, ?)",
                (exp["id"], ref, kind, label or ref, 1 if control else 0, time.time()),
            )

    def names(self) -> list[str]:
        return [r["name"] for r in self.db.query("SELECT name FROM experiments ORDER BY name")]

    def members(self, experiment: str) -> list[Member]:
        exp = self._row(experiment)
        rows = self.db.query(
            "SELECT * FROM experiment_members WHERE experiment_id = ? "
            "ORDER BY control DESC, added_at, ref",
            (exp["id"],),
        )
        out = []
        for r in rows:
            kind, config, metrics, curve = describe(self.ws, r["ref"])
            out.append(
                Member(r["ref"], kind, r["label"], bool(r["control"]), config, metrics, curve)
            )
        return out

    def compare(self, experiment: str) -> dict[str, Any]:
        """Members, the config fields that differ, and metrics side by side with the
        difference to the control."""
        exp = self._row(experiment)
        members = self.members(experiment)
        if not members:
            raise ConfigError(f"The experiment '{exp['name']}' has no runs yet.")
        flat = [flatten(m.config) for m in members]
        keys = sorted(set().union(*flat))
        differ = {
            k: [f.get(k) for f in flat]
            for k in keys
            if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1
        }
        control = next((m for m in members if m.control), None)
        names = sorted(set().union(*(m.metrics for m in members)))
        metrics: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            base = (control.metrics.get(name) or {}).get("value") if control else None
            row = []
            for m in members:
                a = m.metrics.get(name) or {}
                v = a.get("value")
                row.append(
                    {
                        "label": m.label,
                        "value": v,
                        "ci_low": a.get("ci_low"),
                        "ci_high": a.get("ci_high"),
                        "n": a.get("n"),
                        "delta": None if v is None or base is None else v - base,
                    }
                )
            metrics[name] = row
        return {
            "experiment": exp["name"],
            "description": exp["description"],
            "control": control.label if control else None,
            "members": [m.to_dict() for m in members],
            "differing_config": differ,
            "metrics": metrics,
        }


# -- the HTML report --------------------------------------------------------------------------
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}"


def _attr(v: Any) -> str:
    return "" if v is None else repr(float(v))


def _curves_svg(members: list[dict[str, Any]]) -> str:
    series = [(m["label"], m["curve"]) for m in members if m["curve"]]
    if not series:
        return "<p>No loss curves (no training in these runs).</p>"
    w, h, pad = 640, 320, 48
    xs = [p[0] for _, c in series for p in c]
    ys = [p[1] for _, c in series for p in c]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def px(x: float, y: float) -> str:
        sx = pad + (x - x0) / (x1 - x0) * (w - 2 * pad)
        sy = h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad)
        return f"{sx:.1f},{sy:.1f}"

    parts = [
        f'<svg class="curves" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="training loss by step">',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#444"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#444"/>',
        f'<text x="{pad}" y="{h - pad + 16}" font-size="11">{x0}</text>',
        f'<text x="{w - pad}" y="{h - pad + 16}" font-size="11" text-anchor="end">{x1} steps</text>',
        f'<text x="4" y="{h - pad}" font-size="11">{y0:.3g}</text>',
        f'<text x="4" y="{pad}" font-size="11">{y1:.3g}</text>',
    ]
    for i, (label, curve) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        pts = " ".join(px(s, v) for s, v in curve)
        values = html.escape(json.dumps([[s, v] for s, v in curve]))
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}" '
            f'data-label="{html.escape(label)}" data-values="{values}"/>'
        )
        parts.append(
            f'<text x="{w - pad + 4}" y="{pad + 14 * i}" font-size="11" fill="{colour}">'
            f"{html.escape(label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _bars_svg(metric: str, rows: list[dict[str, Any]]) -> str:
    vals = [r for r in rows if r["value"] is not None and math.isfinite(r["value"])]
    if not vals:
        return ""
    w, bar, gap, pad = 640, 22, 10, 150
    h = len(rows) * (bar + gap) + 30
    hi = max(
        max(float(r["ci_high"] if r["ci_high"] is not None else r["value"]) for r in vals), 0.0
    )
    lo = min(min(float(r["ci_low"] if r["ci_low"] is not None else r["value"]) for r in vals), 0.0)
    span = (hi - lo) or 1.0

    def sx(v: float) -> float:
        return pad + (v - lo) / span * (w - pad - 70)

    parts = [
        f'<svg class="bars" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(metric)} by run">'
    ]
    for i, r in enumerate(rows):
        y = 10 + i * (bar + gap)
        parts.append(
            f'<text x="4" y="{y + bar * 0.7:.1f}" font-size="11">{html.escape(r["label"])}</text>'
        )
        if r["value"] is None:
            continue
        x0, x1 = sx(min(0.0, r["value"])), sx(max(0.0, r["value"]))
        parts.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar}" '
            f'fill="{COLOURS[i % len(COLOURS)]}" data-metric="{html.escape(metric)}" '
            f'data-label="{html.escape(r["label"])}" data-value="{_attr(r["value"])}"/>'
        )
        if r["ci_low"] is not None and r["ci_high"] is not None:
            a, b, mid = sx(r["ci_low"]), sx(r["ci_high"]), y + bar / 2
            parts.append(
                f'<line x1="{a:.1f}" y1="{mid}" x2="{b:.1f}" y2="{mid}" stroke="#000" '
                f'data-ci-low="{_attr(r["ci_low"])}" data-ci-high="{_attr(r["ci_high"])}"/>'
            )
        parts.append(
            f'<text x="{x1 + 4:.1f}" y="{y + bar * 0.7:.1f}" font-size="11">{_num(r["value"])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def report_html(cmp: dict[str, Any]) -> str:
    """One self-contained page (no external files, no scripts that run)."""
    e = html.escape
    members = cmp["members"]
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Experiment {e(cmp['experiment'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:60em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th:first-child,td:first-child{text-align:left}</style></head><body>",
        f"<h1>Experiment {e(cmp['experiment'])}</h1>",
    ]
    if cmp.get("description"):
        out.append(f"<p>{e(cmp['description'])}</p>")
    out.append("<h2>Runs</h2><table><tr><th>run</th><th>kind</th><th>control</th></tr>")
    for m in members:
        out.append(
            f"<tr><td>{e(m['label'])}</td><td>{e(m['kind'])}</td>"
            f"<td>{'yes' if m['control'] else ''}</td></tr>"
        )
    out.append("</table><h2>Settings that differ</h2>")
    if cmp["differing_config"]:
        head = "".join(f"<th>{e(m['label'])}</th>" for m in members)
        out.append(f"<table><tr><th>field</th>{head}</tr>")
        for k, vals in cmp["differing_config"].items():
            row_html = "".join(f"<td>{e(json.dumps(v))}</td>" for v in vals)
            out.append(f"<tr><td>{e(k)}</td>{row_html}</tr>")
        out.append("</table>")
    else:
        out.append("<p>None: the runs share every setting.</p>")
    out.append("<h2>Metrics (95% CI)</h2>")
    head = "".join(f"<th>{e(m['label'])}</th>" for m in members)
    out.append(f"<table><tr><th>metric</th>{head}</tr>")
    for name, rows in cmp["metrics"].items():
        cells: list[str] = []
        for r in rows:
            ci = (
                f" [{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
                if r["ci_low"] is not None and r["ci_high"] is not None
                else ""
            )
            delta = "" if r["delta"] is None or not r["delta"] else f" (Δ {r['delta']:+.3g})"
            cells.append(
                f'<td data-metric="{e(name)}" data-label="{e(r["label"])}" '
                f'data-value="{_attr(r["value"])}">{_num(r["value"])}{ci}{delta}</td>'
            )
        out.append(f"<tr><td>{e(name)}</td>{''.join(cells)}</tr>")
    out.append("</table><h2>Training loss</h2>")
    out.append(_curves_svg(members))
    out.append("<h2>Metrics by run</h2>")
    for name, rows in cmp["metrics"].items():
        out.append(f"<h3>{e(name)}</h3>{_bars_svg(name, rows)}")
    data = json.dumps(cmp, sort_keys=True).replace("</", "<\\/")
    out.append(f'<script type="application/json" id="experiment-data">{data}</script>')
    out.append("</body></html>")
    return "\n".join(out)
