"""``demoai eval agent``: run agent versions x models on a dataset of tasks.

Form::

    demoai eval agent --agent NAME[@V] [--agent ...] --dataset D[@V] --input COL \
        [--reference COL] [--expected-tools COL] [--checker COL] \
        [--model M ...] | [--base-url URL [--api-key-env VAR] [--model-name NAME]] \
        [--limit N] [--n-ctx N] [--bootstrap N] [--seed N] [--name NAME] [--detach] [--json]

The run is an eval run like the others (``demoai eval show/compare/export/gate``); each
task's agent run is stored with the Agents pane's runs (``demoai agent runs``). A missing
column, agent or model, or a bad task cell fails before any job exists (exit code 2).
"""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import add_job_options, open_workspace, print_json, run_job


def register(esub: Any) -> None:
    p = esub.add_parser(
        "agent", help="evaluate agents on a dataset of tasks (success, tool-call accuracy, ...)"
    )
    p.add_argument("--agent", action="append", required=True, dest="agents", metavar="NAME[@V]")
    p.add_argument("--dataset", required=True, metavar="D[@V]")
    p.add_argument("--input", required=True, dest="input_column", metavar="COL")
    p.add_argument("--reference", dest="reference_column", metavar="COL",
                   help="the final answer must contain this (normalised)")  # fmt: skip
    p.add_argument("--expected-tools", dest="tools_column", metavar="COL",
                   help='expected tool calls: JSON [{"name": ..., "arguments": {...}}]')  # fmt: skip
    p.add_argument("--checker", dest="checker_column", metavar="COL",
                   help='a regex on the answer, or JSON {"file": PATH, "content": REGEX}')  # fmt: skip
    p.add_argument("--model", action="append", dest="model_refs", metavar="ID",
                   help="library model (repeatable; default: each agent's own model)")  # fmt: skip
    p.add_argument("--base-url", help="an OpenAI-compatible server instead of library models")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable with its key")
    p.add_argument("--model-name", help="model name to send to --base-url")
    p.add_argument("--limit", type=int, help="the first N tasks only")
    p.add_argument("--n-ctx", type=int, dest="n_ctx", help="context of the local model (4096)")
    p.add_argument("--bootstrap", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--name")
    p.add_argument("--json", action="store_true")
    add_job_options(p)
    p.set_defaults(func=cmd_agent_eval)


def _config(args: argparse.Namespace) -> Any:
    from app.core.eval.agent_eval import AgentEvalConfig

    data: dict[str, Any] = {
        "agents": args.agents,
        "dataset": args.dataset,
        "input_column": args.input_column,
    }
    for key in (
        "reference_column", "tools_column", "checker_column", "model_refs", "base_url",
        "api_key_env", "model_name", "limit", "n_ctx", "bootstrap", "seed", "name",
    ):  # fmt: skip
        val = getattr(args, key, None)
        if val is not None:
            data[key] = val
    return AgentEvalConfig.from_dict(data)


def _fmt(x: float | None, points: float = 1.0) -> str:
    return "-" if x is None else f"{x * points:.3g}"


def cmd_agent_eval(args: argparse.Namespace) -> int:
    import app.workers  # noqa: F401  (registers the eval.agent kind)
    from app.core.eval.agent_eval import KIND, METRICS, submit_agent_eval
    from app.core.eval.metrics import get_metric
    from app.core.eval.runner import EvalStore

    ws = open_workspace(args)
    job = submit_agent_eval(ws, _config(args))
    rc = run_job(ws, KIND, {}, detach=args.detach, job=job)
    if args.detach or rc != 0:
        return rc
    store = EvalStore(ws)
    agg = store.aggregates(job.id)
    if args.json:
        runs = [
            {"subject": s.model_id, "idx": s.idx, **s.scores,
             "agent_run_id": s.extra.get("agent_run_id"), "status": s.extra.get("status")}
            for s in store.samples(job.id)
        ]  # fmt: skip
        print_json({"run_id": job.id, "aggregates": agg, "tasks": runs})
        return 0
    print(f"run {job.id}")
    for subject, per in agg.items():
        print(f"  {subject}")
        for m in METRICS:
            a = per.get(m, {})
            pts = get_metric(m).points
            unit = "%" if pts == 100 else ""
            print(
                f"    {m:14s} {_fmt(a.get('value'), pts)}{unit}  95% CI "
                f"[{_fmt(a.get('ci_low'), pts)}, {_fmt(a.get('ci_high'), pts)}]  n={a.get('n')}"
            )
    print("agent runs: demoai agent runs --agent NAME  (each task's run is stored there)")
    return 0
