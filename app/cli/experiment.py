"""``demoai experiment``: a group of runs with one control, compared side by side.

Forms::

    demoai experiment create NAME [--description TEXT]
    demoai experiment add NAME RUN [--control] [--label TEXT]   # pipeline run, train job, eval run
    demoai experiment compare NAME [--json]
    demoai experiment report NAME --out FILE.html

See docs/pipelines.md (Experiments).
"""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import open_workspace, print_json


def register(sub: Any) -> None:
    p = sub.add_parser("experiment", help="groups of runs with a control, compared side by side")
    esub = p.add_subparsers(dest="experiment_command", metavar="ACTION", required=True)

    c = esub.add_parser("create", help="a new, empty experiment")
    c.add_argument("name")
    c.add_argument("--description", default="")
    c.set_defaults(func=cmd_create)

    a = esub.add_parser("add", help="add a pipeline run, a fine-tuning job or an eval run")
    a.add_argument("name")
    a.add_argument("run")
    a.add_argument("--control", action="store_true", help="this run is the control")
    a.add_argument("--label", default="", help="how the run is named in the comparison")
    a.set_defaults(func=cmd_add)

    cp = esub.add_parser("compare", help="settings that differ and metrics with 95%% CIs")
    cp.add_argument("name")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_compare)

    r = esub.add_parser("report", help="a self-contained HTML report with its plots")
    r.add_argument("name")
    r.add_argument("--out", required=True, metavar="FILE.html")
    r.set_defaults(func=cmd_report)


def cmd_create(args: argparse.Namespace) -> int:
    from app.core.runs.experiments import ExperimentStore

    ExperimentStore(open_workspace(args)).create(args.name, args.description)
    print(args.name)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from app.core.runs.experiments import ExperimentStore

    ExperimentStore(open_workspace(args)).add(
        args.name, args.run, label=args.label, control=args.control
    )
    print(f"{args.name}: added {args.label or args.run}" + (" (control)" if args.control else ""))
    return 0


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def cmd_compare(args: argparse.Namespace) -> int:
    from app.core.runs.experiments import ExperimentStore

    cmp = ExperimentStore(open_workspace(args)).compare(args.name)
    if args.json:
        print_json(cmp)
        return 0
    labels = [m["label"] for m in cmp["members"]]
    width = max(14, *(len(x) for x in labels))
    print(f"experiment {cmp['experiment']}  (control: {cmp['control'] or 'none'})")
    print("settings that differ:" if cmp["differing_config"] else "settings: all the same")
    for k, vals in cmp["differing_config"].items():
        print(f"  {k:<24} " + "  ".join(f"{str(v)[:width]:<{width}}" for v in vals))
    print("metrics (value [95% CI], Δ vs control):")
    print(f"  {'':<24} " + "  ".join(f"{x:<{width}}" for x in labels))
    for name, rows in cmp["metrics"].items():
        cells = []
        for r in rows:
            ci = f" [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if r["ci_low"] is not None else ""
            delta = f" Δ{r['delta']:+.3g}" if r["delta"] else ""
            cells.append(f"{_fmt(r['value'])}{ci}{delta}")
        print(f"  {name:<24} " + "  ".join(f"{c:<{width}}" for c in cells))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from app.core.runs.experiments import ExperimentStore, report_html
    from app.core.store.files import atomic_write_text

    cmp = ExperimentStore(open_workspace(args)).compare(args.name)
    atomic_write_text(args.out, report_html(cmp))
    print(args.out)
    return 0
