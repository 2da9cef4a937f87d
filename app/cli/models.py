"""``demoai models list|show|import|discover|search|pull|inspect|rm``."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import ProgressPrinter, add_job_options, open_workspace, print_json, run_job


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="the model library: import, discover, download, remove")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    ls = msub.add_parser("list", help="registered models, newest first")
    ls.add_argument("filter", nargs="?", help="text to match in id, name, architecture, tags")
    ls.add_argument("--format", choices=["hf", "gguf", "lora"])
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    show = msub.add_parser("show", help="metadata, files and lineage of one model")
    show.add_argument("model", help="id, unique id prefix, or name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    imp = msub.add_parser("import", help="import a .gguf file or a Hugging Face model folder")
    imp.add_argument("path")
    mode = imp.add_mutually_exclusive_group()
    mode.add_argument(
        "--copy",
        dest="copy",
        action="store_true",
        default=True,
        help="copy into the workspace (default)",
    )
    mode.add_argument(
        "--reference", dest="copy", action="store_false", help="register the files where they are"
    )
    imp.add_argument("--name", help="display name (default: file or folder name)")
    imp.add_argument(
        "--trust-pickle",
        action="store_true",
        help="accept pickle-only weights (.bin/.pt): they can run code; loaded with weights_only=True",
    )
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(func=cmd_import)

    disc = msub.add_parser(
        "discover", help="find models already on this machine (HF cache, LM Studio, Ollama)"
    )
    disc.add_argument("paths", nargs="*", help="extra files or folders to search")
    disc.add_argument("--no-defaults", action="store_true", help="search only the given paths")
    disc.add_argument("--json", action="store_true")
    disc.set_defaults(func=cmd_discover)

    search = msub.add_parser("search", help="search the Hugging Face Hub (network must be on)")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=20)
    search.add_argument("--files", metavar="REPO", help="list the files of REPO instead")
    search.add_argument("--json", action="store_true")
    search.set_defaults(func=cmd_search)

    pull = msub.add_parser("pull", help="download a model from the Hub (network must be on)")
    pull.add_argument("repo", help="organisation/name")
    pull.add_argument(
        "--file", dest="files", action="append", help="a file of the repo (repeat); e.g. one GGUF"
    )
    pull.add_argument("--revision", help="branch, tag or commit (default: main)")
    pull.add_argument("--name")
    add_job_options(pull)
    pull.set_defaults(func=cmd_pull)

    insp = msub.add_parser(
        "inspect",
        help="architecture from the headers; weight statistics, LoRA updates, comparison (a job)",
    )
    insp.add_argument("model", help="id, unique id prefix, name, or a path to a file or folder")
    insp.add_argument(
        "--stats",
        action="store_true",
        help="weight statistics per tensor, outliers flagged (and LoRA update norms for adapters)",
    )
    insp.add_argument(
        "--compare",
        metavar="OTHER",
        help="per-tensor relative change and cosine against OTHER (a GGUF export: its "
        "quantization error)",
    )
    insp.add_argument(
        "--prompt",
        metavar="TEXT",
        help="run TEXT through the model: the greedy answer's token probabilities with the "
        "top-5 alternatives; for HF models also a logit lens and attention maps",
    )
    insp.add_argument(
        "--max-tokens", type=int, default=24, help="answer length for --prompt (default 24)"
    )
    insp.add_argument("--json", action="store_true", help="print the whole report as JSON")
    insp.set_defaults(func=cmd_inspect)

    rm = msub.add_parser("rm", help="remove a model (deletes only files the workspace owns)")
    rm.add_argument("model")
    rm.add_argument(
        "--force", action="store_true", help="remove even if other models derive from it"
    )
    rm.add_argument("--json", action="store_true")
    rm.set_defaults(func=cmd_rm)


def _human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _human_params(n: int | None) -> str:
    if not n:
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def cmd_list(args: argparse.Namespace) -> int:
    from app.core.models import ModelRegistry

    ws = open_workspace(args)
    models = ModelRegistry(ws).list(args.filter, args.format)
    if args.json:
        print_json([m.to_dict(chat_template=False) for m in models])
        return 0
    if not models:
        print("No models yet. Try `demoai models discover` or `demoai models import PATH`.")
        return 0
    print(f"{'ID':40} {'FORMAT':6} {'ARCH':12} {'PARAMS':>7} {'QUANT':8} {'SIZE':>9}  NAME")
    for m in models:
        print(
            f"{m.id:40} {m.format:6} {(m.architecture or '-'):12} "
            f"{_human_params(m.parameters):>7} {(m.quantization or '-'):8} "
            f"{_human_size(m.size_bytes):>9}  {m.name}{'' if m.owned else '  (referenced)'}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from app.core.models import ModelRegistry

    ws = open_workspace(args)
    reg = ModelRegistry(ws)
    m = reg.get(args.model)
    files = reg.files(m.id)
    lineage = reg.lineage(m.id)
    if args.json:
        print_json(
            {
                **m.to_dict(),
                "files": [f.__dict__ for f in files],
                "lineage": lineage.to_dict(),
            }
        )
        return 0
    rows = [
        ("Model", m.id),
        ("Name", m.name),
        ("Format", m.format),
        ("Architecture", m.architecture or "-"),
        ("Parameters", f"{_human_params(m.parameters)} ({m.parameters or 0:,})"),
        ("Quantization", m.quantization or "-"),
        ("Context", str(m.context_length or "-")),
        ("License", m.license or "-"),
        ("Chat template", "yes" if m.has_chat_template else "no"),
        ("Source", f"{m.source_kind} {m.source_ref or ''}".strip()),
        ("Path", f"{m.path} ({'owned' if m.owned else 'referenced in place'})"),
        ("Size", _human_size(m.size_bytes)),
        ("sha256", m.sha256),
    ]
    if m.tags:
        rows.append(("Tags", ", ".join(m.tags)))
    if m.notes:
        rows.append(("Notes", m.notes))
    if m.extra.get("weights_format") == "pickle":
        rows.append(("Trust", "pickle weights trusted by the user (loaded with weights_only=True)"))
    for label, value in rows:
        print(f"{label:14} {value}")
    print("Files:")
    for f in files:
        print(f"  {_human_size(f.size):>9}  {f.sha256[:16]}  {f.relpath}")
    if lineage.parents or lineage.children:
        print("Lineage:")
        for e in lineage.parents:
            print(f"  {e.relation} {e.model_id} {e.name or '(removed)'}")
        for e in lineage.children:
            print(f"  <- {e.model_id} {e.name or '(removed)'} ({e.relation})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from app.core.export.package import import_package, is_package
    from app.core.models import ModelRegistry

    ws = open_workspace(args)
    printer = ProgressPrinter()
    try:
        if is_package(args.path):  # a DemoAI model package: verified, then registered
            rec = import_package(ws, args.path, name=args.name)
        else:
            rec = ModelRegistry(ws).import_path(
                args.path,
                copy=args.copy,
                name=args.name,
                trust_pickle=args.trust_pickle,
                progress=printer.show,
            )
    finally:
        printer.done()
    if args.json:
        print_json(rec.to_dict(chat_template=False))
    else:
        how = "copied into the workspace" if rec.owned else "referenced in place"
        print(f"Imported {rec.id} ({rec.format}, {_human_size(rec.size_bytes)}, {how})")
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from app.core.models import ModelRegistry
    from app.core.models.discover import discover

    ws = open_workspace(args)
    cands = discover(ModelRegistry(ws), args.paths, include_defaults=not args.no_defaults)
    if args.json:
        print_json([c.to_dict() for c in cands])
        return 0
    if not cands:
        print("No models found.")
        return 0
    for c in cands:
        mark = f"registered as {c.model_id}" if c.already_registered else "new"
        print(f"{c.format:5} {_human_size(c.size_bytes):>9}  {c.source:9} {mark:30} {c.path}")
    print("Import one with `demoai models import PATH [--reference]`.")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from app.core.models import hub

    ws = open_workspace(args)
    if args.files:
        commit, files = hub.list_repo_files(ws, args.files)
        if args.json:
            print_json({"commit": commit, "files": [f.to_dict() for f in files]})
        else:
            for f in files:
                print(f"{_human_size(f.size):>9}  {f.path}")
        return 0
    found = hub.search(ws, args.query, args.limit)
    if args.json:
        print_json(found)
    else:
        for m in found:
            print(f"{m['id']:60} {m['downloads'] or 0:>10} downloads")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from app.core.models import hub

    ws = open_workspace(args)
    files = hub.validate_pull_params(args.repo, args.files, args.revision)
    hub.require_online(ws)
    params = {"repo_id": args.repo, "files": files, "revision": args.revision, "name": args.name}
    return run_job(ws, "models.pull", params, detach=args.detach, title=f"Download {args.repo}")


def cmd_rm(args: argparse.Namespace) -> int:
    from app.core.models import ModelRegistry

    ws = open_workspace(args)
    res = ModelRegistry(ws).remove(args.model, force=args.force)
    if args.json:
        print_json(res.__dict__)
        return 0
    print(f"Removed {res.model_id}: freed {_human_size(res.bytes_freed)}.")
    if res.kept_path:
        print(f"Its files were referenced, not owned, and were left at {res.kept_path}.")
    if res.dependants:
        print(
            f"Models derived from it (lineage now shows it as removed): {', '.join(res.dependants)}"
        )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from app.cli.common import wait_job
    from app.core.inspect.job import REPORT_NAME, inspect_model, load_report, resolve
    from app.core.jobs.store import JobService
    from app.workers.supervisor import Supervisor

    ws = open_workspace(args)
    if not (args.stats or args.compare or args.prompt):
        report = inspect_model(ws, args.model)  # headers only: no job needed
    else:
        target = resolve(ws, args.model)  # a clear error before a job is queued
        if args.compare:
            resolve(ws, args.compare)
        params = {
            "model": args.model,
            "stats": bool(args.stats),
            "compare": args.compare,
            "prompt": args.prompt,
            "max_tokens": args.max_tokens,
        }
        job = JobService(ws).submit("models.inspect", params, title=f"Inspect {target.label}")
        rc = wait_job(Supervisor(ws), job.id)
        if rc:
            return rc
        report = load_report(JobService(ws).get(job.id).run_dir / REPORT_NAME)
    if args.json:
        print_json(report)
        return 0
    _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    arch = report["architecture"]
    print(
        f"{report['model']['name']}  ({arch['kind']}, {arch['tensor_count']} tensors, "
        f"{_human_params(arch['params'])} parameters, {_human_size(arch['nbytes'])})"
    )
    for dtype, d in sorted(arch["dtypes"].items()):
        print(
            f"  {dtype:8} {d['tensors']:5} tensors {_human_params(d['params']):>8} "
            f"{_human_size(d['nbytes']):>10}"
        )
    print("Layers:")
    for row in arch["layers"]:
        label = "(other)" if row["layer"] is None else str(row["layer"])
        print(
            f"  {label:8} {row['tensors']:4} tensors {_human_params(row['params']):>8} "
            f"{_human_size(row['nbytes']):>10}"
        )
    if "stats" in report:
        st = report["stats"]
        print(f"Weight statistics{' (cached)' if st.get('cached') else ''}:")
        print(
            f"  {'TENSOR':52} {'MEAN':>10} {'STD':>10} {'MIN':>10} {'MAX':>10} {'L2':>10} {'~0':>7}"
        )
        for t in st["tensors"]:
            flag = "  outlier" if t["outlier"] else ""
            print(
                f"  {t['name'][:52]:52} {t['mean']:10.3g} {t['std']:10.3g} {t['min']:10.3g} "
                f"{t['max']:10.3g} {t['l2']:10.4g} {t['near_zero']:7.2%}{flag}"
            )
        for s in st["skipped"]:
            print(f"  skipped {s['name']}: {s['reason']}")
    if "lora" in report:
        print("LoRA updates (‖B·A‖·scale):")
        for m in report["lora"]["modules"]:
            print(
                f"  {m['module'][:52]:52} r={m['rank']:<3} scale={m['scale']:<6.3g} "
                f"norm={m['norm']:.4g} effective rank={m['effective_rank']:.2f}"
            )
    if "compare" in report:
        cmp = report["compare"]
        what = "Quantization error" if cmp["mode"] == "quantization" else "Change"
        print(f"{what} against {cmp['other_model']['name']} (largest first):")
        print(f"  {'TENSOR':52} {'REL CHANGE':>11} {'COSINE':>10} {'MAX |Δ|':>10}")
        for t in sorted(cmp["tensors"], key=lambda r: -r["rel_change"]):
            print(
                f"  {t['name'][:52]:52} {t['rel_change']:11.4g} {t['cosine']:10.6f} "
                f"{t['max_abs']:10.3g}"
            )
        for key in ("only_in_reference", "only_in_other"):
            if cmp[key]:
                print(
                    f"  {key.replace('_', ' ')}: {', '.join(cmp[key][:10])}"
                    f"{' …' if len(cmp[key]) > 10 else ''}"
                )
    if report.get("probe"):
        _print_probe(report["probe"])


def _print_probe(probe: dict[str, Any]) -> None:
    print(f"Answer: {probe['text']!r}")
    print(f"  {'TOKEN':16} {'PROB':>7}  ALTERNATIVES")
    for t in probe["answer"]:
        alts = ", ".join(f"{a['text']!r} {a['prob']:.3g}" for a in t["top"][:5])
        prob = "-" if t["prob"] is None else f"{t['prob']:.3f}"
        print(f"  {t['text']!r:16} {prob:>7}  {alts}")
    lens = probe.get("lens")
    if lens:
        positions = probe["positions"]
        shown = list(range(max(0, len(positions) - 8), len(positions)))
        print("Logit lens (likeliest next token after each layer, last positions):")
        print("  " + " " * 8 + "".join(f"{positions[p]['text'][:10]!r:>14}" for p in shown))
        for layer, row in enumerate(lens["rows"]):
            cells = "".join(f"{row[p]['text'][:10]!r:>14}" for p in shown)
            print(f"  layer {layer + 1:<2}{cells}")
    elif probe.get("inside_unavailable"):
        print(probe["inside_unavailable"])
    if probe.get("attention") and probe["attention"].get("file"):
        a = probe["attention"]
        print(f"Attention: {a['layers']} layers x {a['heads']} heads x {a['n']}^2 in {a['file']}")
