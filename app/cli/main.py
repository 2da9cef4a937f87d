"""Argument parsing and error reporting for ``demoai``."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

from app.core.errors import DemoAIError

#: Modules that add subcommands: each has ``register(subparsers)``.
COMMAND_MODULES = (
    "app.cli.info",
    "app.cli.jobs",
    "app.cli.models",
    "app.cli.serve",
    "app.cli.train",
    "app.cli.data",
    "app.cli.eval",
    "app.cli.export",
    "app.cli.agent",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="demoai",
        description="DemoAI: private language models on your own machine. "
        "Without a command, opens the window.",
    )
    parser.add_argument(
        "--workspace",
        metavar="DIR",
        help="workspace folder (default: $DEMOAI_WORKSPACE, else the per-user default)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    gui = sub.add_parser("gui", help="open the DemoAI window (the default)")
    gui.set_defaults(func=_cmd_gui)
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _cmd_gui(args: argparse.Namespace) -> int:
    from app.ui.app import run_gui

    return run_gui(args.workspace)


def _gui_only(argv: list[str]) -> argparse.Namespace | None:
    """``demoai`` with global options only opens the window: skip loading every command."""
    quick = argparse.ArgumentParser(add_help=False)
    quick.add_argument("--workspace")
    quick.add_argument("--debug", action="store_true")
    try:
        args, rest = quick.parse_known_args(argv)
    except SystemExit:
        return None
    return args if not rest else None


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = _gui_only(raw)
    if args is None:
        args = build_parser().parse_args(raw)
    func: Callable[[argparse.Namespace], int] = getattr(args, "func", _cmd_gui)
    debug = args.debug or os.environ.get("DEMOAI_DEBUG") == "1"
    try:
        return int(func(args) or 0)
    except DemoAIError as exc:
        if debug:
            traceback.print_exc()
        print(f"demoai: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("demoai: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(
            f"demoai: error: {type(exc).__name__}: {exc} (run with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
