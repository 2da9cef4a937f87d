"""``demoai eval perplexity``: perplexity of a whole text (a file or a dataset column).

Form::

    demoai eval perplexity --model M [--model M2] (--text FILE | --dataset D[@V] --column C) \
        [--n-ctx N] [--method llama_cpp|sliding] [--stride N] [--threads N] [--name NAME] \
        [--detach] [--json]

The run is an eval run like the others (``demoai eval show/compare/export/gate``):
one sample per window, the aggregate ``corpus_perplexity`` = exp(sum nll / sum tokens)
with a bootstrap 95% CI over windows. A text shorter than two contexts, a missing
column or an unreadable file fails before any job exists (exit code 2).
"""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import add_job_options, open_workspace, print_json, run_job


def register(esub: Any) -> None:
    p = esub.add_parser(
        "perplexity",
        help="perplexity of a whole text (file or dataset column), llama.cpp-style by default",
    )
    p.add_argument("--model", action="append", required=True, dest="models", metavar="ID")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", dest="text_path", metavar="FILE", help="a UTF-8 text file")
    src.add_argument("--dataset", metavar="D[@V]", help="a dataset version (with --column)")
    p.add_argument("--column", metavar="C", help="the dataset's text column (rows joined)")
    p.add_argument("--n-ctx", type=int, default=512, dest="n_ctx", help="window (default 512)")
    p.add_argument(
        "--method",
        choices=["llama_cpp", "sliding"],
        default="llama_cpp",
        help="llama_cpp: as llama-perplexity (second half of each chunk scored); "
        "sliding: the HF guide's windows, every token scored once",
    )
    p.add_argument("--stride", type=int, help="sliding only (default: the context)")
    p.add_argument("--threads", type=int)
    p.add_argument("--bootstrap", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--name")
    p.add_argument("--json", action="store_true")
    add_job_options(p)
    p.set_defaults(func=cmd_perplexity)


def _config(args: argparse.Namespace) -> Any:
    from app.core.errors import ConfigError
    from app.core.eval.corpus import PerplexityConfig

    if args.dataset and not args.column:
        raise ConfigError("--dataset needs --column (the text column).")
    if args.column and not args.dataset:
        raise ConfigError("--column needs --dataset.")
    data: dict[str, Any] = {"models": args.models, "method": args.method, "n_ctx": args.n_ctx}
    if args.text_path:
        data["text_path"] = args.text_path
    else:
        data["dataset"] = args.dataset
        data["column"] = args.column
    for key in ("stride", "threads", "bootstrap", "seed", "name"):
        val = getattr(args, key, None)
        if val is not None:
            data[key] = val
    return PerplexityConfig.from_dict(data)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def cmd_perplexity(args: argparse.Namespace) -> int:
    from app.core.eval.corpus import METRIC, submit_perplexity
    from app.core.eval.runner import KIND, EvalStore, model_label

    ws = open_workspace(args)
    job = submit_perplexity(ws, _config(args))
    rc = run_job(ws, KIND, {}, detach=args.detach, job=job)
    if args.detach or rc != 0:
        return rc
    store = EvalStore(ws)
    run = store.get_run(job.id)
    agg = store.aggregates(job.id)
    windows = (run.summary or {}).get("windows", {})
    if args.json:
        print_json({"run_id": job.id, "aggregates": agg, "windows": windows})
        return 0
    print(f"run {job.id}  ({run.config.get('method')}, n_ctx {run.config.get('n_ctx')})")
    for model, per in agg.items():
        a = per.get(METRIC, {})
        v, lo, hi = a.get("value"), a.get("ci_low"), a.get("ci_high")
        print(
            f"  {model_label(ws, model)}: perplexity {_fmt(v)}  95% CI [{_fmt(lo)}, {_fmt(hi)}]  "
            f"windows {a.get('n')}"
        )
    return 0
