"""Per-user app state outside any workspace: which workspace to open next time, the theme."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from app.core.store.files import atomic_write_json


def _state_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("DemoAI", appauthor=False)) / "app-state.json"


def _read() -> dict[str, Any]:
    try:
        data = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _update(**values: Any) -> None:
    atomic_write_json(_state_file(), _read() | values)


def remembered_workspace() -> str | None:
    """The workspace chosen in Settings, if any."""
    value = _read().get("workspace")
    return str(value) if value else None


def remember_workspace(path: str) -> None:
    """Open ``path`` as the workspace on the next start (unless overridden)."""
    _update(workspace=os.path.abspath(path))


def remembered_theme() -> str:
    """The theme chosen in Settings: "system" (the default), "light" or "dark"."""
    value = _read().get("theme")
    return value if value in ("system", "light", "dark") else "system"


def remember_theme(choice: str) -> None:
    """Use ``choice`` as the theme from now on (every workspace: it is the user's)."""
    _update(theme=choice)
