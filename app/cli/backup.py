"""``demoai backup create|verify|restore``: a verified snapshot of the whole workspace."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.cli.common import ProgressPrinter, print_json
from app.core.errors import ConfigError
from app.core.format import human_size


def register(sub: Any) -> None:
    p = sub.add_parser("backup", help="back up the workspace to one file, verify, restore")
    bsub = p.add_subparsers(dest="backup_command", metavar="WHAT", required=True)

    c = bsub.add_parser(
        "create", help="a consistent backup while DemoAI runs (database + every file)"
    )
    c.add_argument("--out", metavar="FILE", required=True, help="backup file to write")
    c.add_argument(
        "--base",
        metavar="OLD",
        help="an earlier backup: store only what it does not hold (restore then needs OLD)",
    )
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_create)

    v = bsub.add_parser("verify", help="check every byte of a backup (and of its bases)")
    v.add_argument("file", metavar="FILE")
    v.add_argument(
        "--base", action="append", metavar="OLD", help="where a base backup is (repeatable)"
    )
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    r = bsub.add_parser(
        "restore", help="verify a backup, then write it as a new workspace into an empty folder"
    )
    r.add_argument("file", metavar="FILE")
    r.add_argument(
        "--workspace",
        dest="target",
        metavar="DIR",
        help="the new workspace folder (must not exist or be empty)",
    )
    r.add_argument(
        "--base", action="append", metavar="OLD", help="where a base backup is (repeatable)"
    )
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_restore)


def _printer() -> tuple[ProgressPrinter, Any]:
    printer = ProgressPrinter()
    return printer, lambda f, m: printer.show(f, m)


def cmd_create(args: argparse.Namespace) -> int:
    from app.core.backup import create_backup
    from app.core.workspace import resolve_workspace_dir

    # Not opened: opening migrates an older database, and a backup must change nothing.
    root = resolve_workspace_dir(args.workspace)
    printer, show = _printer()
    try:
        res = create_backup(
            root, Path(args.out), base=Path(args.base) if args.base else None, progress=show
        )
    finally:
        printer.done()
    if args.json:
        print_json(res.to_dict())
        return 0
    print(f"Backup written: {res.path}")
    print(
        f"  {res.files} files ({human_size(res.total_bytes)}); stored {res.stored_blobs} "
        f"distinct file(s), {human_size(res.stored_bytes)}"
        + (f"; {res.deduplicated} duplicate(s) stored once" if res.deduplicated else "")
    )
    if res.base:
        print(
            f"  incremental: {res.from_base} file(s) are in the base {res.base}; "
            "restoring needs that file too"
        )
    for e in res.external:
        print(
            f"  not copied: model {e.name} is referenced in place at {e.path} "
            f"({human_size(e.size)}); back it up separately"
        )
    for rel in res.skipped:
        print(f"  skipped: {rel} (a link, or removed while the backup ran)")
    for rel in res.missing:
        print(
            f"  warning: {rel} is recorded in the database but was not in the workspace",
            file=sys.stderr,
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from app.core.backup import resolve_chain, verify_backup

    printer, show = _printer()
    try:
        top = verify_backup(Path(args.file), progress=show)
        chain = resolve_chain(top, bases=[Path(b) for b in args.base or []], progress=show)
    finally:
        printer.done()
    m = top.manifest
    info = {
        "file": str(top.path),
        "id": top.id,
        "ok": True,
        "files": len(m["files"]),
        "stored_blobs": len(m["blobs"]),
        "bases": [str(v.path) for v in chain[1:]],
        "external_models": m.get("external_models", []),
    }
    if args.json:
        print_json(info)
        return 0
    print(f"OK: {top.path} ({human_size(top.size)}), {info['files']} files, every checksum matches")
    for v in chain[1:]:
        print(f"  base OK: {v.path}")
    for e in info["external_models"]:
        print(f"  not in the backup: model {e.get('name')} referenced at {e.get('path')}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from app.core.backup import restore_backup

    target = args.target or args.workspace
    if not target:
        raise ConfigError(
            "No folder to restore into.", "Give it with --workspace DIR (a new or empty folder)."
        )
    printer, show = _printer()
    try:
        res = restore_backup(
            Path(args.file),
            Path(target),
            bases=[Path(b) for b in args.base or []],
            progress=show,
        )
    finally:
        printer.done()
    if args.json:
        print_json(res.__dict__)
        return 0
    print(
        f"Restored {res.files} files ({human_size(res.total_bytes)}) into {res.workspace}"
        + (f" from {res.backups_read} backup files" if res.backups_read > 1 else "")
    )
    for job_id in res.interrupted_jobs:
        print(f"  job {job_id} was running when the backup was taken: now interrupted")
    for path in res.external_missing:
        print(f"  warning: a model referenced in place is not at {path}", file=sys.stderr)
    print(f"Open it with: demoai --workspace {res.workspace}")
    return 0
