"""Docker bundles for IT: the GGUF, the app's own model host and an offline wheelhouse.

A bundle folder (and a ``.tar.gz`` of it) holds a Dockerfile (base image
configurable), ``compose.yaml`` with a healthcheck, Kubernetes manifests
(``kubernetes/``, see :mod:`app.core.export.kubernetes`), the GGUF model, the same
OpenAI-compatible server the app runs (``app.workers.host`` and the modules it
imports, copied as source), a wheelhouse so ``docker build --network=none``
works, a README for IT, a CycloneDX SBOM and ``SHA256SUMS`` of every file.

The wheelhouse reuses the portable llama-cpp-python wheel that
installers/setup.sh built; the other packages are repacked from this
installation (their installed files and metadata), so no network is needed.
The image therefore needs the same Python minor version and CPU architecture
as this machine (checked in the Dockerfile).
"""

from __future__ import annotations

import ast
import base64
import csv
import hashlib
import importlib.metadata as md
import io
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import app
from app.core.errors import ConfigError, DemoAIError
from app.core.export.checksums import write_sums
from app.core.export.kubernetes import HEALTH, HEALTH_PATH
from app.core.export.kubernetes import render as kubernetes_manifests
from app.core.export.records import ExportStore, new_export_id
from app.core.export.sbom import cyclonedx_for_wheels
from app.core.models.registry import ModelRegistry, slugify
from app.core.store.files import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from app.core.jobs.context import JobContext
    from app.core.workspace.workspace import Workspace

DEFAULT_BASE_IMAGE = "python:3.11-slim"
#: A base image DemoAI can build without a registry (see :func:`make_local_base_image`);
#: the offline installer ships it as a ``docker save`` tarball.
LOCAL_BASE_IMAGE = "demoai/bookworm-python:3.11"
#: Written by installers/offline/install.sh into the app's venv (``sys.prefix``):
#: ``{"tag": ..., "tar": ...}``, the base image the installer carried.
INSTALLED_BASE_IMAGE_INFO = ".demoai-base-image.json"
#: Where the offline installer puts that tarball under its prefix (for messages).
INSTALLER_IMAGE_TAR = "/opt/demoai/current/share/docker/demoai-base-image.tar"
#: What the server needs inside the image (dependencies are followed).
SERVER_REQUIREMENTS = ("llama-cpp-python", "jinja2", "psutil", "prometheus-client")
#: Where the server code starts; its ``app.*`` imports are followed.
SERVER_ENTRY = "app.workers.host"
#: Packages copied whole (engines are registered by name strings, not imports).
SERVER_PACKAGES = ("app.core.infer",)
CONTAINER_PORT = 8080
ProgressFn = Callable[[float | None, str], None]


class DockerError(DemoAIError):
    """The Docker engine is missing or a docker command failed."""


@dataclass
class BundleResult:
    """What :func:`build_bundle` wrote (and built)."""

    export_id: str
    folder: Path
    tarball: Path
    model_id: str
    wheels: list[str]
    image: str | None = None
    image_tar: Path | None = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


# --------------------------------------------------------------------------- server code


def _app_root() -> Path:
    return Path(app.__file__).resolve().parent


def _module_file(mod: str) -> Path | None:
    root = _app_root().parent
    p = root.joinpath(*mod.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    if p.with_suffix(".py").is_file():
        return p.with_suffix(".py")
    return None


def _app_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "app")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "app":
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def server_modules() -> list[Path]:
    """Source files of the model host and every ``app`` module it imports (relative paths)."""
    root = _app_root().parent
    todo = [SERVER_ENTRY]
    for pkg in SERVER_PACKAGES:
        pdir = root.joinpath(*pkg.split("."))
        todo += [f"{pkg}.{p.stem}" for p in sorted(pdir.glob("*.py")) if p.stem != "__init__"]
    seen: set[Path] = set()
    while todo:
        mod = todo.pop()
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):  # every parent package's __init__ too
            f = _module_file(".".join(parts[:i]))
            if f is None or f in seen:
                continue
            seen.add(f)
            todo.extend(_app_imports(f))
    return sorted(p.relative_to(root) for p in seen)


# --------------------------------------------------------------------------- wheelhouse


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(dist: md.Distribution) -> list[str]:
    out = []
    for req in dist.requires or []:
        if ";" in req and "extra" in req.split(";", 1)[1]:
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if m:
            out.append(m.group(1))
    return out


def resolve_installed(names: Iterable[str]) -> list[md.Distribution]:
    """The installed distributions ``names`` need, dependencies included (no extras)."""
    found: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        n = _norm(todo.pop())
        if n in found:
            continue
        try:
            dist = md.distribution(n)
        except md.PackageNotFoundError:
            raise ConfigError(
                f"The package {n} is not installed, so it cannot go into the wheelhouse.",
                "Run installers/setup.sh.",
            ) from None
        found[n] = dist
        todo.extend(_requirement_names(dist))
    return [found[k] for k in sorted(found)]


def repack_wheel(dist: md.Distribution, dest: Path) -> Path:
    """Rebuild a wheel from an installed distribution's files (offline ``pip wheel``)."""
    files = [f for f in dist.files or [] if ".." not in Path(str(f)).parts]
    info = next((f for f in files if str(f).endswith(".dist-info/WHEEL")), None)
    if info is None:
        raise ConfigError(f"{dist.metadata['Name']} was not installed from a wheel.")
    tags = [
        ln.split(":", 1)[1].strip()
        for ln in (info.read_text() or "").splitlines()
        if ln.startswith("Tag:")
    ]
    tag = tags[0] if tags else "py3-none-any"
    name = re.sub(r"[-.]+", "_", dist.metadata["Name"])
    whl = dest / f"{name}-{dist.version}-{tag}.whl"
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    record_name = f"{Path(str(info)).parent.as_posix()}/RECORD"
    rows: list[list[str]] = []
    tmp = whl.with_name(f".{whl.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(files, key=str):
            rel = Path(str(f)).as_posix()
            if "__pycache__" in rel or rel.endswith(".pyc"):
                continue
            if rel.split("/")[0].endswith(".dist-info") and Path(rel).name in skip:
                continue
            src = Path(str(f.locate()))
            if not src.is_file():
                continue
            data = src.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            zi = zipfile.ZipInfo(rel, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = (src.stat().st_mode & 0o777 | 0o100000) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
            rows.append([rel, f"sha256={digest.decode()}", str(len(data))])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([*rows, [record_name, "", ""]])
        zf.writestr(zipfile.ZipInfo(record_name, date_time=(2020, 1, 1, 0, 0, 0)), buf.getvalue())
    os.replace(tmp, whl)
    return whl


def cached_llama_wheel() -> Path | None:
    """The portable llama-cpp-python wheel installers/setup.sh built, when it is there."""
    from app.core.export.gguf import llama_cpp_source

    try:
        version = md.version("llama-cpp-python")
    except md.PackageNotFoundError:
        return None
    roots = []
    if os.environ.get("DEMOAI_WHEEL_CACHE"):
        roots += sorted(Path(os.environ["DEMOAI_WHEEL_CACHE"]).glob("llama_cpp_python-*"))
    try:
        roots.insert(0, llama_cpp_source().parents[2])  # <cache>/src/vendor/llama.cpp
    except (ConfigError, IndexError):
        pass
    for root in roots:
        for whl in sorted(root.glob(f"llama_cpp_python-{version}-*.whl")):
            return whl
    return None


def build_wheelhouse(dest: Path, requirements: Iterable[str] = SERVER_REQUIREMENTS) -> list[Path]:
    """Fill ``dest`` with wheels for ``requirements`` and their dependencies, offline."""
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for dist in resolve_installed(requirements):
        if _norm(dist.metadata["Name"]) == "llama-cpp-python":
            cached = cached_llama_wheel()
            if cached is not None:
                out.append(Path(shutil.copy2(cached, dest / cached.name)))
                continue
        out.append(repack_wheel(dist, dest))
    return out


def _gomp() -> Path | None:
    """libgomp (llama.cpp's OpenMP runtime): slim base images do not ship it."""
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"):
        p = Path(d) / "libgomp.so.1"
        if p.is_file():
            return p.resolve()
    return None


# --------------------------------------------------------------------------- files


def _dockerfile(model_file: str, model_name: str, base_image: str, pyver: str) -> str:
    return f"""\
# DemoAI model server: {model_name}
# Build offline:  docker build --network=none -t IMAGE .
ARG BASE_IMAGE={base_image}
FROM ${{BASE_IMAGE}}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \\
    LD_LIBRARY_PATH=/opt/demoai/lib PYTHONPATH=/opt/demoai/server \\
    DEMOAI_MODEL_NAME={model_name} DEMOAI_THREADS=0 DEMOAI_N_CTX=4096
COPY wheels /opt/demoai/wheels
COPY lib /opt/demoai/lib
RUN python3 -c "import sys; v='%d.%d' % sys.version_info[:2]; \\
assert v == '{pyver}', 'this bundle needs Python {pyver} in the base image, found ' + v" \\
 && python3 -m venv /opt/demoai/venv \\
 && /opt/demoai/venv/bin/python -m pip install --no-index --no-cache-dir \\
      --find-links /opt/demoai/wheels {" ".join(SERVER_REQUIREMENTS)} \\
 && /opt/demoai/venv/bin/python -c "import llama_cpp, jinja2, psutil, prometheus_client" \\
 && rm -rf /opt/demoai/wheels
COPY server /opt/demoai/server
COPY model /opt/demoai/model
USER 65534:65534
EXPOSE {CONTAINER_PORT}
HEALTHCHECK --interval={HEALTH["interval"]}s --timeout={HEALTH["timeout"]}s --start-period={HEALTH["start_period"]}s --retries={HEALTH["retries"]} \\
  CMD ["/opt/demoai/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{CONTAINER_PORT}{HEALTH_PATH}', timeout=4)"]
# The API key comes from DEMOAI_HOST_API_KEY; the server refuses to start without it.
CMD ["sh", "-c", "exec /opt/demoai/venv/bin/python -m app.workers.host --host 0.0.0.0 --allow-remote --port {CONTAINER_PORT} --threads \\"$DEMOAI_THREADS\\" --n-ctx \\"$DEMOAI_N_CTX\\" --preload --model \\"$DEMOAI_MODEL_NAME=/opt/demoai/model/{model_file}:gguf\\""]
"""


def _compose(image: str, base_image: str, mem_limit: str) -> str:
    return f"""\
services:
  model:
    image: {image}
    build:
      context: .
      network: none
      args:
        BASE_IMAGE: {base_image}
    ports:
      - "${{DEMOAI_PORT:-8080}}:{CONTAINER_PORT}"
    environment:
      DEMOAI_HOST_API_KEY: ${{DEMOAI_HOST_API_KEY:?set DEMOAI_HOST_API_KEY to the API key clients must send}}
      DEMOAI_THREADS: ${{DEMOAI_THREADS:-0}}
    healthcheck:
      test: ["CMD", "/opt/demoai/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{CONTAINER_PORT}{HEALTH_PATH}', timeout=4)"]
      interval: {HEALTH["interval"]}s
      timeout: {HEALTH["timeout"]}s
      retries: {HEALTH["retries"]}
      start_period: {HEALTH["start_period"]}s
    restart: unless-stopped
    mem_limit: {mem_limit}
    read_only: true
    tmpfs:
      - /tmp:size=64m
    security_opt:
      - no-new-privileges:true
    cap_drop:
      - ALL
"""


def _readme(m: dict[str, Any]) -> str:
    return f"""\
# {m["model_name"]}: DemoAI model server

This folder builds a container that serves **{m["model_name"]}** ({m["quant"] or "GGUF"},
{m["model_size_mb"]:.0f} MB) through an OpenAI-compatible HTTP API (`/v1/chat/completions`,
`/v1/completions`, `/v1/models`, `/v1/embeddings`; `/health` without a key). It is the
same server the DemoAI app uses. Nothing is downloaded: the build works with
networking off.

## Check the files

    sha256sum -c SHA256SUMS

Every file is listed; a modified file fails the check. `sbom.cdx.json` is a
CycloneDX SBOM of the Python packages inside the image (`wheels/`).

## Build

    docker build --network=none -t {m["image"]} .
    # or another base image with Python {m["python"]} ({m["arch"]}):
    docker build --network=none --build-arg BASE_IMAGE=registry.example/python:{m["python"]}-slim -t {m["image"]} .

The base image must provide Python {m["python"]} with `venv` (the default,
`{m["base_image"]}`, does). Without a registry, load the base image that
DemoAI's offline installer carries (`docker load -i
/opt/demoai/current/share/docker/demoai-base-image.tar`, then
`--build-arg BASE_IMAGE={LOCAL_BASE_IMAGE}`), or import one you trust.

## Run

    export DEMOAI_HOST_API_KEY=$(openssl rand -hex 24)   # clients send it as a Bearer token
    docker run -d --name {m["slug"]} -p 8080:{CONTAINER_PORT} -e DEMOAI_HOST_API_KEY {m["image"]}
    # or: DEMOAI_HOST_API_KEY=... DEMOAI_PORT=8080 docker compose up -d

The server refuses to start without `DEMOAI_HOST_API_KEY`. Change the published
port with `-p PORT:{CONTAINER_PORT}` (compose: `DEMOAI_PORT`). `DEMOAI_THREADS`
sets CPU threads (0 = all), `DEMOAI_N_CTX` the context size (default 4096).

Test it:

    curl -s localhost:8080/health
    curl -s localhost:8080/v1/chat/completions -H "Authorization: Bearer $DEMOAI_HOST_API_KEY" \\
      -H 'Content-Type: application/json' \\
      -d '{{"model": "{m["model_name"]}", "messages": [{{"role": "user", "content": "Hello"}}]}}'

## Kubernetes

`kubernetes/` holds a Deployment, a Service (ClusterIP, port {CONTAINER_PORT}) and a Secret
for the key. They run the same image with the same port, key variable, memory and
health check as compose.yaml; the container runs as `nobody` with a read-only root
filesystem. At an air-gapped site, load the image into the cluster's registry or
nodes first (`docker load -i IMAGE.tar`, then `docker push` to your registry, or
`ctr -n k8s.io images import IMAGE.tar` on each node), and set the key:

    kubectl create secret generic {m["slug"]}-api-key --from-literal=api-key=$(openssl rand -hex 24)
    kubectl apply -f kubernetes/deployment.yaml -f kubernetes/service.yaml
    kubectl port-forward service/{m["slug"]} 8080:{CONTAINER_PORT}   # then test as above

(or fill in `kubernetes/secret.yaml` and `kubectl apply -f kubernetes/`). The Secret
ships with an empty key: the server refuses to start without one. The Deployment
requests {int(m["memory_hint_mb"]) + 1} MiB and is limited to {m["mem_limit"].removesuffix("m")} MiB, like compose.

## Resources

- CPU only; {m["arch"]}. One request runs at a time per model (others queue).
- Memory: about {m["memory_hint_mb"]:.0f} MB (model file plus context and runtime);
  compose.yaml limits the container to {m["mem_limit"]}.
- Disk: about {m["model_size_mb"] + 150:.0f} MB for the image.
- Requests are logged to stdout as JSON lines only when `--request-log` is added.

Model sha256: `{m["model_sha256"]}`. Exported by DemoAI {m["demoai_version"]}.
"""


# --------------------------------------------------------------------------- bundle


def build_bundle(
    ws: Workspace,
    model: str,
    out_dir: str | Path,
    *,
    base_image: str = DEFAULT_BASE_IMAGE,
    image_tag: str | None = None,
    build: bool = False,
    save_image: bool = True,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> BundleResult:
    """Write a Docker bundle of GGUF model ``model`` to ``out_dir`` and ``out_dir.tar.gz``.

    With ``build``, also build the image (``--network=none``) and, with
    ``save_image``, ``docker save`` it to ``<out_dir>.image.tar``.
    """
    reg = ModelRegistry(ws)
    store = ExportStore(ws)
    rec = reg.get(model)
    if rec.format != "gguf":
        raise ConfigError(
            f"{rec.id} is a '{rec.format}' model; a Docker bundle serves a GGUF.",
            f"Export it first: demoai export gguf {rec.id} --quant Q8_0",
        )
    folder = Path(out_dir).expanduser().absolute()
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} already exists and is not empty.", "Choose a new folder.")
    tarball = folder.with_name(folder.name + ".tar.gz")
    slug = slugify(rec.name, 40)
    image = image_tag or f"demoai/{slug}:{rec.sha256[:12]}"
    export_id = new_export_id(rec.name, "docker")
    params = {"base_image": base_image, "image": image, "build": build}
    store.start(export_id, "docker", rec.id, path=folder, params=params)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    say = log or (lambda _t: None)

    def step(frac: float, msg: str) -> None:
        if progress is not None:
            progress(frac, msg)

    try:
        step(0.02, "copying the model")
        (stage / "model").mkdir()
        model_file = rec.path.name
        shutil.copy2(rec.path, stage / "model" / model_file)
        step(0.3, "copying the server")
        root = _app_root().parent
        mods = server_modules()
        for rel in mods:
            dst = stage / "server" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, dst)
        step(0.4, "building the wheelhouse")
        wheels = build_wheelhouse(stage / "wheels")
        say("wheelhouse: " + ", ".join(w.name for w in wheels))
        (stage / "lib").mkdir()
        gomp = _gomp()
        if gomp is not None:
            shutil.copy2(gomp, stage / "lib" / "libgomp.so.1")
        step(0.7, "writing Dockerfile, compose.yaml, Kubernetes manifests, README, SBOM")
        pyver = f"{sys.version_info[0]}.{sys.version_info[1]}"
        size = rec.size_bytes
        mem_mb = size / 2**20 * 1.3 + 512
        meta = {
            "export_id": export_id,
            "model_id": rec.id,
            "model_name": slug,
            "model_file": model_file,
            "model_sha256": rec.sha256,
            "model_size_mb": size / 2**20,
            "quant": rec.quantization,
            "image": image,
            "slug": slug,
            "base_image": base_image,
            "python": pyver,
            "arch": platform.machine(),
            "memory_hint_mb": mem_mb,
            "mem_limit": f"{int(mem_mb * 1.5 // 256 + 1) * 256}m",
            "demoai_version": app.__version__,
            "server_modules": [p.as_posix() for p in mods],
            "wheels": [w.name for w in wheels],
            "created_at": time.time(),
        }
        atomic_write_text(stage / "Dockerfile", _dockerfile(model_file, slug, base_image, pyver))
        atomic_write_text(
            stage / "compose.yaml", _compose(image, base_image, str(meta["mem_limit"]))
        )
        (stage / "kubernetes").mkdir()
        for name, text in kubernetes_manifests(meta, port=CONTAINER_PORT).items():
            atomic_write_text(stage / "kubernetes" / name, text)
        atomic_write_text(stage / "README.md", _readme(meta))
        server_component = {
            "type": "application",
            "name": "demoai-model-host",
            "version": app.__version__,
            "description": "DemoAI's OpenAI-compatible model host (source under server/)",
        }
        sbom = cyclonedx_for_wheels(
            wheels, name=f"demoai-bundle-{slug}", version=app.__version__, extra=[server_component]
        )
        atomic_write_json(stage / "sbom.cdx.json", sbom)
        atomic_write_json(stage / "bundle.json", meta)
        write_sums(stage)
        if folder.exists():
            folder.rmdir()
        os.rename(stage, folder)
        step(0.8, "writing the .tar.gz")
        tmp_tar = tarball.with_name(f".{tarball.name}.tmp")
        with tarfile.open(tmp_tar, "w:gz", compresslevel=1) as tf:
            tf.add(folder, arcname=folder.name)
        os.replace(tmp_tar, tarball)
        result = BundleResult(
            export_id, folder, tarball, rec.id, [w.name for w in wheels], files=[]
        )
        result.files = sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
        )
        if build:
            step(0.83, f"checking the base image {base_image}")
            ensure_base_image(base_image, log=say)
            step(0.85, f"docker build {image}")
            build_image(folder, image, base_image=base_image, log=say)
            result.image = image
            if save_image:
                step(0.95, "docker save")
                result.image_tar = save_docker_image(
                    image, folder.with_name(folder.name + ".image.tar")
                )
        store.finish(export_id, ok=True, path=folder, size_bytes=tarball.stat().st_size)
        step(1.0, "bundle ready")
        return result
    except BaseException as exc:
        store.finish(export_id, ok=False, error=str(exc) or type(exc).__name__)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# --------------------------------------------------------------------------- docker engine


def docker_available() -> str | None:
    """None when a Docker engine answers; otherwise why not (for messages and test skips)."""
    exe = shutil.which("docker")
    if exe is None:
        return "the docker client is not installed"
    try:
        proc = subprocess.run(
            [exe, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if proc.returncode != 0:
        return "no Docker engine answers: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None


def _docker(
    args: list[str], *, timeout: float = 1800, log: Callable[[str], None] | None = None
) -> str:
    why = docker_available()
    if why is not None:
        raise DockerError(
            f"Docker is not available: {why}.",
            "Install and start Docker, or build later from the bundle's README.",
        )
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if log is not None:
        for line in (proc.stdout + proc.stderr).splitlines()[-40:]:
            log(line)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise DockerError(f"docker {args[0]} failed (exit code {proc.returncode}).", tail)
    return proc.stdout


def build_image(
    folder: Path,
    tag: str,
    *,
    base_image: str | None = None,
    log: Callable[[str], None] | None = None,
) -> str:
    """``docker build --network=none`` the bundle in ``folder`` as ``tag``."""
    args = ["build", "--network=none", "-t", tag]
    if base_image:
        args += ["--build-arg", f"BASE_IMAGE={base_image}"]
    _docker([*args, str(folder)], log=log)
    return tag


def save_docker_image(tag: str, out: Path) -> Path:
    """``docker save`` an image to a tar that ``docker load`` reads."""
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        _docker(["save", "-o", str(tmp), tag])
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def image_exists(tag: str) -> bool:
    """True when the local engine has an image called ``tag``."""
    try:
        _docker(["image", "inspect", tag], timeout=60)
    except DockerError:
        return False
    return True


def make_local_base_image(
    tag: str = LOCAL_BASE_IMAGE,
    *,
    suite: str = "bookworm",
    mirror: str = "http://deb.debian.org/debian",
    rootfs: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> str:
    """Make a Debian base image with Python and venv without any registry (once per tag).

    ``debootstrap --variant=minbase`` a root file system (needs root and the
    Debian mirror, or an existing ``rootfs``) and ``docker import`` it.
    """
    if image_exists(tag):
        return tag
    work: Path | None = None
    if rootfs is None or not (rootfs / "usr/bin/python3").exists():
        if shutil.which("debootstrap") is None:
            raise DockerError("debootstrap is not installed.", "apt-get install -y debootstrap")
        work = Path(tempfile.mkdtemp(prefix="demoai-rootfs-"))
        rootfs = work / "rootfs"
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,libgomp1",
             suite, str(rootfs), mirror],
            capture_output=True, text=True, timeout=1800, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise DockerError("debootstrap failed.", proc.stderr[-2000:])
    try:
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(
            ["docker", "import", "-", tag], stdin=tar.stdout, capture_output=True, text=True,
            timeout=1800, check=False,
        )  # fmt: skip
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait()
        if imp.returncode != 0:
            raise DockerError("docker import failed.", imp.stderr[-2000:])
        if log is not None:
            log(f"imported {tag}")
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return tag


# --------------------------------------------------------------------------- base image


@dataclass(frozen=True)
class InstalledBaseImage:
    """The base image an offline installer carried: its tag and its ``docker save`` tarball."""

    tag: str
    tar: Path


def installed_base_image(prefix: Path | None = None) -> InstalledBaseImage | None:
    """The base image recorded by the offline installer in this venv, when there is one."""
    info = Path(sys.prefix if prefix is None else prefix) / INSTALLED_BASE_IMAGE_INFO
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
        return InstalledBaseImage(str(data["tag"]), Path(str(data["tar"])))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def default_base_image() -> str:
    """The installer's base image when this is an offline install, else ``python:3.11-slim``."""
    found = installed_base_image()
    return found.tag if found is not None else DEFAULT_BASE_IMAGE


def load_command(tar: Path | str) -> str:
    """The exact shell command that loads a ``docker save`` tarball."""
    return f"docker load -i {shlex.quote(str(tar))}"


def ensure_base_image(tag: str, *, log: Callable[[str], None] | None = None) -> None:
    """Make sure the engine has ``tag`` before an offline build, or say how to get it.

    Loads the installer's tarball when ``tag`` is the image it carried; otherwise
    tries ``docker pull`` once (fails fast without a registry) and then raises a
    :class:`DockerError` naming the command that loads a base image.
    """
    if image_exists(tag):
        return
    found = installed_base_image()
    if found is not None and found.tag == tag and found.tar.is_file():
        if log is not None:
            log(f"loading the base image {tag} from {found.tar}")
        _docker(["load", "-i", str(found.tar)], timeout=900, log=log)
        if image_exists(tag):
            return
    try:
        _docker(["pull", tag], timeout=300)
    except (DockerError, subprocess.TimeoutExpired):
        pass
    else:
        return
    if found is not None and found.tar.is_file():
        hint = f"Load the one the offline installer carried: {load_command(found.tar)}"
        if found.tag != tag:
            hint += f" and build with --base-image {found.tag}"
    else:
        hint = (
            "Without a registry, load the base image shipped with DemoAI's offline installer: "
            f"{load_command(INSTALLER_IMAGE_TAR)} (where the installer put it), "
            f"then build with --base-image {LOCAL_BASE_IMAGE}"
        )
    raise DockerError(
        f"The base image {tag} is not in the local Docker engine and could not be pulled.",
        hint + ".",
    )


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rootfs_image_tar(
    layer: Path,
    out: Path,
    tag: str = LOCAL_BASE_IMAGE,
    *,
    cmd: Iterable[str] = ("/bin/bash",),
    created_by: str = "debootstrap --variant=minbase",
) -> Path:
    """Write a ``docker load`` tarball of a one-layer image from a root file system tar.

    The same layout ``docker save`` writes (``manifest.json``, a config named by
    its SHA-256, the layer), so an image needs neither a registry nor a running
    engine to be made: ``layer`` is ``tar -C ROOTFS -c .``.
    """
    diff_id = _sha256_of(layer)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config = {
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": list(cmd),
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": created, "created_by": created_by}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    repo, _, version = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
    manifest = [{"Config": config_name, "RepoTags": [f"{repo}:{version}"],
                 "Layers": [f"{diff_id}/layer.tar"]}]  # fmt: skip
    repositories = {repo: {version: diff_id}}
    tmp = out.with_name(f".{out.name}.tmp")

    def add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = len(data), int(time.time()), 0o644
        tf.addfile(ti, io.BytesIO(data))

    try:
        with tarfile.open(tmp, "w") as tf:
            add_bytes(tf, config_name, config_bytes)
            tf.add(layer, arcname=f"{diff_id}/layer.tar")
            add_bytes(tf, "manifest.json", json.dumps(manifest).encode())
            add_bytes(tf, "repositories", json.dumps(repositories).encode())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def export_docker_job(
    ctx: JobContext,
    model: str,
    out_dir: str,
    base_image: str | None = None,
    build: bool = False,
    image_tag: str | None = None,
) -> dict[str, Any]:
    """Job ``export.docker``."""
    res = build_bundle(
        ctx.workspace,
        model,
        out_dir,
        base_image=base_image or default_base_image(),
        build=build,
        image_tag=image_tag,
        progress=ctx.progress,
        log=ctx.log,
    )
    ctx.artifact("bundle", res.folder)
    ctx.artifact("bundle-tar", res.tarball)
    if res.image_tar is not None:
        ctx.artifact("image-tar", res.image_tar)
    result = res.to_dict()
    ctx.result(result)
    return result
