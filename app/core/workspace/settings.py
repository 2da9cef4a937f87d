"""Typed, versioned settings with defaults, stored as ``settings.json`` in the workspace."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from app.core.errors import ConfigError, WorkspaceError
from app.core.store.files import atomic_write_json

SETTINGS_VERSION = 1


@dataclass
class Settings:
    """User settings of one workspace. ``help`` metadata is shown in the settings dialog."""

    version: int = SETTINGS_VERSION
    offline: bool = field(
        default=True,
        metadata={"help": "Make no network calls (Hugging Face Hub included) unless turned off."},
    )
    threads: int = field(
        default=0,
        metadata={"help": "CPU threads for inference and training; 0 picks the number of cores."},
    )
    gpu: str = field(
        default="auto",
        metadata={"help": "'auto' uses a CUDA GPU when one is found, 'cpu' never uses one."},
    )
    max_cpu_jobs: int = field(
        default=2, metadata={"help": "How many CPU jobs may run at the same time."}
    )
    backup_reminder_days: int = field(
        default=7,
        metadata={
            "help": "Remind in the window when the last backup is older than this many days; "
            "0 switches the reminder off."
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for values out of range."""
        if self.threads < 0:
            raise ConfigError("threads must be 0 (automatic) or a positive number.")
        if self.gpu not in ("auto", "cpu") and not self.gpu.startswith("cuda"):
            raise ConfigError("gpu must be 'auto', 'cpu' or 'cuda:N'.")
        if self.max_cpu_jobs < 1:
            raise ConfigError("max_cpu_jobs must be at least 1.")
        if self.backup_reminder_days < 0:
            raise ConfigError("backup_reminder_days must be 0 (off) or a number of days.")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Build from a dict, ignoring unknown keys (kept forward-compatible) and checking types."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            f = known.get(name)
            if f is None:
                continue
            default = f.default
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ConfigError(f"Setting '{name}' must be true or false, not {value!r}.")
            if isinstance(default, int) and not isinstance(default, bool):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ConfigError(f"Setting '{name}' must be a whole number, not {value!r}.")
            if isinstance(default, str) and not isinstance(value, str):
                raise ConfigError(f"Setting '{name}' must be text, not {value!r}.")
            kwargs[name] = value
        return cls(**kwargs)


def load_settings(path: Path) -> Settings:
    """Read settings; a missing file gives defaults. A bad file raises and is left untouched."""
    if not path.exists():
        return Settings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WorkspaceError(
            f"The settings file {path} cannot be read ({exc}). It was left unchanged.",
            "Fix or delete it to go back to the default settings.",
        ) from exc
    if not isinstance(data, dict):
        raise WorkspaceError(
            f"The settings file {path} does not hold a JSON object. It was left unchanged.",
            "Fix or delete it to go back to the default settings.",
        )
    version = data.get("version", 1)
    if not isinstance(version, int) or version > SETTINGS_VERSION:
        raise WorkspaceError(
            f"The settings file {path} was written by a newer DemoAI (version {version}). "
            "It was left unchanged.",
            "Update DemoAI, or choose another workspace folder.",
        )
    try:
        return Settings.from_dict(data)
    except (ConfigError, TypeError) as exc:
        raise WorkspaceError(
            f"The settings file {path} has an invalid value: {exc} It was left unchanged.",
            "Fix or delete it to go back to the default settings.",
        ) from exc


def save_settings(path: Path, settings: Settings) -> None:
    """Validate and write settings atomically."""
    settings.validate()
    atomic_write_json(path, settings.to_dict())
