"""Docker bundles for IT: the GGUF model served by llama.cpp's own ``llama-server``.

A bundle folder (and a ``.tar.gz`` of it) holds a Dockerfile (base image
configurable), ``compose.yaml`` with a healthcheck, Kubernetes manifests
(``kubernetes/``, see :mod:`app.core.export.kubernetes`), the GGUF model,
``bin/llama-server`` built from the same llama.cpp revision as the app's runtime
(:mod:`app.core.export.llama_tools`; static, portable), ``serve.sh`` (the one place
that says how the server runs: parallel slots with continuous batching, the API key
from a file, ``--metrics``, Jinja chat templates), a chat template file when the model
has none, a README for IT, a CycloneDX SBOM and ``SHA256SUMS`` of every file.

Nothing is downloaded when the image is built (``docker build --network=none``). The
binary needs a glibc-based base image at least as new as this machine's (checked in
the Dockerfile); Python 3 in the base image is used only by the health check.
An HF model is first converted to a verified GGUF by :func:`app.core.export.gguf.export_gguf`.
"""

from __future__ import annotations

import hashlib
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import app
from app.core.errors import ConfigError, DemoAIError
from app.core.export.checksums import write_sums
from app.core.export.kubernetes import HEALTH, HEALTH_PATH, KEY_FILE
from app.core.export.kubernetes import render as kubernetes_manifests
from app.core.export.records import ExportStore, new_export_id
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
CONTAINER_PORT = 8080
#: Default parallel slots (concurrent requests batched together) and context per slot.
DEFAULT_PARALLEL = 8
DEFAULT_CTX_PER_SLOT = 2048
#: The chat template file written when the model carries none (our preset for it).
TEMPLATE_FILE = "chat-template.jinja"
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
    server: str = "llama-server"
    image: str | None = None
    image_tar: Path | None = None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


# --------------------------------------------------------------------------- server


def _gomp() -> Path | None:
    """libgomp (llama.cpp's OpenMP runtime): slim base images do not ship it."""
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"):
        p = Path(d) / "libgomp.so.1"
        if p.is_file():
            return p.resolve()
    return None


#: Hermes-style tool calls for presets that have none: the tools go into the system turn,
#: calls are ``<tool_call>{json}</tool_call>`` in the assistant turn, results come back in a
#: user turn. llama-server's template analysis finds the call markers in it and builds the
#: grammar and parser for streamed tool calls from them (as for our ``hermes`` preset).
_TOOLS_PRELUDE = (
    "{%- set _t = namespace(msgs=[], sys='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' and loop.first -%}{%- set _t.sys = m['content'] -%}"
    "{%- elif m['role'] == 'tool' -%}"
    "{%- set _t.msgs = _t.msgs + [{'role': 'user', 'content': "
    "'<tool_response>\\n' + m['content'] + '\\n</tool_response>'}] -%}"
    "{%- elif m['role'] == 'assistant' and m['tool_calls'] -%}"
    "{%- set _c = namespace(text=(m['content'] or '')) -%}"
    "{%- for c in m['tool_calls'] -%}"
    "{%- set _c.text = _c.text + '<tool_call>\\n' + ({'name': c['function']['name'], "
    "'arguments': c['function']['arguments']} | tojson) + '\\n</tool_call>' -%}"
    "{%- endfor -%}"
    "{%- set _t.msgs = _t.msgs + [{'role': 'assistant', 'content': _c.text}] -%}"
    "{%- else -%}{%- set _t.msgs = _t.msgs + [{'role': m['role'], 'content': m['content']}] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if tools -%}"
    "{%- set _t.sys = (_t.sys + '\\n\\n' if _t.sys else '') + '# Tools\\n\\nYou may call one or "
    "more functions to assist with the user query. You are provided with function signatures "
    "within <tools></tools> XML tags:\\n<tools>' -%}"
    "{%- for t in tools -%}{%- set _t.sys = _t.sys + '\\n' + (t | tojson) -%}{%- endfor -%}"
    "{%- set _t.sys = _t.sys + '\\n</tools>\\n\\nFor each function call, return a JSON object "
    "with the function name and arguments within <tool_call></tool_call> XML tags:\\n"
    '<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n'
    "</tool_call>' -%}"
    "{%- endif -%}"
    "{%- set _msgs = ([{'role': 'system', 'content': _t.sys}] if _t.sys else []) + _t.msgs -%}"
)


def bundle_chat_template(model_path: Path) -> tuple[str, str] | None:
    """(what it is, Jinja source) of the template file the bundle ships, or None for none.

    A model whose own template handles tools needs no file (llama-server reads the
    template from the GGUF). A model without a template gets the preset the app guesses
    for its architecture. A template (its own or a preset) without tool calls gets
    :data:`_TOOLS_PRELUDE` in front (ChatML becomes our ``hermes`` preset), so that the
    bundle's server streams tool calls for every model.
    """
    from app.core.infer.templates import guess_preset, preset
    from app.core.models.metadata import read_gguf_metadata

    meta = read_gguf_metadata(model_path)
    source = meta.chat_template
    if source is None:
        name = guess_preset(meta.architecture)
        if name in ("chatml", "hermes"):
            return "DemoAI's hermes preset", preset("hermes").source
        what, source = f"DemoAI's {name} preset", preset(name).source
    elif "tool" in source:
        return None
    else:
        what = "the model's own template"
    return f"{what}, with DemoAI's tool-call prelude", _TOOLS_PRELUDE + re.sub(
        r"\bmessages\b", "_msgs", source
    )


def _first_int(value: Any) -> int:
    if isinstance(value, list):  # per-layer values (some architectures)
        return max((int(v) for v in value), default=0)
    return int(value) if isinstance(value, int | float) else 0


def kv_cache_mb(model_path: Path, n_ctx: int) -> float:
    """The f16 KV cache of ``n_ctx`` tokens (all slots together) in MiB, from the GGUF header."""
    from app.core.models.metadata import read_gguf_header

    kv, _ = read_gguf_header(model_path)
    arch = str(kv.get("general.architecture") or "")
    layers = _first_int(kv.get(f"{arch}.block_count"))
    embd = _first_int(kv.get(f"{arch}.embedding_length"))
    heads = _first_int(kv.get(f"{arch}.attention.head_count")) or 1
    heads_kv = _first_int(kv.get(f"{arch}.attention.head_count_kv")) or heads
    k_len = _first_int(kv.get(f"{arch}.attention.key_length")) or embd // heads
    v_len = _first_int(kv.get(f"{arch}.attention.value_length")) or embd // heads
    return n_ctx * layers * heads_kv * (k_len + v_len) * 2 / 2**20


def memory_estimate_mb(model_path: Path, parallel: int, ctx_per_slot: int) -> float:
    """What the server needs: the model, the KV cache of every slot, buffers and runtime (MiB).

    Buffers: llama-server's compute buffer (21 MiB for Gemma 3 270M, 6 MiB for the tiny
    test Llama at 4 slots x 2048, as it logs them) is covered by 48 MiB, plus one row of
    logits per slot (vocabulary x 4 bytes); the runtime by 64 MiB. Gemma 3 270M at
    4 x 2048 measured 406 MiB RSS idle and 470 MiB after requests; this gives 501 MiB.
    The KV cache is counted without sliding-window savings, so it errs on the high side.
    """
    from app.core.models.metadata import read_gguf_header

    kv, _ = read_gguf_header(model_path)
    tokens = kv.get("tokenizer.ggml.tokens")
    if isinstance(tokens, dict):  # large arrays are summarised by the header reader
        n_vocab = int(tokens.get("array_length") or 0)
    else:
        n_vocab = len(tokens) if isinstance(tokens, list) else 0
    buffers = 48 + parallel * (n_vocab or 256_000) * 4 / 2**20
    return (
        model_path.stat().st_size / 2**20
        + kv_cache_mb(model_path, parallel * ctx_per_slot)
        + buffers
        + 64
    )


def _serve_sh(model_file: str, model_name: str, parallel: int, ctx_per_slot: int) -> str:
    return f"""\
#!/bin/sh
# Starts llama.cpp's llama-server as this bundle runs it: the image's CMD, and the same
# script runs from the unpacked bundle folder on a Linux host (DEMOAI_HOST=127.0.0.1).
# Settings (environment): DEMOAI_PARALLEL slots (default {parallel}), DEMOAI_CTX_PER_SLOT
# tokens (default {ctx_per_slot}), DEMOAI_THREADS (0 = llama.cpp's default), DEMOAI_HOST,
# DEMOAI_LISTEN_PORT (default {CONTAINER_PORT}), DEMOAI_API_KEY_FILE (default {KEY_FILE}).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
key_file=${{DEMOAI_API_KEY_FILE:-{KEY_FILE}}}
die() {{ echo "serve.sh: $*" >&2; exit 64; }}
[ -r "$key_file" ] || die "cannot read the API key file $key_file (mount the key there, see README.md)"
# llama-server serves WITHOUT authentication when the file holds no key: refuse that.
grep -v '^#' "$key_file" | grep -q '[^[:space:]]' || die "the API key file $key_file is empty"
# --threads-http below: streaming clients beyond the slots each hold an HTTP thread, and /health must
# still answer (the health check and the Kubernetes probes) when they do.
parallel=${{DEMOAI_PARALLEL:-{parallel}}}
ctx=${{DEMOAI_CTX_PER_SLOT:-{ctx_per_slot}}}
threads=${{DEMOAI_THREADS:-0}}
port=${{DEMOAI_LISTEN_PORT:-{CONTAINER_PORT}}}
for v in "$parallel" "$ctx" "$threads" "$port"; do
  case $v in ''|*[!0-9]*) die "DEMOAI_PARALLEL, DEMOAI_CTX_PER_SLOT, DEMOAI_THREADS and DEMOAI_LISTEN_PORT must be numbers";; esac
done
[ "$parallel" -ge 1 ] || die "DEMOAI_PARALLEL must be at least 1"
set -- --model "$here/model/{model_file}" --alias {shlex.quote(model_name)} \\
  --host "${{DEMOAI_HOST:-0.0.0.0}}" --port "$port" --api-key-file "$key_file" \\
  --parallel "$parallel" --ctx-size $((parallel * ctx)) --cont-batching \\
  --threads-http $((parallel * 2 + 16)) \\
  --metrics --no-slots --no-webui --cache-ram 0 --jinja
if [ -f "$here/{TEMPLATE_FILE}" ]; then
  set -- "$@" --chat-template-file "$here/{TEMPLATE_FILE}"
fi
if [ "$threads" -gt 0 ]; then
  set -- "$@" --threads "$threads" --threads-batch "$threads"
fi
export LD_LIBRARY_PATH="$here/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
exec "$here/bin/llama-server" "$@"
"""


_HEALTH_CMD = (
    "import urllib.request; "
    f"urllib.request.urlopen('http://127.0.0.1:{CONTAINER_PORT}{HEALTH_PATH}', timeout=4)"
)


def _dockerfile(
    model_name: str, base_image: str, glibc: str, template: bool, parallel: int, ctx: int
) -> str:
    copy_template = f"COPY {TEMPLATE_FILE} /opt/demoai/{TEMPLATE_FILE}\n" if template else ""
    return f"""\
# DemoAI model server: {model_name}, served by llama.cpp's llama-server
# Build offline:  docker build --network=none -t IMAGE .
ARG BASE_IMAGE={base_image}
FROM ${{BASE_IMAGE}}
ENV DEMOAI_PARALLEL={parallel} DEMOAI_CTX_PER_SLOT={ctx} DEMOAI_THREADS=0 \\
    DEMOAI_API_KEY_FILE={KEY_FILE}
COPY bin /opt/demoai/bin
COPY lib /opt/demoai/lib
COPY serve.sh /opt/demoai/serve.sh
# llama-server was built against glibc {glibc}; the base image needs that or newer.
RUN LD_LIBRARY_PATH=/opt/demoai/lib /opt/demoai/bin/llama-server --version \\
 || {{ echo "llama-server does not run on this base image: it needs glibc {glibc} or newer and libstdc++" >&2; exit 1; }}
COPY model /opt/demoai/model
{copy_template}USER 65534:65534
EXPOSE {CONTAINER_PORT}
HEALTHCHECK --interval={HEALTH["interval"]}s --timeout={HEALTH["timeout"]}s --start-period={HEALTH["start_period"]}s --retries={HEALTH["retries"]} \\
  CMD ["python3", "-c", "{_HEALTH_CMD}"]
# The API key is read from DEMOAI_API_KEY_FILE ({KEY_FILE}); serve.sh refuses to start without one.
CMD ["/opt/demoai/serve.sh"]
"""


def _compose(image: str, base_image: str, mem_limit: str, parallel: int, ctx: int) -> str:
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
      DEMOAI_PARALLEL: ${{DEMOAI_PARALLEL:-{parallel}}}
      DEMOAI_CTX_PER_SLOT: ${{DEMOAI_CTX_PER_SLOT:-{ctx}}}
      DEMOAI_THREADS: ${{DEMOAI_THREADS:-0}}
      DEMOAI_API_KEY_FILE: {KEY_FILE}
    secrets:
      - source: api-key
        target: {KEY_FILE.rsplit("/", 1)[1]}
    healthcheck:
      test: ["CMD", "python3", "-c", "{_HEALTH_CMD}"]
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
secrets:
  api-key:
    # a file holding the key clients must send, readable by uid 65534 (README.md)
    file: ${{DEMOAI_API_KEY_FILE:?set DEMOAI_API_KEY_FILE to the file holding the API key}}
"""


def _readme(m: dict[str, Any]) -> str:
    template = (
        f"`{TEMPLATE_FILE}` ({m['template']})"
        if m["template"] != "the model's own template"
        else "the chat template the model carries"
    )
    return f"""\
# {m["model_name"]}: DemoAI model server (llama.cpp's llama-server)

This folder builds a container that serves **{m["model_name"]}** ({m["quant"] or "GGUF"},
{m["model_size_mb"]:.0f} MB) with llama.cpp's own `llama-server` ({m["llama_cpp"]}, the
same revision as the DemoAI runtime): an OpenAI-compatible API (`/v1/chat/completions`
with streaming and tool calls, `/v1/completions`, `/v1/models`, `/v1/embeddings`),
Prometheus metrics on `/metrics` (with the key) and `/health` without a key.
Concurrent requests run in {m["parallel"]} parallel slots with continuous batching.
Chat prompts are rendered with Jinja from {template}.
Nothing is downloaded: the build works with networking off.

## Check the files

    sha256sum -c SHA256SUMS

Every file is listed; a modified file fails the check. `sbom.cdx.json` is a
CycloneDX SBOM of what runs inside the image (llama-server, the model).

## Build

    docker build --network=none -t {m["image"]} .
    # or another base image (glibc {m["glibc"]} or newer, {m["arch"]}, Python 3 for the health check):
    docker build --network=none --build-arg BASE_IMAGE=registry.example/debian-python:bookworm -t {m["image"]} .

Without a registry, load the base image that DemoAI's offline installer carries
(`docker load -i /opt/demoai/current/share/docker/demoai-base-image.tar`, then
`--build-arg BASE_IMAGE={LOCAL_BASE_IMAGE}`), or import one you trust.

## Run

The API key is read from a file (a Docker or Kubernetes secret), mounted at
`{KEY_FILE}`; clients send it as a Bearer token. `serve.sh` refuses to start when the
file is missing or holds no key (llama-server would otherwise serve without one).
The container runs as uid 65534, so the file must be readable by it:

    install -m 0400 -o 65534 /dev/null /etc/demoai-{m["slug"]}.key    # as root
    openssl rand -hex 24 > /etc/demoai-{m["slug"]}.key
    docker run -d --name {m["slug"]} -p 8080:{CONTAINER_PORT} --read-only \\
      -v /etc/demoai-{m["slug"]}.key:{KEY_FILE}:ro {m["image"]}
    # or: DEMOAI_API_KEY_FILE=/etc/demoai-{m["slug"]}.key DEMOAI_PORT=8080 docker compose up -d

Settings (environment): `DEMOAI_PARALLEL` (slots, default {m["parallel"]}),
`DEMOAI_CTX_PER_SLOT` (tokens per request, prompt plus answer, default {m["ctx_per_slot"]}),
`DEMOAI_THREADS` (CPU threads, 0 = llama.cpp's default). Change the published port
with `-p PORT:{CONTAINER_PORT}` (compose: `DEMOAI_PORT`).

Test it:

    curl -s localhost:8080/health
    curl -s localhost:8080/v1/chat/completions -H "Authorization: Bearer $(cat /etc/demoai-{m["slug"]}.key)" \\
      -H 'Content-Type: application/json' \\
      -d '{{"model": "{m["model_name"]}", "messages": [{{"role": "user", "content": "Hello"}}]}}'
    curl -s localhost:8080/metrics -H "Authorization: Bearer $(cat /etc/demoai-{m["slug"]}.key)"

`/metrics` (Prometheus text: `llamacpp:prompt_tokens_total`, `llamacpp:tokens_predicted_total`,
`llamacpp:requests_processing`, `llamacpp:requests_deferred`, ...) needs the key: give
your Prometheus scrape job `authorization: {{credentials_file: ...}}`.

## Sizing slots and memory

- **Slots** (`DEMOAI_PARALLEL`) are requests answered at the same time; more arrive
  and wait in llama-server's queue (`llamacpp:requests_deferred`). Continuous batching
  runs all active slots in one batch, so total tokens/s grows with slots while each
  client's tokens/s falls (on a 2-core machine with Gemma 3 270M, 8 streaming clients
  got 2.3x the total tokens/s of one client with 8 slots, 1.8x with 4). Raise the slots
  while `llamacpp:requests_deferred` stays above zero and latency is acceptable, and
  mind the memory below; DemoAI's `bench/serve_load.py` measures this server natively.
- **Context**: every slot gets `DEMOAI_CTX_PER_SLOT` tokens; the KV cache holds
  `DEMOAI_PARALLEL x DEMOAI_CTX_PER_SLOT` tokens, {m["kv_mb_per_1k"]:.1f} MiB per 1,000 tokens for this model.
- **Memory** = model file ({m["model_size_mb"]:.0f} MiB) + KV cache + compute buffers and
  runtime (about {m["overhead_mb"]:.0f} MiB). At the defaults that is about
  {m["memory_hint_mb"]:.0f} MiB; compose and Kubernetes limit the container to
  {m["mem_limit"].removesuffix("m")} MiB. When you change slots or context, set the limit to
  (model + KV cache + overhead) x 1.5.
- Disk: about {m["model_size_mb"] + 20:.0f} MB on top of the base image.
- CPU only; {m["arch"]}.

## Kubernetes

`kubernetes/` holds a Deployment, a Service (ClusterIP, port {CONTAINER_PORT}) and a Secret
for the key. They run the same image with the same port, key file ({KEY_FILE}, from the
Secret), memory and health check as compose.yaml; the container runs as `nobody` with a
read-only root filesystem. At an air-gapped site, load the image into the cluster's
registry or nodes first (`docker load -i IMAGE.tar`, then `docker push` to your registry, or
`ctr -n k8s.io images import IMAGE.tar` on each node), and set the key:

    kubectl create secret generic {m["slug"]}-api-key --from-literal=api-key=$(openssl rand -hex 24)
    kubectl apply -f kubernetes/deployment.yaml -f kubernetes/service.yaml
    kubectl port-forward service/{m["slug"]} 8080:{CONTAINER_PORT}   # then test as above

(or fill in `kubernetes/secret.yaml` and `kubectl apply -f kubernetes/`). The Secret
ships with an empty key: the server refuses to start without one. The Deployment
requests {int(m["memory_hint_mb"]) + 1} MiB and is limited to {m["mem_limit"].removesuffix("m")} MiB, like compose.

Model sha256: `{m["model_sha256"]}`. Exported by DemoAI {m["demoai_version"]}.
"""


# --------------------------------------------------------------------------- bundle


def write_server(
    dest: Path,
    model_path: Path,
    name: str,
    exe: Path,
    *,
    parallel: int = DEFAULT_PARALLEL,
    ctx_per_slot: int = DEFAULT_CTX_PER_SLOT,
    link: bool = False,
) -> str:
    """Lay out the server part of a bundle in ``dest``; returns what the chat template is.

    ``model/``, ``bin/llama-server``, ``lib/`` (libgomp), the chat template file when one
    is needed and ``serve.sh``. With ``link``, the model and the binary are symlinks (for
    running the bundle's server natively, as bench/serve_load.py does).
    """
    put = (lambda src, dst: dst.symlink_to(src)) if link else shutil.copy2
    (dest / "model").mkdir(parents=True)
    put(model_path.resolve(), dest / "model" / model_path.name)
    (dest / "bin").mkdir()
    put(exe.resolve(), dest / "bin" / "llama-server")
    (dest / "lib").mkdir()
    gomp = _gomp()
    if gomp is not None:
        shutil.copy2(gomp, dest / "lib" / "libgomp.so.1")
    template = bundle_chat_template(model_path)
    note = "the model's own template"
    if template is not None:
        note, source = template
        atomic_write_text(dest / TEMPLATE_FILE, source)
    atomic_write_text(dest / "serve.sh", _serve_sh(model_path.name, name, parallel, ctx_per_slot))
    (dest / "serve.sh").chmod(0o755)
    return note


def _server_version(exe: Path) -> str:
    """``llama-server --version``'s "version: N (commit)" line, for the README and SBOM."""
    try:
        proc = subprocess.run(
            [str(exe), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _gguf_model(
    ws: Workspace, model: str, quant: str, progress: ProgressFn | None, log: Callable[[str], None]
) -> Any:
    """The library record of ``model`` as a GGUF: an HF model goes through the verified export."""
    from app.core.export.gguf import export_gguf

    reg = ModelRegistry(ws)
    rec = reg.get(model)
    if rec.format == "gguf":
        return rec
    if rec.format != "hf":
        raise ConfigError(
            f"{rec.id} is a '{rec.format}' model; a Docker bundle serves a GGUF.",
            f"Merge or export it first: demoai export gguf {rec.id} --quant Q8_0",
        )
    log(f"{rec.id} is an HF model: exporting it to a verified {quant} GGUF first")

    def sub(frac: float | None, msg: str) -> None:
        if progress is not None:
            progress(None if frac is None else frac * 0.3, f"GGUF export: {msg}")

    (out,) = export_gguf(ws, rec.id, [quant], progress=sub, log=log)
    if out.model_id is None:  # export_gguf raises when verification fails; kept for types
        raise ConfigError(f"The {quant} export of {rec.id} was not registered.")
    return reg.get(out.model_id)


def build_bundle(
    ws: Workspace,
    model: str,
    out_dir: str | Path,
    *,
    base_image: str = DEFAULT_BASE_IMAGE,
    image_tag: str | None = None,
    build: bool = False,
    save_image: bool = True,
    quant: str = "Q8_0",
    parallel: int = DEFAULT_PARALLEL,
    ctx_per_slot: int = DEFAULT_CTX_PER_SLOT,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> BundleResult:
    """Write a Docker bundle of library model ``model`` to ``out_dir`` and ``out_dir.tar.gz``.

    A GGUF model is bundled as it is; an HF model is exported to a verified ``quant``
    GGUF first. ``llama-server`` is built once (cached) when it is not built yet. With
    ``build``, also build the image (``--network=none``) and, with ``save_image``,
    ``docker save`` it to ``<out_dir>.image.tar``.
    """
    from app.core.export.llama_tools import llama_source, llama_tool

    if not 1 <= parallel <= 256 or not 256 <= ctx_per_slot <= 1 << 20:
        raise ConfigError(
            f"parallel={parallel}, ctx_per_slot={ctx_per_slot} is out of range.",
            "Use 1-256 slots and 256 or more tokens per slot.",
        )
    say = log or (lambda _t: None)
    folder = Path(out_dir).expanduser().absolute()
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} already exists and is not empty.", "Choose a new folder.")
    rec = _gguf_model(ws, model, quant, progress, say)
    store = ExportStore(ws)
    tarball = folder.with_name(folder.name + ".tar.gz")
    slug = slugify(rec.name, 40)
    image = image_tag or f"demoai/{slug}:{rec.sha256[:12]}"
    export_id = new_export_id(rec.name, "docker")
    params = {
        "base_image": base_image,
        "image": image,
        "build": build,
        "parallel": parallel,
        "ctx_per_slot": ctx_per_slot,
    }
    store.start(export_id, "docker", rec.id, path=folder, params=params)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))

    def step(frac: float, msg: str) -> None:
        if progress is not None:
            progress(frac, msg)

    try:
        step(0.3, "llama-server (built once from the vendored llama.cpp; minutes the first time)")
        src = llama_source()
        exe = llama_tool("llama-server", src=src, log=say)
        step(0.4, "copying the model and llama-server")
        template_note = write_server(
            stage, rec.path, slug, exe, parallel=parallel, ctx_per_slot=ctx_per_slot
        )
        model_file = rec.path.name
        step(0.7, "writing Dockerfile, compose.yaml, Kubernetes manifests, README, SBOM")
        size = rec.size_bytes
        mem_mb = memory_estimate_mb(rec.path, parallel, ctx_per_slot)
        kv_mb = kv_cache_mb(rec.path, parallel * ctx_per_slot)
        glibc = platform.libc_ver()[1] or "2.36"
        server_version = _server_version(exe)
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
            "arch": platform.machine(),
            "glibc": glibc,
            "server": "llama-server",
            "llama_cpp": f"llama.cpp {server_version}",
            "parallel": parallel,
            "ctx_per_slot": ctx_per_slot,
            "template": template_note,
            "kv_mb_per_1k": kv_cache_mb(rec.path, 1000),
            "overhead_mb": mem_mb - size / 2**20 - kv_mb,
            "memory_hint_mb": mem_mb,
            "mem_limit": f"{int(mem_mb * 1.5 // 256 + 1) * 256}m",
            "demoai_version": app.__version__,
            "created_at": time.time(),
        }
        atomic_write_text(
            stage / "Dockerfile",
            _dockerfile(
                slug,
                base_image,
                glibc,
                (stage / TEMPLATE_FILE).is_file(),
                parallel,
                ctx_per_slot,
            ),
        )
        atomic_write_text(
            stage / "compose.yaml",
            _compose(image, base_image, str(meta["mem_limit"]), parallel, ctx_per_slot),
        )
        (stage / "kubernetes").mkdir()
        for name, text in kubernetes_manifests(meta, port=CONTAINER_PORT).items():
            atomic_write_text(stage / "kubernetes" / name, text)
        atomic_write_text(stage / "README.md", _readme(meta))
        atomic_write_json(stage / "sbom.cdx.json", _sbom(stage, meta, server_version))
        atomic_write_json(stage / "bundle.json", meta)
        for p in stage.rglob("*"):  # the image runs as uid 65534: everything readable
            if p.is_file():
                p.chmod(0o755 if p.name in ("serve.sh", "llama-server") else 0o644)
        write_sums(stage)
        if folder.exists():
            folder.rmdir()
        os.rename(stage, folder)
        step(0.8, "writing the .tar.gz")
        tmp_tar = tarball.with_name(f".{tarball.name}.tmp")
        with tarfile.open(tmp_tar, "w:gz", compresslevel=1) as tf:
            tf.add(folder, arcname=folder.name)
        os.replace(tmp_tar, tarball)
        result = BundleResult(export_id, folder, tarball, rec.id)
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


def _sbom(stage: Path, meta: dict[str, Any], server_version: str) -> dict[str, Any]:
    from app.core.export.sbom import cyclonedx_for_wheels
    from app.core.store.files import sha256_file

    def comp(kind: str, name: str, version: str, path: Path, license_: str) -> dict[str, Any]:
        return {
            "type": kind,
            "bom-ref": f"{name}@{version}",
            "name": name,
            "version": version,
            "hashes": [{"alg": "SHA-256", "content": sha256_file(path)}],
            "licenses": [{"license": {"name": license_}}],
            "properties": [{"name": "demoai:path", "value": path.relative_to(stage).as_posix()}],
        }

    extra = [
        comp("application", "llama-server", server_version, stage / "bin/llama-server", "MIT"),
        comp(
            "machine-learning-model",
            str(meta["model_name"]),
            str(meta["model_sha256"])[:12],
            stage / "model" / str(meta["model_file"]),
            "see the model's own license",
        ),
    ]
    if (stage / "lib/libgomp.so.1").is_file():
        extra.append(
            comp(
                "library",
                "libgomp",
                "1",
                stage / "lib/libgomp.so.1",
                "GPL-3.0-or-later WITH GCC-exception-3.1",
            )
        )
    return cyclonedx_for_wheels(
        [], name=f"demoai-bundle-{meta['slug']}", version=app.__version__, extra=extra
    )


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
    parallel: int = DEFAULT_PARALLEL,
    ctx_per_slot: int = DEFAULT_CTX_PER_SLOT,
    quant: str = "Q8_0",
) -> dict[str, Any]:
    """Job ``export.docker`` (``quant``: for an HF model, the GGUF it is exported to)."""
    res = build_bundle(
        ctx.workspace,
        model,
        out_dir,
        base_image=base_image or default_base_image(),
        build=build,
        image_tag=image_tag,
        parallel=parallel,
        ctx_per_slot=ctx_per_slot,
        quant=quant,
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
