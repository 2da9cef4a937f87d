"""Per-user app state outside any workspace: which workspace to open next time."""

from __future__ import annotations

import json
import os
from pathlib import Path

from app.core.store.files import atomic_write_json


def _state_file() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("DemoAI", appauthor=False)) / "app-state.json"


def remembered_workspace() -> str | None:
    """The workspace chosen in Settings, if any."""
    try:
        value = json.loads(_state_file().read_text()).get("workspace")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def remember_workspace(path: str) -> None:
    """Open ``path`` as the workspace on the next start (unless overridden)."""
    atomic_write_json(_state_file(), {"workspace": os.path.abspath(path)})
