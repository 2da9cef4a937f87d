"""Hub search, file listing and the ``models.pull`` job against a local fake Hub."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from app.core.jobs.store import JobService, JobState
from app.core.models import hub
from app.core.models.registry import ModelRegistry
from app.workers.supervisor import Supervisor
from tests.support.fake_hub import fake_hub_fixture, go_online, tiny_gguf_bytes  # noqa: F401


def _pull(ws, params: dict, timeout: float = 120) -> object:
    sup = Supervisor(ws)
    job = JobService(ws).submit("models.pull", params)
    assert sup.start(job.id)
    return sup.wait(job.id, timeout=timeout)


@pytest.fixture
def gguf_repo(fake_hub, tmp_path):
    data = tiny_gguf_bytes(tmp_path, name="tiny-q")
    repo = fake_hub.add_repo(
        "acme/tiny-GGUF",
        {
            "README.md": b"# tiny\n",
            "tiny-F32.gguf": data,
            "tiny-Q8_0.gguf": tiny_gguf_bytes(tmp_path, name="tiny-q", seed=1),
        },
        tags=["gguf", "llama"],
        downloads=10,
    )
    return repo, data


def test_search_and_list_files(workspace, fake_hub, gguf_repo) -> None:
    repo, data = gguf_repo
    fake_hub.add_repo("other/unrelated", {"config.json": b"{}"})
    go_online(workspace)
    found = hub.search(workspace, "tiny")
    assert [m["id"] for m in found] == ["acme/tiny-GGUF"]
    assert found[0]["downloads"] == 10 and "gguf" in found[0]["tags"]

    commit, files = hub.list_repo_files(workspace, "acme/tiny-GGUF")
    assert commit == repo.sha
    by_path = {f.path: f for f in files}
    assert by_path["tiny-F32.gguf"].size == len(data)
    assert by_path["tiny-F32.gguf"].sha256 == hashlib.sha256(data).hexdigest()
    assert by_path["README.md"].size == 7 and by_path["README.md"].sha256 is None


def test_fake_hub_serves_hf_hub_download(workspace, fake_hub, gguf_repo, tmp_path) -> None:
    """The fake is good enough for huggingface_hub's own downloader (HEAD + GET)."""
    repo, data = gguf_repo
    go_online(workspace)
    hub._hub_online(workspace)
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        "acme/tiny-GGUF", "tiny-F32.gguf", revision=repo.sha, local_dir=tmp_path / "dl"
    )
    assert Path(path).read_bytes() == data


def test_unknown_repo_is_a_clear_error(workspace, fake_hub) -> None:
    go_online(workspace)
    with pytest.raises(hub.DemoAIError, match="Not found on the Hub"):
        hub.list_repo_files(workspace, "acme/nope")


def test_pull_downloads_verifies_and_registers_one_gguf(workspace, fake_hub, gguf_repo) -> None:
    repo, data = gguf_repo
    go_online(workspace)
    final = _pull(workspace, {"repo_id": "acme/tiny-GGUF", "files": ["tiny-F32.gguf"]})
    assert final.state == JobState.SUCCEEDED, final.error
    models = ModelRegistry(workspace).list()
    assert len(models) == 1
    rec = models[0]
    assert rec.source_ref == f"acme/tiny-GGUF@{repo.sha}"
    assert rec.format == "gguf" and rec.architecture == "llama"
    assert rec.sha256 == hashlib.sha256(data).hexdigest()
    assert rec.path.read_bytes() == data and rec.owned
    assert final.result["model_id"] == rec.id
    assert not any((workspace.models_dir / ".staging").iterdir())  # staging cleaned up


def test_pull_without_files_refuses_to_guess_between_quants(workspace, fake_hub, gguf_repo):
    go_online(workspace)
    final = _pull(workspace, {"repo_id": "acme/tiny-GGUF"})
    assert final.state == JobState.FAILED
    assert "2 GGUF files" in final.error
    assert ModelRegistry(workspace).list() == []


def test_pull_hf_folder(workspace, fake_hub, tiny_llama_dir) -> None:
    files = {p.name: p for p in tiny_llama_dir.iterdir() if p.is_file()}
    files["pytorch_model.bin"] = b"pickle, never downloaded by default"
    repo = fake_hub.add_repo("acme/tiny-llama", files)
    go_online(workspace)
    final = _pull(workspace, {"repo_id": "acme/tiny-llama"})
    assert final.state == JobState.SUCCEEDED, final.error
    rec = ModelRegistry(workspace).get(final.result["model_id"])
    assert rec.format == "hf" and rec.source_ref == f"acme/tiny-llama@{repo.sha}"
    assert (rec.path / "model.safetensors").is_file()
    assert not (rec.path / "pytorch_model.bin").exists()
    assert not (rec.path / ".cache").exists()


def test_damaged_download_fails_verification_and_registers_nothing(
    workspace, fake_hub, gguf_repo
) -> None:
    repo, data = gguf_repo
    f = repo.files["tiny-F32.gguf"]
    f.served = data[:-16] + b"\x00" * 16  # same length, wrong bytes
    go_online(workspace)
    final = _pull(workspace, {"repo_id": "acme/tiny-GGUF", "files": ["tiny-F32.gguf"]})
    assert final.state == JobState.FAILED
    assert "sha256" in final.error
    assert ModelRegistry(workspace).list() == []
    left = [p for p in (workspace.models_dir / ".staging").rglob("*") if p.is_file()]
    assert left == []  # the damaged bytes are not kept


def test_interrupted_download_resumes_with_a_range_request(workspace, fake_hub, tmp_path):
    # > 10 MiB: huggingface_hub writes in 10 MiB chunks, so something is on disk at the kill
    data = tiny_gguf_bytes(tmp_path, name="big", extra_floats=8 * 1024 * 1024)
    repo = fake_hub.add_repo("acme/big-GGUF", {"big-F32.gguf": data})
    served = repo.files["big-F32.gguf"]
    served.chunk_delay = 0.01  # ~5 s for the whole file
    go_online(workspace)
    sup = Supervisor(workspace)
    jobs = JobService(workspace)
    job = jobs.submit("models.pull", {"repo_id": "acme/big-GGUF", "files": ["big-F32.gguf"]})
    assert sup.start(job.id)

    def part_size() -> int:
        parts = list((workspace.models_dir / ".staging").glob("*.parts/*.part"))
        return parts[0].stat().st_size if parts else 0

    end = time.monotonic() + 60
    while part_size() == 0:
        assert time.monotonic() < end, "no partial file appeared"
        assert jobs.get(job.id).state == JobState.RUNNING, jobs.get(job.id).error
        sup.pump()
        time.sleep(0.02)
    os.kill(jobs.get(job.id).pid, signal.SIGKILL)
    assert sup.wait(job.id, timeout=30).state == JobState.FAILED
    kept = part_size()
    assert 0 < kept < len(data)
    assert ModelRegistry(workspace).list() == []

    served.chunk_delay = 0.0
    jobs.resume(job.id)
    assert sup.start(job.id)
    final = sup.wait(job.id, timeout=120)
    assert final.state == JobState.SUCCEEDED, final.error
    assert final.attempt == 2
    ranges = [r for m, _, r in fake_hub.requests_for("/big-F32.gguf") if m == "GET" and r]
    assert ranges == [f"bytes={kept}-"]
    rec = ModelRegistry(workspace).get(final.result["model_id"])
    assert rec.sha256 == hashlib.sha256(data).hexdigest()


def test_offline_workspace_refuses(workspace, fake_hub, gguf_repo) -> None:
    assert workspace.settings.offline
    with pytest.raises(hub.OfflineError, match="Network is off"):
        hub.search(workspace, "tiny")
    with pytest.raises(hub.OfflineError):
        hub.list_repo_files(workspace, "acme/tiny-GGUF")
    final = _pull(workspace, {"repo_id": "acme/tiny-GGUF", "files": ["tiny-F32.gguf"]})
    assert final.state == JobState.FAILED and "Network is off" in final.error
    assert fake_hub.requests == []  # nothing reached the (fake) Hub


def test_turning_network_on_after_huggingface_hub_was_imported_offline(
    workspace, fake_hub, gguf_repo
) -> None:
    import huggingface_hub.constants as c

    c.HF_HUB_OFFLINE = True  # imported while the workspace was offline
    go_online(workspace)
    assert [m["id"] for m in hub.search(workspace, "tiny")] == ["acme/tiny-GGUF"]
