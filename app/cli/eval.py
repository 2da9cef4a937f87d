"""``demoai eval``: run evaluations, list and show runs, compare, export, gate.

Forms::

    demoai eval run --model ID [--model ID2] --dataset D[@V] --input COL --reference COL \
        --metric em --metric f1 [--gate FILE --baseline RUN] [--detach] [--json]
    demoai eval list [--json]
    demoai eval show RUN [--worst METRIC] [--json]
    demoai eval compare RUN RUN... [--json]
    demoai eval export RUN --out FILE.csv|FILE.json
    demoai eval gate RUN --gate FILE [--baseline RUN] [--baseline-model ID]
    demoai eval metrics [--json]

A run that cannot start (unknown metric, missing column) fails before any job
exists (exit code 2); a failed gate exits with 4.
"""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import add_job_options, open_workspace, print_json, run_job

GATE_FAILED = 4


def register(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate models on a dataset; compare runs; gate")
    esub = p.add_subparsers(dest="eval_command", metavar="ACTION", required=True)

    r = esub.add_parser("run", help="evaluate one or more models on a dataset version")
    r.add_argument("--model", action="append", required=True, dest="models", metavar="ID")
    r.add_argument("--dataset", required=True, metavar="D[@V]")
    r.add_argument("--input", required=True, dest="input_column", metavar="COL")
    r.add_argument("--reference", dest="reference_column", metavar="COL")
    r.add_argument(
        "--choices",
        dest="choices_column",
        metavar="COL",
        help="column with the choices (multiple choice)",
    )
    r.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        metavar="NAME",
        help="metric name (repeat); default: em and f1",
    )
    r.add_argument(
        "--template",
        dest="prompt_template",
        metavar="TEXT",
        help="prompt template, e.g. 'Q: {input}\\nA:'",
    )
    r.add_argument("--chat", action="store_true", help="use the model's chat template")
    r.add_argument("--max-tokens", type=int, dest="max_tokens")
    r.add_argument("--temperature", type=float)
    r.add_argument("--stop", action="append", default=None)
    r.add_argument("--judge", dest="judge_model", metavar="ID")
    r.add_argument("--rubric")
    r.add_argument("--limit", type=int)
    r.add_argument("--threads", type=int)
    r.add_argument("--n-ctx", type=int, dest="n_ctx")
    r.add_argument("--seed", type=int)
    r.add_argument("--name")
    r.add_argument("--gate", metavar="FILE", help="thresholds JSON; exit 4 when the gate fails")
    r.add_argument("--baseline", metavar="RUN", help="baseline run for the gate")
    r.add_argument("--baseline-model", metavar="ID")
    r.add_argument("--json", action="store_true")
    add_job_options(r)
    r.set_defaults(func=cmd_run)

    ls = esub.add_parser("list", help="eval runs, newest first")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    sh = esub.add_parser("show", help="a run: config, aggregates with 95%% CIs")
    sh.add_argument("run")
    sh.add_argument("--worst", metavar="METRIC", help="also list the worst samples on METRIC")
    sh.add_argument("-n", type=int, default=5)
    sh.add_argument("--samples", action="store_true", help="include every sample (--json)")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_show)

    cp = esub.add_parser("compare", help="aggregates of several runs side by side")
    cp.add_argument("runs", nargs="+")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_compare)

    ex = esub.add_parser("export", help="write a run's results as CSV or JSON")
    ex.add_argument("run")
    ex.add_argument("--out", required=True)
    ex.add_argument("--format", choices=["csv", "json"])
    ex.set_defaults(func=cmd_export)

    g = esub.add_parser("gate", help="check a finished run against thresholds")
    g.add_argument("run")
    g.add_argument("--gate", required=True, metavar="FILE")
    g.add_argument("--baseline", metavar="RUN")
    g.add_argument("--baseline-model", metavar="ID")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_gate)

    m = esub.add_parser("metrics", help="the metrics that can be used")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_metrics)

    from app.cli.eval_perplexity import register as register_perplexity

    register_perplexity(esub)

    from app.cli.eval_harness import register as register_harness

    register_harness(esub)
    from app.cli.eval_agent import register as register_agent_eval

    register_agent_eval(esub)


def _config(args: argparse.Namespace) -> Any:
    from app.core.eval.runner import EvalConfig

    data: dict[str, Any] = {
        "models": args.models,
        "dataset": args.dataset,
        "input_column": args.input_column,
        "reference_column": args.reference_column,
        "metrics": args.metrics or ["exact_match", "f1"],
    }
    for key in (
        "choices_column",
        "prompt_template",
        "max_tokens",
        "temperature",
        "judge_model",
        "rubric",
        "limit",
        "threads",
        "n_ctx",
        "seed",
        "name",
        "stop",
    ):
        val = getattr(args, key, None)
        if val is not None:
            data[key] = val
    if args.chat:
        data["chat"] = True
    return EvalConfig.from_dict(data)


def cmd_run(args: argparse.Namespace) -> int:
    from app.core.eval.gate import gate_runs, load_thresholds
    from app.core.eval.runner import KIND, EvalStore, submit_eval

    ws = open_workspace(args)
    cfg = _config(args)
    thresholds = load_thresholds(args.gate) if args.gate else None
    if args.baseline:
        EvalStore(ws).get_run(args.baseline)  # fail before the run, not after
    job = submit_eval(ws, cfg)
    rc = run_job(ws, KIND, {}, detach=args.detach, job=job)
    if args.detach or rc != 0:
        return rc
    store = EvalStore(ws)
    out: dict[str, Any] = {"run_id": job.id, "aggregates": store.aggregates(job.id)}
    if not args.json:
        _print_aggregates(job.id, out["aggregates"])
    if thresholds is not None:
        res = gate_runs(
            ws, job.id, thresholds, baseline_run=args.baseline, baseline_model=args.baseline_model
        )
        out["gate"] = res.to_dict()
        if not args.json:
            print(res.describe())
        if args.json:
            print_json(out)
        return 0 if res.passed else GATE_FAILED
    if args.json:
        print_json(out)
    return 0


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def _print_aggregates(run_id: str, agg: dict[str, Any]) -> None:
    print(f"run {run_id}")
    for model, per in agg.items():
        print(f"  {model}")
        for metric, a in per.items():
            err = f"  ({a['errors']} errors)" if a.get("errors") else ""
            print(
                f"    {metric:<14} {_fmt(a['value']):>10}  95% CI [{_fmt(a['ci_low'])}, "
                f"{_fmt(a['ci_high'])}]  n={a['n']}{err}"
            )


def cmd_list(args: argparse.Namespace) -> int:
    from app.core.eval.runner import EvalStore

    runs = EvalStore(open_workspace(args)).list_runs()
    if args.json:
        print_json([r.to_dict() for r in runs])
        return 0
    if not runs:
        print("no eval runs")
    for r in runs:
        print(
            f"{r.id}  {r.state:<11} {r.dataset_ref[:24]:<24} {','.join(r.models)[:40]:<40} "
            f"{','.join(r.metrics)}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from app.core.eval.runner import EvalStore

    store = EvalStore(open_workspace(args))
    run = store.get_run(args.run)
    agg = store.aggregates(run.id)
    worst = (
        [s.to_dict() for s in store.worst_cases(run.id, args.worst, n=args.n)] if args.worst else []
    )
    if args.json:
        out = {"run": run.to_dict(), "aggregates": agg, "worst": worst}
        if args.samples:
            out["samples"] = [s.to_dict() for s in store.samples(run.id)]
        print_json(out)
        return 0
    print(f"state {run.state}  dataset {run.dataset_ref}  metrics {', '.join(run.metrics)}")
    for m, e in run.errors.items():
        print(f"  error: {m}: {e}")
    _print_aggregates(run.id, agg)
    if worst:
        print(f"worst {len(worst)} on {args.worst}:")
        for s in worst:
            pred = (s["prediction"] or "").replace("\n", " ")[:60]
            print(f"  #{s['idx']} {s['model_id']}: {s['scores']} pred={pred!r}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from app.core.eval.runner import EvalStore

    rows = EvalStore(open_workspace(args)).compare(args.runs)
    if args.json:
        print_json(rows)
        return 0
    print(f"{'run':<24} {'model':<28} {'metric':<14} {'value':>10}  95% CI")
    for r in rows:
        print(
            f"{r['run_id']:<24} {r['model'][:28]:<28} {r['metric']:<14} {_fmt(r['value']):>10}  "
            f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from app.core.eval.runner import EvalStore

    path = EvalStore(open_workspace(args)).export(args.run, args.out, args.format)
    print(path)
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from app.core.eval.gate import gate_runs, load_thresholds

    ws = open_workspace(args)
    res = gate_runs(
        ws,
        args.run,
        load_thresholds(args.gate),
        baseline_run=args.baseline,
        baseline_model=args.baseline_model,
    )
    if args.json:
        print_json(res.to_dict())
    else:
        print(res.describe())
    return 0 if res.passed else GATE_FAILED


def cmd_metrics(args: argparse.Namespace) -> int:
    from app.core.eval.metrics import metrics

    specs = [m.to_dict() for m in metrics()]
    if args.json:
        print_json(specs)
    else:
        for s in specs:
            print(f"{s['name']:<14} {s['kind']:<10} {s['description']}")
    return 0
