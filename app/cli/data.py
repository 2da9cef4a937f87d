"""``demoai data import|list|show|versions|diff|export|revert|apply-recipe|synth|augment``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from app.cli.common import add_job_options, open_workspace, print_json, run_job


def register(sub: Any) -> None:
    p = sub.add_parser("data", help="datasets: import, versions, diff, export, recipes")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    imp = dsub.add_parser("import", help="import a file or HF dataset folder as a new dataset")
    imp.add_argument("path")
    imp.add_argument("--name", help="dataset name (default: the file name)")
    imp.add_argument(
        "--format",
        choices=["csv", "tsv", "json", "jsonl", "parquet", "hf", "text", "paragraphs"],
        help="input format (default: from the extension; text = one row per line)",
    )
    imp.add_argument(
        "--skip-bad", action="store_true", help="skip bad rows and keep a report (default: fail)"
    )
    imp.add_argument(
        "--replace-invalid",
        action="store_true",
        help="keep rows whose text is not UTF-8: invalid bytes become U+FFFD, NUL bytes are "
        "dropped, the lines changed are counted (default: they are bad rows)",
    )
    imp.add_argument("--json", action="store_true", help="print the result as JSON")
    add_job_options(imp)
    imp.set_defaults(func=cmd_import)

    ls = dsub.add_parser("list", help="datasets, newest first")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    show = dsub.add_parser("show", help="one dataset: current version, columns, first rows")
    show.add_argument("dataset", help="id, id prefix or name; DATASET@VERSION for a version")
    show.add_argument("--rows", type=int, default=5, help="rows to show (default 5)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    ver = dsub.add_parser("versions", help="versions of a dataset, oldest first")
    ver.add_argument("dataset")
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(func=cmd_versions)

    diff = dsub.add_parser("diff", help="rows and columns that changed between two versions")
    diff.add_argument("dataset")
    diff.add_argument("v1")
    diff.add_argument("v2")
    diff.add_argument("--key", help="a column that identifies rows (to count changed rows)")
    diff.add_argument("--limit", type=int, default=20, help="changed rows to list (default 20)")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=cmd_diff)

    exp = dsub.add_parser("export", help="write a version as JSONL, CSV, Parquet or an HF folder")
    exp.add_argument("dataset", help="DATASET or DATASET@VERSION")
    exp.add_argument("--format", required=True, choices=["jsonl", "csv", "parquet", "hf"])
    exp.add_argument("--out", required=True, help="file (or folder for hf) to write")
    exp.add_argument("--force", action="store_true", help="replace --out if it exists")
    exp.set_defaults(func=cmd_export)

    rev = dsub.add_parser("revert", help="make an earlier version current again")
    rev.add_argument("dataset")
    rev.add_argument("version")
    rev.set_defaults(func=cmd_revert)

    rec = dsub.add_parser("apply-recipe", help="apply a recipe (JSON list of steps) to a dataset")
    rec.add_argument("dataset", help="DATASET or DATASET@VERSION")
    rec.add_argument("recipe", help="recipe JSON file")
    rec.add_argument("--json", action="store_true", help="print the result as JSON")
    add_job_options(rec)
    rec.set_defaults(func=cmd_apply_recipe)

    syn = dsub.add_parser(
        "synth", help="self-instruct: new instruction rows from seed tasks with a library model"
    )
    syn.add_argument("dataset", help="DATASET or DATASET@VERSION with the seed tasks")
    syn.add_argument("--model", required=True, help="library model id or name")
    syn.add_argument("--n", type=int, default=10, help="instructions to generate (default 10)")
    syn.add_argument("--instruction-column", default="instruction")
    syn.add_argument("--input-column", default="input", help="'' for none")
    syn.add_argument("--output-column", default="output")
    syn.add_argument("--generate-input", action="store_true", help="also ask for an input")
    syn.add_argument("--rouge-threshold", type=float, default=0.7)
    syn.add_argument("--max-attempts", type=int, help="proposals to try (default max(20, 10 n))")
    _sampling_options(syn, temperature=0.8)
    syn.add_argument("--json", action="store_true", help="print the result as JSON")
    add_job_options(syn)
    syn.set_defaults(func=cmd_synth)

    aug = dsub.add_parser("augment", help="N paraphrases of a column per row with a library model")
    aug.add_argument("dataset", help="DATASET or DATASET@VERSION")
    aug.add_argument("--model", required=True, help="library model id or name")
    aug.add_argument("--column", required=True, help="the text column to paraphrase")
    aug.add_argument("--n", type=int, default=1, help="paraphrases per row (default 1)")
    aug.add_argument("--max-rows", type=int, help="only the first rows")
    aug.add_argument("--near-dup-threshold", type=float, default=0.8)
    aug.add_argument(
        "--prompt",
        metavar="NAME[@VERSION]",
        help="a library prompt with {{text}} instead of the built-in few-shot prompt",
    )
    _sampling_options(aug, temperature=0.9)
    aug.add_argument("--json", action="store_true", help="print the result as JSON")
    add_job_options(aug)
    aug.set_defaults(func=cmd_augment)

    ops = dsub.add_parser("ops", help="the preparation operations and their parameters")
    ops.add_argument("--json", action="store_true")
    ops.set_defaults(func=cmd_ops)


def _sampling_options(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--seed", type=int, default=0, help="same seed -> same rows (default 0)")
    p.add_argument("--temperature", type=float, default=temperature)
    p.add_argument("--max-tokens", type=int, default=64)


def _run_and_report(
    ws: Any, kind: str, params: dict[str, Any], args: argparse.Namespace, title: str
) -> int:
    """Run the job; on success print its result (dataset id, version, rows) on stdout."""
    from app.core.jobs.store import JobService

    job = JobService(ws).submit(kind, params, title=title)
    rc = run_job(ws, kind, params, detach=args.detach, title=title, job=job)
    if rc == 0 and not args.detach:
        result = JobService(ws).get(job.id).result or {}
        if getattr(args, "json", False):
            print_json(result)
        else:
            print(" ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, list)))
    return rc


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def cmd_import(args: argparse.Namespace) -> int:
    ws = open_workspace(args)
    params: dict[str, Any] = {
        "path": str(Path(args.path).expanduser().absolute()),
        "name": args.name,
        "format": args.format,
        "on_bad": "skip" if args.skip_bad else "error",
        "replace_invalid": args.replace_invalid,
    }
    return _run_and_report(ws, "data.import", params, args, f"Import {args.path}")


def cmd_list(args: argparse.Namespace) -> int:
    from app.core.data.store import DatasetStore

    ws = open_workspace(args)
    items = DatasetStore(ws).list_datasets()
    if args.json:
        print_json([d.to_dict() for d in items])
        return 0
    if not items:
        print("no datasets (import one with `demoai data import FILE`)")
        return 0
    for d in items:
        ver = (d.current_version or "")[:12]
        print(f"{d.id}  {d.name:<30} {d.rows or 0:>10,} rows  {ver}  {_when(d.created_at)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from app.core.data.store import DatasetStore

    ws = open_workspace(args)
    store = DatasetStore(ws)
    name, _, ver = args.dataset.partition("@")
    ds = store.get(name)
    v = store.version(ds.id, ver or None)
    pf = store.parquet_file(f"{ds.id}@{v.hash}")
    head = (
        next(pf.iter_batches(batch_size=max(args.rows, 1))).to_pylist()[: args.rows]
        if v.rows
        else []
    )
    if args.json:
        print_json({"dataset": ds.to_dict(), "version": v.to_dict(), "head": head})
        return 0
    print(f"{ds.name} ({ds.id})")
    print(f"  version   {v.hash}{'  (current)' if v.hash == ds.current_version else ''}")
    print(f"  rows      {v.rows:,}")
    print(f"  operation {v.operation.get('name')}  {v.message}")
    print("  columns   " + ", ".join(f"{c['name']}: {c['type']}" for c in v.schema))
    for row in head:
        print("  " + str(row)[:200])
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from app.core.data.store import DatasetStore

    ws = open_workspace(args)
    store = DatasetStore(ws)
    ds = store.get(args.dataset)
    versions = store.versions(ds.id)
    if args.json:
        print_json([{**v.to_dict(), "current": v.hash == ds.current_version} for v in versions])
        return 0
    for v in versions:
        mark = "*" if v.hash == ds.current_version else " "
        parent = (v.parent_hash or "-")[:12]
        print(
            f"{mark} {v.short}  parent {parent:<12} {v.rows:>10,} rows  "
            f"{v.operation.get('name', ''):<14} {v.message}  {_when(v.created_at)}"
        )
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from app.core.data.diff import diff_versions, read_version_changes

    ws = open_workspace(args)
    d = diff_versions(ws, args.dataset, args.v1, args.v2, key=args.key)
    if args.json:
        print_json(d.to_dict())
        return 0
    print(
        f"{d.old_label} ({d.old[:12]}) -> {d.new_label} ({d.new[:12]}): "
        f"{d.rows_old:,} -> {d.rows_new:,} rows"
    )
    print(
        f"  rows changed {d.rows_changed:,}, added {d.rows_added:,}, "
        f"removed {d.rows_removed:,}, moved {d.rows_moved:,}"
    )
    if d.columns_added:
        print(f"  columns added: {', '.join(d.columns_added)}")
    if d.columns_removed:
        print(f"  columns removed: {', '.join(d.columns_removed)}")
    for t in d.type_changed:
        print(f"  column {t['column']}: {t['old']} -> {t['new']}")
    shown = read_version_changes(ws, d, 0, args.limit)

    def cut(v: object) -> str:
        s = json.dumps(v, ensure_ascii=False, default=str)
        return s if len(s) <= 80 else s[:79] + "…"

    for c in shown:
        if c.kind == "changed":
            assert c.before is not None and c.after is not None
            cells = "; ".join(f"{k}: {cut(c.before[k])} -> {cut(c.after[k])}" for k in c.changed)
            print(f"  row {c.new_row}: changed {cells}")
        elif c.kind == "moved":
            print(f"  row {c.new_row}: moved from row {c.old_row}")
        elif c.kind == "added":
            print(f"  row {c.new_row}: added {cut(c.after)}")
        else:
            print(f"  old row {c.old_row}: removed {cut(c.before)}")
    if d.changes > len(shown):
        print(f"  … {d.changes - len(shown):,} more changes (--limit N shows more)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from app.core.data.export import export_version

    ws = open_workspace(args)
    out = export_version(ws, args.dataset, args.format, args.out, overwrite=args.force)
    print(out)
    return 0


def cmd_revert(args: argparse.Namespace) -> int:
    from app.core.data.store import DatasetStore

    ws = open_workspace(args)
    v = DatasetStore(ws).revert(args.dataset, args.version)
    print(f"{v.dataset_id} is at {v.hash}")
    return 0


def cmd_apply_recipe(args: argparse.Namespace) -> int:
    from app.core.data.recipes import Recipe
    from app.core.data.store import DatasetStore

    ws = open_workspace(args)
    recipe = Recipe.load(args.recipe)  # validated before a job is queued
    v = DatasetStore(ws).resolve(args.dataset)
    params = {"dataset": f"{v.dataset_id}@{v.hash}", "steps": recipe.to_dict()["steps"]}
    return _run_and_report(ws, "data.apply", params, args, f"Recipe on {v.dataset_id}")


def cmd_ops(args: argparse.Namespace) -> int:
    from app.core.data.ops import OPS

    items: list[dict[str, Any]] = [
        {
            "name": s.name,
            "title": s.title,
            "description": s.description,
            "required": list(s.required),
            "defaults": s.defaults,
            "streaming": s.streaming,
        }
        for s in OPS.values()
    ]
    if args.json:
        print_json(items)
        return 0
    for it in items:
        req = ", ".join(it["required"])
        print(f"{it['name']:<15} {it['description']}" + (f" (needs: {req})" if req else ""))
    return 0


def _model_id(ws: Any, ref: str) -> str:
    from app.core.models.registry import ModelRegistry

    return ModelRegistry(ws).get(ref).id


def cmd_synth(args: argparse.Namespace) -> int:
    from app.core.data.store import DatasetStore

    ws = open_workspace(args)
    v = DatasetStore(ws).resolve(args.dataset)
    params: dict[str, Any] = {
        "dataset": f"{v.dataset_id}@{v.hash}",
        "model": _model_id(ws, args.model),
        "n_new": args.n,
        "instruction_column": args.instruction_column,
        "input_column": args.input_column or None,
        "output_column": args.output_column,
        "generate_input": args.generate_input,
        "seed": args.seed,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "rouge_threshold": args.rouge_threshold,
        "max_attempts": args.max_attempts,
    }
    return _run_and_report(ws, "data.self_instruct", params, args, f"Self-instruct {v.dataset_id}")


def cmd_augment(args: argparse.Namespace) -> int:
    from app.core.data.store import DatasetStore

    ws = open_workspace(args)
    v = DatasetStore(ws).resolve(args.dataset)
    params: dict[str, Any] = {
        "dataset": f"{v.dataset_id}@{v.hash}",
        "model": _model_id(ws, args.model),
        "column": args.column,
        "n": args.n,
        "max_rows": args.max_rows,
        "near_dup_threshold": args.near_dup_threshold,
        "seed": args.seed,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
    }
    if args.prompt:
        from app.core.agents.prompts import PromptStore
        from app.core.data.synth import check_paraphrase_template
        from app.core.errors import ConfigError

        name, _, ver = args.prompt.partition("@")
        if ver and not ver.isdigit():
            raise ConfigError(f"Bad prompt version {ver!r}.", "Use NAME or NAME@VERSION.")
        text = PromptStore(ws.db).get(name, int(ver) if ver else None).text
        check_paraphrase_template(text)  # fail before the job starts
        params["prompt_template"] = text
    return _run_and_report(ws, "data.augment", params, args, f"Augment {v.dataset_id}")
