"""Hub access is refused offline; pull arguments are validated before anything starts."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.errors import ConfigError
from app.core.jobs.registry import get_kind
from app.core.models import hub


class _Ctx:
    def __init__(self, ws: Any) -> None:
        self.workspace = ws
        self.events: list[Any] = []

    def progress(self, fraction: float | None, message: str = "") -> None:
        self.events.append((fraction, message))

    def check_cancelled(self) -> None:
        pass


def test_offline_refusals(workspace: Any) -> None:
    assert workspace.settings.offline
    for call in (
        lambda: hub.search(workspace, "gemma"),
        lambda: hub.list_repo_files(workspace, "google/gemma-3-270m"),
        lambda: hub.pull_model(_Ctx(workspace), "google/gemma-3-270m"),
    ):
        with pytest.raises(hub.OfflineError) as exc:
            call()
        assert "Network is off" in exc.value.message
        assert exc.value.hint and "offline" in exc.value.hint
    assert not (workspace.models_dir / ".staging").exists()


@pytest.mark.parametrize(
    ("repo", "files", "revision"),
    [
        ("no-slash", None, None),
        ("../etc/passwd", None, None),
        ("a/b/c", None, None),
        ("org/name", ["../../x"], None),
        ("org/name", ["/abs/path"], None),
        ("org/name", [], None),
        ("org/name", "model.gguf", None),
        ("org/name", None, "../main"),
    ],
)
def test_pull_argument_validation(repo: str, files: Any, revision: Any, workspace: Any) -> None:
    with pytest.raises(ConfigError):
        hub.validate_pull_params(repo, files, revision)
    with pytest.raises(ConfigError):  # checked before the offline switch is even looked at
        hub.pull_model(_Ctx(workspace), repo, files, revision)


def test_pull_valid_arguments_and_kind() -> None:
    assert hub.validate_pull_params("org/name", ["b.gguf", "a/x.json", "b.gguf"], "v1.0") == [
        "a/x.json",
        "b.gguf",
    ]
    assert hub.validate_pull_params("google/gemma-3-270m") is None
    kind = get_kind("models.pull")
    assert kind.load() is hub.pull_model
    assert get_kind("models.import").entry == "app.core.models.registry:import_job"


def test_pick_files() -> None:
    files = [hub.RepoFile("a.Q4.gguf", 10, None), hub.RepoFile("a.Q8.gguf", 20, None)]
    with pytest.raises(ConfigError, match="pick one"):
        hub._pick_files(files, None)
    assert [f.path for f in hub._pick_files(files, ["a.Q8.gguf"])] == ["a.Q8.gguf"]
    with pytest.raises(ConfigError, match="Not in the repo"):
        hub._pick_files(files, ["nope.gguf"])
    hf = [
        hub.RepoFile("config.json", 1, None),
        hub.RepoFile("model.safetensors", 9, "ab"),
        hub.RepoFile("pytorch_model.bin", 9, "cd"),
    ]
    assert [f.path for f in hub._pick_files(hf, None)] == ["config.json", "model.safetensors"]


def test_download_progress_adapter() -> None:
    ctx = _Ctx(None)
    progress = hub._ByteProgress(ctx, 50, 200)  # 50 bytes of earlier files, 200 in all
    progress.start(40)  # 40 bytes of this file kept from an earlier try
    progress.advance(60)
    assert ctx.events == [(0.75, "Downloading")]
