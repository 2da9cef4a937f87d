"""llama.cpp's own programs (``llama-server``, ``llama-perplexity``), built once and cached.

They are built from the llama.cpp sources vendored in llama-cpp-python's sdist, the
tree installers/setup.sh unpacked for the GGUF converter, so they are the same
revision as the runtime the app uses. The build is portable (``GGML_NATIVE=OFF``:
these VMs advertise CPU features they cannot run), static (``BUILD_SHARED_LIBS=OFF``:
one self-contained binary that a Docker bundle can copy), without the web UI and
without network code (no curl, no OpenSSL: nothing is downloaded at build time).

All programs share one CMake build folder per source revision,
``$DEMOAI_TOOLS_CACHE`` (default ``~/.cache/demoai/llama-tools``) ``/<sdist>-portable``,
so a second program compiles only its own files. A build runs under a file lock and
in ``<folder>.tmp`` (renamed into place when done), so concurrent callers build once
and never see a half-written binary. The first ``llama-server`` build takes minutes
on two cores; later calls return the cached path at once.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.core.errors import ConfigError, DemoAIError

#: CMake options of the shared build folder (changing them changes nothing already built
#: unless a compile flag changes; these only pick targets and turn off downloads).
BUILD_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",  # these VMs advertise AMX they cannot run (ENVIRONMENT.md)
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",  # no web UI in a bundle's server
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # and nothing fetched from the network
    "-DLLAMA_BUILD_APP=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)
#: The programs this module builds (CMake target = file name under ``bin/``).
KNOWN_TOOLS = ("llama-server", "llama-perplexity")
LogFn = Callable[[str], None]


class LlamaToolBuildError(DemoAIError):
    """Building one of llama.cpp's programs failed."""


def tools_cache_root() -> Path:
    """Where built programs are cached (``$DEMOAI_TOOLS_CACHE`` or ``~/.cache/demoai/llama-tools``)."""
    return Path(os.environ.get("DEMOAI_TOOLS_CACHE", "~/.cache/demoai/llama-tools")).expanduser()


def llama_source() -> Path:
    """The vendored llama.cpp source tree of the installed runtime (raises when absent)."""
    from app.core.export.gguf import llama_cpp_source

    return llama_cpp_source()


def build_dir(src: Path | None = None) -> Path:
    """The cached build folder for ``src`` (named after the sdist and its build flags)."""
    src = (src or llama_source()).resolve()
    # <cache>/wheels/llama_cpp_python-<version>-<flags hash>/src/vendor/llama.cpp
    name = src.parents[2].name if len(src.parents) > 2 else src.name
    return tools_cache_root() / (name + "-portable")


def find_llama_tool(name: str, src: Path | None = None) -> Path | None:
    """The program ``name`` when it is there already, else None (builds nothing).

    First ``<source>/bin/<name>``: the offline installer ships a built ``llama-server``
    next to the converter sources (installers/build-offline.sh), where no compiler is
    needed; then the cache.
    """
    try:
        src = src or llama_source()
    except ConfigError:
        return None
    for exe in (src / "bin" / name, build_dir(src) / "bin" / name):
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], log: LogFn | None, timeout: float) -> None:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    tail: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = [*tail[-39:], line.rstrip()]
        if log is not None and line.startswith("["):  # "[ 42%] Building ..."
            log(line.rstrip())
        if time.monotonic() > deadline:
            proc.kill()
            break
    code = proc.wait()
    if code != 0:
        raise LlamaToolBuildError(
            f"{' '.join(cmd[:3])} ... failed (exit code {code}).",
            "The last lines of its output:\n" + "\n".join(tail[-15:]),
        )


def llama_tool(
    name: str, *, src: Path | None = None, log: LogFn | None = None, timeout: float = 3600
) -> Path:
    """The program ``name`` (``llama-server``, ``llama-perplexity``), built once if needed.

    Only that CMake target is built, reusing whatever the shared build folder already
    compiled. Raises :class:`ConfigError` when the llama.cpp source tree is missing and
    :class:`LlamaToolBuildError` when the build fails.
    """
    if name not in KNOWN_TOOLS:
        raise ConfigError(f"Unknown llama.cpp program {name!r}.", f"One of: {KNOWN_TOOLS}")
    src = src or llama_source()
    found = find_llama_tool(name, src)
    if found is not None:
        return found
    if not (src / "CMakeLists.txt").is_file():
        raise ConfigError(
            f"{name} is not built, and {src} holds only llama.cpp's converter, not its "
            "full source.",
            "Use the offline installer built by installers/build-offline.sh (it ships "
            "llama-server), or a development checkout (installers/setup.sh).",
        )
    build = build_dir(src)
    tmp = build.with_name(build.name + ".tmp")
    with _locked(build.with_name(build.name + ".lock")):
        found = find_llama_tool(name, src)
        if found is not None:  # another process built it while we waited
            return found
        # CMake's cache remembers the folder it was configured in: always build in .tmp.
        if build.exists():
            if tmp.exists():
                raise LlamaToolBuildError(
                    f"Both {build} and {tmp} exist.", f"Remove {tmp} and try again."
                )
            build.rename(tmp)
        try:
            if log is not None:
                log(f"building {name} from {src} into {build} (once; minutes)")
            _run(["cmake", "-S", str(src), "-B", str(tmp), *BUILD_FLAGS], log, timeout)
            jobs = str(os.cpu_count() or 2)
            _run(["nice", "cmake", "--build", str(tmp), "--target", name, "-j", jobs], log, timeout)
        finally:
            if tmp.exists() and not build.exists():
                tmp.rename(build)  # keeps what compiled, even after a failure
    found = find_llama_tool(name, src)
    if found is None:
        raise LlamaToolBuildError(f"The build finished but {build / 'bin' / name} is missing.")
    return found
