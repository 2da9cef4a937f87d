"""``demoai feedback list|export``: feedback collected from chat, for training."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from app.cli.common import open_workspace, print_json


def register(sub: Any) -> None:
    p = sub.add_parser("feedback", help="feedback given on chat replies (the Collected dataset)")
    fsub = p.add_subparsers(dest="feedback_command", metavar="WHAT", required=True)
    ls = fsub.add_parser("list", help="collected rows with their provenance")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    ex = fsub.add_parser(
        "export", help="chat examples or preference pairs (chosen/rejected) as JSON lines"
    )
    ex.add_argument("--format", choices=("chat", "preference"), required=True)
    ex.add_argument("--out", metavar="FILE", required=True)
    ex.add_argument("--version", help="a version of Collected (default: the current one)")
    ex.add_argument(
        "--redact-pii",
        action="store_true",
        help="replace emails, phone numbers, cards, IBANs and IP addresses with labels",
    )
    ex.set_defaults(func=cmd_export)


def cmd_list(args: argparse.Namespace) -> int:
    from app.core.data.collected import collected

    rows = collected(open_workspace(args))
    if args.json:
        print_json([r.__dict__ for r in rows])
        return 0
    if not rows:
        print("No feedback collected yet (rate replies in the Chat pane).")
    for r in rows:
        what = {1: "👍", -1: "👎", 0: ""}[r.rating] + (" +better answer" if r.better else "")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at))
        print(f"{r.id}  {when}  {r.source}  {r.model_id or '-'}  {what.strip()}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from app.core.data.collected import export_jsonl

    counts: dict[str, int] = {}
    n = export_jsonl(
        open_workspace(args),
        Path(args.out),
        args.format,
        args.version,
        redact=args.redact_pii,
        counts=counts,
    )
    print(f"{n} {'examples' if args.format == 'chat' else 'pairs'} written to {args.out}")
    if args.redact_pii:
        found = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none found"
        print(f"personal data redacted: {found}")
    return 0
