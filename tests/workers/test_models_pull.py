"""Hub search, file listing and the ``models.pull`` job against a local fake Hub."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from app.core.jobs.context import Cancelled
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
    # 4 MiB: the download writes 1 MiB chunks, so something is on disk well before the end
    data = tiny_gguf_bytes(tmp_path, name="big", extra_floats=1024 * 1024)
    repo = fake_hub.add_repo("acme/big-GGUF", {"big-F32.gguf": data})
    served = repo.files["big-F32.gguf"]
    served.chunk_delay = 0.05  # ~3 s for the whole file
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


class _Ctx:
    """An in-process job context that cancels at the given call of ``check_cancelled``."""

    def __init__(self, ws, cancel_at: int | None = None) -> None:
        self.workspace = ws
        self.cancel_at = cancel_at
        self.checks = 0
        self.logs: list[str] = []
        self.results: list[dict] = []

    def progress(self, fraction, message="") -> None:
        pass

    def log(self, text: str, level: str = "info") -> None:
        self.logs.append(text)

    def artifact(self, kind: str, path) -> None:
        pass

    def result(self, data: dict) -> None:
        self.results.append(data)

    def check_cancelled(self) -> None:
        self.checks += 1
        if self.cancel_at is not None and self.checks >= self.cancel_at:
            raise Cancelled()


def _big_repo(fake_hub, tmp_path, name: str):
    data = tiny_gguf_bytes(tmp_path, name=name, extra_floats=768 * 1024)  # 3 MiB
    repo = fake_hub.add_repo(f"acme/{name}-GGUF", {f"{name}.gguf": data})
    return repo.files[f"{name}.gguf"], data


def test_cancel_keeps_the_partial_file_and_the_next_run_resumes(workspace, fake_hub, tmp_path):
    _, data = _big_repo(fake_hub, tmp_path, "cancelled")
    go_online(workspace)
    # 1: before the file, 2: after its first chunk is on disk
    with pytest.raises(Cancelled):
        hub.pull_model(_Ctx(workspace, cancel_at=2), "acme/cancelled-GGUF", ["cancelled.gguf"])
    parts = list((workspace.models_dir / ".staging").glob("*.parts/*.part"))
    assert len(parts) == 1
    kept = parts[0].stat().st_size
    assert 0 < kept < len(data) and parts[0].read_bytes() == data[:kept]
    assert ModelRegistry(workspace).list() == []

    ctx = _Ctx(workspace)
    result = hub.pull_model(ctx, "acme/cancelled-GGUF", ["cancelled.gguf"])
    assert f"resuming cancelled.gguf at {kept} of {len(data)} bytes" in ctx.logs
    ranges = [r for m, _, r in fake_hub.requests_for("/cancelled.gguf") if m == "GET"]
    assert ranges == [None, f"bytes={kept}-"]
    rec = ModelRegistry(workspace).get(result["model_id"])
    assert rec.sha256 == hashlib.sha256(data).hexdigest()


def test_dropped_connection_resumes_within_the_same_run(workspace, fake_hub, tmp_path):
    served, data = _big_repo(fake_hub, tmp_path, "flaky")
    drop_after = served.drop_after = 1024 * 1024 + 1000
    go_online(workspace)
    ctx = _Ctx(workspace)
    result = hub.pull_model(ctx, "acme/flaky-GGUF", ["flaky.gguf"])
    assert any("connection dropped" in line for line in ctx.logs)
    ranges = [r for m, _, r in fake_hub.requests_for("/flaky.gguf") if m == "GET"]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= drop_after  # only what had not arrived is asked for again
    rec = ModelRegistry(workspace).get(result["model_id"])
    assert rec.sha256 == hashlib.sha256(data).hexdigest()


def test_token_goes_to_the_hub_but_never_to_the_cdn(workspace, fake_hub, tmp_path, monkeypatch):
    token = "hf_" + "x" * 34
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.delenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", raising=False)
    data = tiny_gguf_bytes(tmp_path, name="lfs")
    repo = fake_hub.add_repo("acme/cdn-GGUF", {"lfs.gguf": data})
    repo.files["lfs.gguf"].cdn = True
    go_online(workspace)
    final = _pull(workspace, {"repo_id": "acme/cdn-GGUF", "files": ["lfs.gguf"]})
    assert final.state == JobState.SUCCEEDED, final.error
    assert f"Bearer {token}" in fake_hub.auth_for(fake_hub.url)  # the Hub API got the token
    cdn = fake_hub.auth_for(fake_hub.cdn_url)
    assert cdn and cdn == [None] * len(cdn)  # the body came from the CDN, without it
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
