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
    "app.cli.backup",
    "app.cli.feedback",
    "app.cli.pipeline",
    "app.cli.experiment",
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
    sub.add_parser("gui", help="open the DemoAI window (the default)")
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def gui_args(argv: list[str]) -> argparse.Namespace | None:
    """The global options when ``argv`` opens the window (no command, or ``gui``), else None.

    Checked before the full parser is built, so opening the window loads no command.
    """
    quick = argparse.ArgumentParser(add_help=False)
    quick.add_argument("--workspace")
    quick.add_argument("--debug", action="store_true")
    try:
        args, rest = quick.parse_known_args(argv)
    except SystemExit:
        return None
    return args if rest in ([], ["gui"]) else None


def main(argv: list[str] | None = None, gui: Callable[[str | None], int] | None = None) -> int:
    """Run one ``demoai`` command. ``gui(workspace)`` opens the window; the CLI does not
    import the UI (they are sibling layers), so ``app.entry`` passes it in."""
    raw = sys.argv[1:] if argv is None else argv
    args = gui_args(raw)
    if args is None:
        args = build_parser().parse_args(raw)
    if getattr(args, "func", None) is None:
        if gui is None:
            print("demoai: error: no command given (see demoai --help)", file=sys.stderr)
            return 2
        opener = gui
        args.func = lambda a: opener(a.workspace)
    func: Callable[[argparse.Namespace], int] = args.func
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
