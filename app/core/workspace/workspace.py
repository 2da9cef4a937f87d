"""Opening a workspace: check the folder, create its layout, open and migrate the database."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from app.core.errors import WorkspaceError
from app.core.store.db import Database
from app.core.store.files import Leftover, find_temporaries, remove_path
from app.core.workspace.settings import Settings, load_settings, save_settings

SUBDIRS = ("models", "datasets", "runs", "exports")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def default_workspace_dir() -> Path:
    """The per-user default workspace (platformdirs' user data folder)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("DemoAI", appauthor=False)) / "workspace"


def resolve_workspace_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--workspace`` first, then ``DEMOAI_WORKSPACE``, then the per-user default."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get("DEMOAI_WORKSPACE")
    if env:
        return Path(env).expanduser().absolute()
    return default_workspace_dir()


def apply_network_policy(settings: Settings) -> None:
    """Offline mode: tell the Hugging Face libraries to make no network calls.

    Child processes inherit the environment, so workers follow the same policy.
    """
    if settings.offline:
        for var in _OFFLINE_VARS:
            os.environ[var] = "1"
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    else:
        for var in _OFFLINE_VARS:
            os.environ.pop(var, None)
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("DO_NOT_TRACK", "1")


class Workspace:
    """An opened workspace folder."""

    def __init__(self, root: Path, db: Database, settings: Settings) -> None:
        self.root = root
        self.db = db
        self.settings = settings

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None, *, create: bool = True) -> Workspace:
        """Open the workspace at ``root`` (see :func:`resolve_workspace_dir`), creating it if asked."""
        path = resolve_workspace_dir(root)
        if path.exists() and not path.is_dir():
            raise WorkspaceError(
                f"The workspace path {path} is a file, not a folder.",
                "Choose a folder with --workspace or DEMOAI_WORKSPACE.",
            )
        if not path.exists():
            if not create:
                raise WorkspaceError(f"There is no workspace at {path}.")
            try:
                path.mkdir(parents=True)
            except OSError as exc:
                raise WorkspaceError(
                    f"Cannot create the workspace folder {path}: {exc.strerror or exc}.",
                    "Choose a writable folder with --workspace or DEMOAI_WORKSPACE.",
                ) from exc
        _check_writable(path)
        settings = load_settings(path / "settings.json")
        for sub in SUBDIRS:
            (path / sub).mkdir(exist_ok=True)
        _register_core_schemas()
        db = Database.open(path / "demoai.db")
        if not (path / "settings.json").exists():
            save_settings(path / "settings.json", settings)
        apply_network_policy(settings)
        ws = cls(path, db, settings)
        # Temporaries of killed processes go at every start (window, CLI, job process);
        # those of live processes, of other hosts and of older versions stay.
        ws.remove_leftovers()
        return ws

    # -- paths -------------------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def run_dir(self, job_id: str) -> Path:
        """Folder of one job: config.json, events.jsonl, log.txt, checkpoints/."""
        return self.runs_dir / job_id

    def save_settings(self, settings: Settings) -> None:
        """Persist new settings and apply the network policy at once."""
        save_settings(self.root / "settings.json", settings)
        self.settings = settings
        apply_network_policy(settings)

    def temporaries(self) -> list[Leftover]:
        """Temporary files and folders in the workspace, with whether their owner runs."""
        return find_temporaries([self.root / sub for sub in SUBDIRS])

    def remove_leftovers(self, *, include_unknown: bool = False) -> list[Leftover]:
        """Remove temporaries whose process is dead (with ``include_unknown``: also those
        whose owner cannot be told; only safe when no other process works here)."""
        removed: list[Leftover] = []
        for t in self.temporaries():
            if t.owner == "alive" or (t.owner == "unknown" and not include_unknown):
                continue
            if remove_path(t.path):
                removed.append(t)
                parent = t.path.parent
                if parent.parent == self.datasets_dir:
                    # A killed import leaves datasets/<id>/ empty once its version
                    # temporary is gone; rmdir refuses a folder that is not empty.
                    with contextlib.suppress(OSError):
                        parent.rmdir()
        return removed

    def close(self) -> None:
        self.db.close()


def _check_writable(path: Path) -> None:
    probe = path / f".write-test-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise WorkspaceError(
            f"The workspace folder {path} is not writable: {exc.strerror or exc}.",
            "Fix its permissions or choose another folder with --workspace.",
        ) from exc


def _register_core_schemas() -> None:
    # Importing the modules registers their migrations (cheap: plain SQL strings).
    import app.core.agents.schema
    import app.core.chat.conversations
    import app.core.data.schema
    import app.core.eval.schema
    import app.core.export.records
    import app.core.jobs.store
    import app.core.models.registry
    import app.core.runs.schema
    import app.core.workspace.verify  # noqa: F401
    from app.core.store import changes

    changes.register()  # last: its triggers sit on the tables above
