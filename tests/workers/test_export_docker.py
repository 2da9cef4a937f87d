"""Docker bundles served by llama.cpp's llama-server: contents and SHA256SUMS, the bundle's
``serve.sh`` run natively, then a real offline image build and run.

Both runs stream a chat completion and a tool call with the official ``openai`` client and
scrape ``/metrics`` with the key (401 without it). ``llama-server`` is built once from the
vendored llama.cpp and cached (app/core/export/llama_tools.py; minutes the first time).

The Docker test needs a Docker engine and ``debootstrap``, which
``installers/docker-engine.sh`` (run by ``.ci/run``) installs and starts; without
them it skips with the reason (fails in CI). The base image is made locally without a registry
(``debootstrap`` + ``docker import``, once per tag).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ci import unavailable


@pytest.fixture(scope="module")
def gguf_lib(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[Any]:
    """A workspace holding a verified Q8_0 export of the tiny Llama."""
    from app.core.export.gguf import export_gguf
    from app.core.models import ModelRegistry
    from app.core.workspace import Workspace

    ws = Workspace.open(tmp_path_factory.mktemp("docker-ws") / "ws")
    base = ModelRegistry(ws).import_path(tiny_llama_dir)
    (out,) = export_gguf(ws, base.id, ["Q8_0"])
    yield ws, out.model_id
    ws.close()


@pytest.fixture(scope="module")
def gemma_lib(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Iterator[Any]:
    """A workspace holding the real Gemma 3 270M GGUF (no chat template of its own).

    The server tests use it rather than the tiny Llama: the tool-call test prefills the
    assistant turn, and llama.cpp checks that prefill against its tool grammar token by
    token, which the tiny Llama's toy vocabulary splits differently ("<|" "assistant").
    """
    from app.core.models import ModelRegistry
    from app.core.workspace import Workspace

    ws = Workspace.open(tmp_path_factory.mktemp("docker-gemma-ws") / "ws")
    rec = ModelRegistry(ws).import_path(gemma_gguf, name="gemma-3-270m")
    yield ws, rec.id
    ws.close()


def test_bundle_contents_and_checksums(gguf_lib: Any, tmp_path: Path) -> None:
    from app.core.export.checksums import ChecksumError, check_sums
    from app.core.export.docker import build_bundle

    ws, model_id = gguf_lib
    res = build_bundle(ws, model_id, tmp_path / "bundle")
    folder = res.folder
    for name in ("Dockerfile", "compose.yaml", "README.md", "SHA256SUMS", "sbom.cdx.json"):
        assert (folder / name).is_file(), name
    assert os.access(folder / "serve.sh", os.X_OK) and os.access(
        folder / "bin/llama-server", os.X_OK
    )
    version = _sh(str(folder / "bin/llama-server"), "--version")
    assert version.returncode == 0 and "version:" in version.stdout + version.stderr
    # the tiny Llama's own template has no tool calls: ours go in front of it
    meta = json.loads((folder / "bundle.json").read_text())
    assert meta["template"] == "the model's own template, with DemoAI's tool-call prelude"
    assert "<tool_call>" in (folder / "chat-template.jinja").read_text()
    serve = (folder / "serve.sh").read_text()
    for flag in ("--api-key-file", "--metrics", "--jinja", "--parallel", "--cont-batching"):
        assert flag in serve, flag
    assert "COPY chat-template.jinja" in (folder / "Dockerfile").read_text()
    assert "DEMOAI_PARALLEL" in (folder / "README.md").read_text()
    sbom = json.loads((folder / "sbom.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    names = {c["name"] for c in sbom["components"]}
    assert {"llama-server", meta["model_name"]} <= names
    assert "healthcheck" in (folder / "compose.yaml").read_text()
    with tarfile.open(res.tarball) as tf:
        assert f"{folder.name}/SHA256SUMS" in tf.getnames()
    check_sums(folder)
    _check_kubernetes(folder)
    readme = folder / "README.md"
    readme.write_text(readme.read_text() + "\ntampered\n")
    with pytest.raises(ChecksumError, match=r"modified: README\.md"):
        check_sums(folder)


def test_an_hf_model_is_exported_to_a_verified_gguf_first(
    gguf_lib: Any, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from app.core.export.docker import build_bundle
    from app.core.models import ModelRegistry

    ws, _ = gguf_lib
    reg = ModelRegistry(ws)
    hf = reg.import_path(tiny_llama_dir, name="tiny-llama-hf")
    res = build_bundle(ws, hf.id, tmp_path / "bundle")
    rec = reg.get(res.model_id)
    assert rec.format == "gguf" and rec.id != hf.id
    assert (res.folder / "model" / rec.path.name).stat().st_size == rec.size_bytes


def _check_kubernetes(folder: Path) -> None:
    """The manifests are valid Kubernetes objects, and say what compose.yaml says: the same
    image, port, key file (the compose secret / the mounted Secret), server settings, memory
    and health check."""
    import kubernetes_validate
    import yaml

    from app.core.export.docker import CONTAINER_PORT

    docs = {
        p.name: yaml.safe_load(p.read_text()) for p in sorted((folder / "kubernetes").glob("*"))
    }
    assert set(docs) == {"deployment.yaml", "service.yaml", "secret.yaml"}
    version = kubernetes_validate.latest_version()
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError
    bad = json.loads(json.dumps(docs["deployment.yaml"]))
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        kubernetes_validate.validate(bad, version, strict=True)

    svc = yaml.safe_load((folder / "compose.yaml").read_text())["services"]["model"]
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == svc["image"] == json.loads((folder / "bundle.json").read_text())["image"]
    assert c["ports"][0]["containerPort"] == CONTAINER_PORT
    assert svc["ports"][0].endswith(f":{CONTAINER_PORT}")
    assert docs["service.yaml"]["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
    # the same key file: compose's secret and the Secret mounted as a volume
    env = {e["name"]: e["value"] for e in c["env"]}
    key_file = svc["environment"]["DEMOAI_API_KEY_FILE"]
    assert env["DEMOAI_API_KEY_FILE"] == key_file == "/run/secrets/api-key"
    (secret_ref,) = svc["secrets"]
    assert f"/run/secrets/{secret_ref['target']}" == key_file
    mount = next(m for m in c["volumeMounts"] if m["name"] == "api-key")
    vol = next(v for v in pod["volumes"] if v["name"] == "api-key")["secret"]
    (item,) = vol["items"]
    assert f"{mount['mountPath']}/{item['path']}" == key_file and mount["readOnly"] is True
    assert vol["secretName"] == docs["secret.yaml"]["metadata"]["name"]
    assert docs["secret.yaml"]["stringData"] == {item["key"]: ""}  # no key everyone knows
    for name in ("DEMOAI_PARALLEL", "DEMOAI_CTX_PER_SLOT", "DEMOAI_THREADS"):  # same settings
        assert svc["environment"][name].endswith(f":-{env[name]}}}"), name
    assert svc["mem_limit"].endswith("m")  # Docker's m: MiB; Kubernetes says Mi
    assert c["resources"]["limits"]["memory"] == svc["mem_limit"].removesuffix("m") + "Mi"
    health = svc["healthcheck"]
    live = c["livenessProbe"]
    assert live["httpGet"]["path"] == "/health" and "/health" in health["test"][-1]
    assert f"{live['periodSeconds']}s" == health["interval"]
    assert f"{live['timeoutSeconds']}s" == health["timeout"]
    assert live["failureThreshold"] == health["retries"]
    assert f"{live['initialDelaySeconds']}s" == health["start_period"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and svc["read_only"] is True
    assert c["securityContext"]["runAsUser"] == 65534


def _sh(*cmd: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _ensure_docker() -> None:
    """A Docker engine must answer (``.ci/run`` starts one); skip, or fail in CI, otherwise.

    The test never installs or starts anything itself: a test must not change the host.
    """
    from app.core.export.docker import docker_available

    problem = docker_available()
    if problem is not None:
        unavailable(f"Docker cannot run here: {problem} (installers/docker-engine.sh starts one)")


def _wait_healthy(url: str, proc_alive: Any, logs: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if not proc_alive() or time.monotonic() > deadline:
            pytest.fail("the server never became healthy:\n" + logs())
        time.sleep(0.5)


def _exercise(url: str, key: str) -> None:
    """What IT's clients do: a streamed chat completion, a streamed tool call, /metrics."""
    from openai import AuthenticationError, OpenAI

    client = OpenAI(base_url=url + "/v1", api_key=key, timeout=120)
    (model,) = [m.id for m in client.models.list().data]
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    # The tiny random model may sample its end token first: what matters is that the
    # server read the prompt and streamed an answer that ended properly.
    assert finish == [finish[-1]] and finish[-1] in ("stop", "length")
    usage = next(c.usage for c in chunks if c.usage is not None)
    assert usage.prompt_tokens > 0 and usage.completion_tokens <= 8

    # A tool call, streamed. The random model would never choose to call on its own, so
    # the assistant turn is prefilled with the call marker of the bundle's template; the
    # server's tool grammar and parser (from --jinja and that template) do the rest.
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "description": "The current time in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                    "required": ["city"],
                },
            },
        }
    ]
    stream = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": "What time is it in Paris?"},
            {"role": "assistant", "content": "<tool_call>\n"},
        ],
        tools=tools,  # type: ignore[arg-type]
        tool_choice="required",
        max_tokens=48,
        temperature=0,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            if tc.function is not None:
                entry["name"] += tc.function.name or ""
                entry["arguments"] += tc.function.arguments or ""
    assert calls, "no tool call was streamed"
    assert calls[0]["name"] == "get_time"
    assert json.loads(calls[0]["arguments"])["city"] in ("Paris", "Rome")

    # Prometheus metrics with the key; 401 without it or with a wrong one.
    req = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    total = re.search(r"^llamacpp:tokens_predicted_total (\S+)$", text, re.M)
    assert total is not None and float(total.group(1)) > 0, text[:500]
    # what the Serving pane reads of it (app/core/serving.py): llama.cpp's own figures
    from app.core.serving import parse, read_metrics

    reading = read_metrics(url, key)
    assert reading.engine == "llama.cpp" and reading.completion_tokens == float(total.group(1))
    assert reading.prompt_tokens > 0 and reading.in_progress >= 0 and reading.waiting >= 0
    assert parse(text).completion_tokens == reading.completion_tokens
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url + "/metrics", headers=headers))
        assert err.value.code == 401
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=url + "/v1", api_key="wrong").models.list()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_bundles_server_runs_natively(gemma_lib: Any, tmp_path: Path) -> None:
    """serve.sh, as the image runs it, on loopback: refuses a missing or empty key, then serves."""
    from app.core.export.docker import build_bundle

    ws, model_id = gemma_lib
    folder = build_bundle(ws, model_id, tmp_path / "bundle").folder
    meta = json.loads((folder / "bundle.json").read_text())
    assert meta["template"] == "DemoAI's gemma preset, with DemoAI's tool-call prelude"
    key_file = tmp_path / "api-key"
    env = {**os.environ, "DEMOAI_HOST": "127.0.0.1", "DEMOAI_THREADS": "2",
           "DEMOAI_PARALLEL": "2", "DEMOAI_CTX_PER_SLOT": "512",
           "DEMOAI_API_KEY_FILE": str(key_file)}  # fmt: skip
    serve = str(folder / "serve.sh")
    for content in (None, "", "# the key goes here\n\n"):  # as an unfilled Secret
        if content is not None:
            key_file.write_text(content)
        proc = subprocess.run([serve], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 64, proc.stderr
        assert "API key file" in proc.stderr
    key = "test-key-" + os.urandom(8).hex()
    key_file.write_text(f"# comment\n{key}\n")
    env["DEMOAI_LISTEN_PORT"] = str(port := _free_port())
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([serve], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, lambda: server.poll() is None, lambda: log.read_text(errors="replace"))
        _exercise(url, key)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_docker_bundle_builds_offline_runs_and_answers(gemma_lib: Any, tmp_path: Path) -> None:
    from app.core.export.docker import LOCAL_BASE_IMAGE, build_bundle, make_local_base_image
    from app.core.export.kubernetes import mebibytes

    _ensure_docker()
    if (
        shutil.which("debootstrap") is None
        and _sh("docker", "image", "inspect", LOCAL_BASE_IMAGE).returncode
    ):
        unavailable("no local base image and debootstrap is not installed")
    base = make_local_base_image(LOCAL_BASE_IMAGE)
    ws, model_id = gemma_lib
    tag = f"demoai-test/bundle:{os.getpid()}"
    res = build_bundle(
        ws, model_id, tmp_path / "bundle", base_image=base, image_tag=tag, build=True
    )
    meta = json.loads((res.folder / "bundle.json").read_text())
    name = f"demoai-test-{os.getpid()}"
    try:
        assert res.image == tag and res.image_tar is not None and res.image_tar.stat().st_size > 0
        with tarfile.open(res.image_tar) as tf:
            assert "manifest.json" in tf.getnames()  # docker load reads this
        key = "test-key-" + os.urandom(8).hex()
        key_file = tmp_path / "api-key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o444)  # the container runs as uid 65534
        run = _sh(
            "docker", "run", "-d", "--name", name, "-p", "127.0.0.1::8080",
            # as compose.yaml and the Kubernetes manifests run it
            "--read-only", "--tmpfs", "/tmp:size=64m", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges:true", "--memory", meta["mem_limit"],
            "--health-interval", "2s",  # the image's own check, sooner than every 30 s
            "-v", f"{key_file}:/run/secrets/api-key:ro", "-e", "DEMOAI_THREADS=2", tag,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        port = (
            _sh("docker", "port", name, "8080/tcp").stdout.strip().splitlines()[0].rsplit(":", 1)[1]
        )
        url = f"http://127.0.0.1:{port}"

        def alive() -> bool:
            state = _sh("docker", "inspect", "-f", "{{.State.Running}}", name).stdout.strip()
            return state == "true"

        _wait_healthy(url, alive, lambda: _sh("docker", "logs", name).stderr)
        _exercise(url, key)
        # The memory the bundle asks for holds the server after real requests.
        stats = _sh("docker", "stats", "--no-stream", "--format", "{{json .}}", name)
        used = json.loads(stats.stdout)["MemUsage"].split("/")[0].strip()
        used_mib = float(re.sub(r"[A-Za-z]+$", "", used)) * {
            "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "B": 1 / 2**20,
        }[re.sub(r"^[0-9.]+", "", used)]  # fmt: skip
        print(f"container memory: {used_mib:.0f} MiB (limit {meta['mem_limit']})")
        assert used_mib < mebibytes(meta["mem_limit"])
        # the image's own health check (Python in the base image) agrees
        deadline = time.monotonic() + 120
        while (
            health := _sh("docker", "inspect", "-f", "{{.State.Health.Status}}", name).stdout
        ).strip() != "healthy" and time.monotonic() < deadline:
            time.sleep(2)
        assert health.strip() == "healthy"
    finally:
        _sh("docker", "rm", "-f", name)
        _sh("docker", "rmi", "-f", tag)
