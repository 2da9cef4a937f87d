"""Workspace folder and settings: creation, bad folders, bad settings, offline policy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.core.errors import WorkspaceError
from app.core.workspace import Settings, Workspace, resolve_workspace_dir


def test_new_workspace_layout_and_defaults(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    for sub in ("models", "datasets", "runs", "exports"):
        assert (ws.root / sub).is_dir()
    assert (ws.root / "demoai.db").is_file()
    assert json.loads((ws.root / "settings.json").read_text())["offline"] is True
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    ws.close()


def test_workspace_env_and_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMOAI_WORKSPACE", str(tmp_path / "env"))
    assert resolve_workspace_dir() == tmp_path / "env"
    assert resolve_workspace_dir(tmp_path / "flag") == tmp_path / "flag"


def test_workspace_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("keep me")
    with pytest.raises(WorkspaceError, match="is a file"):
        Workspace.open(f)
    assert f.read_text() == "keep me"


def test_uncreatable_workspace(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(WorkspaceError, match="Cannot create"):
        Workspace.open(blocker / "sub" / "ws")


def test_unwritable_workspace(tmp_path: Path) -> None:
    # /proc/self is a folder nobody (not even root) can create files in.
    with pytest.raises(WorkspaceError, match="not writable"):
        Workspace.open("/proc/self")


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "cannot be read"),
        ("[1, 2]", "JSON object"),
        ('{"version": 99}', "newer DemoAI"),
        ('{"threads": "many"}', "whole number"),
        ('{"threads": -3}', "invalid value"),
    ],
)
def test_bad_settings_file_is_reported_and_kept(tmp_path: Path, content: str, match: str) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "settings.json").write_text(content)
    with pytest.raises(WorkspaceError, match=match):
        Workspace.open(root)
    assert (root / "settings.json").read_text() == content
    assert not (root / "demoai.db").exists()  # nothing created before the check failed


def test_settings_round_trip_and_network_switch(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    ws.save_settings(Settings(offline=False, threads=2))
    assert "HF_HUB_OFFLINE" not in os.environ
    ws.close()
    ws = Workspace.open(tmp_path / "ws")
    assert ws.settings.offline is False and ws.settings.threads == 2
    ws.save_settings(Settings(offline=True))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    ws.close()


def test_unknown_settings_keys_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "settings.json").write_text('{"version": 1, "future_thing": 3, "threads": 4}')
    ws = Workspace.open(root)
    assert ws.settings.threads == 4
    ws.close()
