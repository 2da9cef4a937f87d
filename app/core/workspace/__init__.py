"""The workspace folder: database, settings, and the folders every capability writes to."""

from app.core.workspace.settings import Settings, load_settings, save_settings
from app.core.workspace.workspace import (
    Workspace,
    apply_network_policy,
    default_workspace_dir,
    resolve_workspace_dir,
)

__all__ = [
    "Settings",
    "Workspace",
    "apply_network_policy",
    "default_workspace_dir",
    "load_settings",
    "resolve_workspace_dir",
    "save_settings",
]
