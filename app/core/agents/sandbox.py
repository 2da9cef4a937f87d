"""Run untrusted Python in a child process with a time limit, a memory limit and no network.

Layers, strongest first:

* **No network**: on Linux, when unprivileged user namespaces work, the child
  runs under ``unshare --net --map-root-user`` (a network namespace with only a
  down loopback: nothing can be reached). Always, an audit hook installed before
  the user code runs refuses socket creation and connections, and starting
  other processes (which would escape the hook). Audit hooks cannot be removed
  from Python code; native code (``ctypes``) could bypass them, so ``ctypes``
  loading is refused too.
* **Time**: a wall-clock timeout kills the process group; ``RLIMIT_CPU`` backs it.
* **Memory**: ``RLIMIT_AS`` (POSIX only). On Windows only the timeout applies.

The child is ``python -I`` (isolated: no user site, no PYTHONPATH) in an empty
temporary directory with a minimal environment; the code arrives on stdin.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

MAX_OUTPUT = 64 * 1024

_BOOT = r"""
import sys

_BLOCKED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn",
                     "os.fork", "os.forkpty", "os.system", "ctypes.dlopen", "ctypes.dlsym",
                     "_posixsubprocess")
_BLOCKED = {"os.system", "pty.spawn", "os.startfile", "winreg.ConnectRegistry"}

def _hook(event, args):
    if event in _BLOCKED or event.startswith(_BLOCKED_PREFIXES):
        if event == "socket.gethostname":
            return
        raise PermissionError(f"sandbox: {event} is not allowed (no network, no processes)")

_code = sys.stdin.read()
sys.addaudithook(_hook)
del sys.modules["__main__"].__dict__["_hook"]
_g = {"__name__": "__main__", "__builtins__": __builtins__}
exec(compile(_code, "<agent code>", "exec"), _g)
"""


@dataclass
class SandboxResult:
    """What the child printed and how it ended."""

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    isolated_network: bool

    def summary(self) -> str:
        """Text for the model: output, errors, and why it stopped."""
        parts = []
        if self.stdout:
            parts.append(self.stdout.rstrip())
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr.rstrip())
        if self.timed_out:
            parts.append("[killed: time limit exceeded]")
        elif self.returncode not in (0, None):
            parts.append(f"[exit code {self.returncode}]")
        return "\n".join(parts) or "(no output)"


@functools.cache
def netns_available() -> bool:
    """True when ``unshare --net --map-root-user`` works for this user (probed once)."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return False
    try:
        res = subprocess.run(
            [exe, "--net", "--map-root-user", "true"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


def _limits(memory_mb: int, cpu_s: int) -> None:  # pragma: no cover - runs in the child
    import resource

    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(
    code: str, *, timeout_s: float = 10.0, memory_mb: int = 512, use_netns: bool | None = None
) -> SandboxResult:
    """Run ``code`` in a sandboxed child; never raises for what the code does."""
    netns = netns_available() if use_netns is None else use_netns and netns_available()
    cmd = [sys.executable, "-I", "-S", "-c", _BOOT]
    if netns:
        cmd = [str(shutil.which("unshare")), "--net", "--map-root-user", *cmd]
    env = {"PATH": os.defpath, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}
    if sys.platform == "win32":
        env["SYSTEMROOT"] = os.environ.get("SYSTEMROOT", "")
    posix = os.name == "posix"
    cpu = max(1, int(timeout_s) + 1)
    with tempfile.TemporaryDirectory(prefix="demoai-sandbox-") as cwd:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=posix,
            preexec_fn=functools.partial(_limits, memory_mb, cpu) if posix else None,
        )
        timed_out = False
        try:
            out, err = proc.communicate(code.encode("utf-8"), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
            out, err = proc.communicate()
    return SandboxResult(
        stdout=out[:MAX_OUTPUT].decode("utf-8", "replace"),
        stderr=err[-MAX_OUTPUT:].decode("utf-8", "replace"),
        returncode=proc.returncode,
        timed_out=timed_out,
        isolated_network=netns,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if os.name == "posix":
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    else:
        proc.kill()
