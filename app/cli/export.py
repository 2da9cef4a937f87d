"""``demoai export gguf|docker|package|list``: verified GGUF files, Docker bundles, packages."""

from __future__ import annotations

import argparse
import time
from typing import Any

from app.cli.common import add_job_options, open_workspace, print_json, run_job
from app.core.export.records import ExportRecord, ExportStore
from app.core.jobs.store import JobService


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="export models: GGUF, Docker bundles, model packages")
    esub = p.add_subparsers(dest="export_command", metavar="WHAT", required=True)

    g = esub.add_parser("gguf", help="convert to GGUF (and quantize), verify, register")
    g.add_argument("model", help="model id, unique id prefix, or name")
    g.add_argument(
        "--quant",
        action="append",
        metavar="TYPE",
        help="F16, BF16, F32, Q8_0, Q6_K, Q5_K_M, Q4_K_M, ... (repeatable; default Q8_0)",
    )
    g.add_argument("--out", metavar="DIR", help="parent folder of the export (default exports/)")
    g.add_argument("--sample-text", metavar="FILE", help="text file to verify on")
    g.add_argument("--json", action="store_true")
    add_job_options(g)
    g.set_defaults(func=cmd_gguf)

    d = esub.add_parser("docker", help="a Docker bundle (folder + .tar.gz) serving a GGUF model")
    d.add_argument("model", help="a GGUF model id or name")
    d.add_argument("--out", metavar="DIR", required=True, help="bundle folder to create")
    d.add_argument(
        "--base-image",
        default=None,
        help="base image (default: the offline installer's image when DemoAI was installed "
        "with it, else python:3.11-slim)",
    )
    d.add_argument("--tag", help="image tag when building")
    d.add_argument(
        "--build", action="store_true", help="also docker build (offline) and docker save it"
    )
    d.add_argument("--json", action="store_true")
    add_job_options(d)
    d.set_defaults(func=cmd_docker)

    k = esub.add_parser("package", help="a portable model package (.tar.gz) for another DemoAI")
    k.add_argument("model", help="model id, unique id prefix, or name")
    k.add_argument("--out", metavar="FILE", required=True, help="package file to write")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_package)

    ls = esub.add_parser("list", help="past exports with their verification results")
    ls.add_argument("--model", help="only exports of this model")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)


def _submit(args: argparse.Namespace, kind: str, params: dict[str, Any]) -> tuple[int, str, Any]:
    ws = open_workspace(args)
    job = JobService(ws).submit(kind, params)
    code = run_job(ws, kind, params, detach=args.detach, job=job)
    return code, job.id, ws


def _verification_line(r: ExportRecord) -> str:
    v = r.verification
    if not v:
        return ""
    return (
        f"top-1 {v['top1_agreement']:.1%} (>= {v['min_top1']:.0%}), "
        f"ppl ratio {v['ppl_ratio']:.4f} (< {v['max_ratio']}), "
        f"{'passed' if v['passed'] else 'FAILED'}"
    )


def cmd_gguf(args: argparse.Namespace) -> int:
    from app.core.export.gguf import normalize_quant
    from app.core.models import ModelRegistry

    quants = [normalize_quant(q) for q in (args.quant or ["Q8_0"])]
    sample = None
    if args.sample_text:
        with open(args.sample_text, encoding="utf-8") as fh:
            sample = fh.read()
    ws0 = open_workspace(args)
    model_id = ModelRegistry(ws0).get(args.model).id  # fail fast on a wrong name
    params = {"model": model_id, "quants": quants, "out_dir": args.out, "sample_text": sample}
    code, job_id, ws = _submit(args, "export.gguf", params)
    if args.detach:
        return code
    rows = [r for r in ExportStore(ws).list(model_id=model_id) if r.job_id == job_id]
    if args.json:
        print_json([r.to_dict() for r in rows])
    else:
        for r in rows:
            print(f"{r.quant:7} {r.state:9} {_verification_line(r)}")
            print(
                f"        {r.path}"
                + (f"  -> model {r.result_model_id}" if r.result_model_id else "")
            )
    return code


def cmd_docker(args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.core.export.docker import default_base_image

    params = {
        "model": args.model,
        "out_dir": str(Path(args.out).expanduser().absolute()),
        "base_image": args.base_image or default_base_image(),
        "build": bool(args.build),
        "image_tag": args.tag,
    }
    code, job_id, ws = _submit(args, "export.docker", params)
    if args.detach or code != 0:
        return code
    job = JobService(ws).get(job_id)
    res = job.result or {}
    if args.json:
        print_json(res)
    else:
        print(f"Bundle: {res.get('folder')}\nArchive: {res.get('tarball')}")
        if res.get("image"):
            print(f"Image: {res['image']} (saved to {res.get('image_tar')})")
        print("Read README.md in the bundle for build and run instructions.")
    return code


def cmd_package(args: argparse.Namespace) -> int:
    from app.cli.common import ProgressPrinter
    from app.core.export.package import export_package

    ws = open_workspace(args)
    printer = ProgressPrinter()
    try:
        res = export_package(ws, args.model, args.out, progress=printer.show)
    finally:
        printer.done()
    if args.json:
        print_json({"export_id": res.export_id, "path": str(res.path), "size": res.size_bytes})
    else:
        print(f"Wrote {res.path} ({res.size_bytes} bytes, {res.files} model files)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    ws = open_workspace(args)
    model_id = None
    if args.model:
        from app.core.models import ModelRegistry

        model_id = ModelRegistry(ws).get(args.model).id
    rows = ExportStore(ws).list(model_id=model_id)
    if args.json:
        print_json([r.to_dict() for r in rows])
        return 0
    if not rows:
        print("No exports yet. Try `demoai export gguf MODEL --quant Q8_0`.")
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at))
        print(f"{r.id}  {r.kind:7} {r.quant or '-':7} {r.state:9} {when}  {r.model_id}")
        line = _verification_line(r)
        if line:
            print(f"    {line}")
        if r.error:
            print(f"    error: {r.error}")
        if r.path:
            print(f"    {r.path}")
    return 0
