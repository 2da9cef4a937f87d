"""``demoai``: the command line, or the window when no command is given.

The CLI and the UI are sibling layers that never import each other (an
import-linter contract); this module sits above both and wires the window in.
"""

from __future__ import annotations

import sys


def open_window(workspace: str | None) -> int:
    """Open the DemoAI window on ``workspace`` (imports Qt only now)."""
    from app.ui.app import run_gui

    return run_gui(workspace)


def main(argv: list[str] | None = None) -> int:
    from app.cli.main import main as cli_main

    return cli_main(argv, gui=open_window)


if __name__ == "__main__":
    sys.exit(main())
