"""``demoai info`` and ``demoai check``."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import add_job_options, open_workspace, print_json, run_job


def register(sub: Any) -> None:
    p = sub.add_parser("info", help="versions, hardware, workspace and offline state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)
    c = sub.add_parser(
        "check", help="verify the workspace: database integrity and sha256 of every file"
    )
    c.add_argument(
        "--accept-changes", action="store_true", help="record the new hashes of changed files"
    )
    c.add_argument(
        "--repair",
        action="store_true",
        help="first remove leftovers of interrupted work (temporary files, unregistered folders)",
    )
    add_job_options(c)
    c.set_defaults(func=cmd_check)


def collect_info(args: argparse.Namespace) -> dict[str, Any]:
    from app.core.system.hardware import detect_hardware
    from app.core.system.versions import versions

    ws = open_workspace(args)
    hw = detect_hardware()
    return {
        **versions(),
        "hardware": hw.to_dict(),
        "hardware_summary": hw.summary(),
        "workspace": str(ws.root),
        "offline": ws.settings.offline,
        "settings": ws.settings.to_dict(),
        "schema": ws.db.schema_versions(),
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = collect_info(args)
    if args.json:
        print_json(info)
        return 0
    print(f"DemoAI {info['demoai']} (Python {info['python']}, {info['platform']})")
    print(f"Workspace: {info['workspace']}")
    print(
        "Network:   "
        + ("offline (no network calls)" if info["offline"] else "on (Hugging Face Hub allowed)")
    )
    hw = info["hardware"]
    print(f"Hardware:  {info['hardware_summary']}  [{hw['cpu_model']}]")
    if hw["gpu_note"]:
        print(f"GPU:       {hw['gpu_note']}")
    print("Packages:")
    for name, ver in info["packages"].items():
        print(f"  {name:22} {ver or 'not installed'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from app.core.jobs.store import JobService
    from app.core.workspace.verify import leftover_message

    ws = open_workspace(args)
    params = {"accept_changes": args.accept_changes, "repair": args.repair}
    job = JobService(ws).submit("workspace.verify", params)
    rc = run_job(ws, "workspace.verify", params, detach=args.detach, job=job)
    result = JobService(ws).get(job.id).result if not args.detach else None
    if result:
        if result.get("removed"):
            print(f"removed {result['removed']} leftover(s) of interrupted work")
        if result.get("leftovers"):
            print(leftover_message(result["leftovers"], result.get("leftover_bytes", 0)))
        print(
            f"{result.get('files', 0)} files checked, {result.get('new', 0)} new, "
            f"{len(result.get('changed', []))} changed, {len(result.get('missing', []))} missing"
        )
    return rc
