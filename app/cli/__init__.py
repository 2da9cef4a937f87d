"""``demoai``: the command line, driving the same core services and workers as the window."""

from app.cli.main import main

__all__ = ["main"]
