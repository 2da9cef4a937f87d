"""Run untrusted Python inside a bubblewrap (``bwrap``) sandbox, or not at all.

The boundary is the kernel, set up by bubblewrap:

* **Namespaces**: new mount, pid, network, ipc, uts (and cgroup) namespaces. The
  network namespace has only a down loopback, so nothing can be reached. The
  code is a child of bwrap's pid 1 in the new pid namespace; when the main
  process ends or we kill bwrap (``--die-with-parent``), the kernel kills every
  process in that namespace, ``setsid`` and double-forked ones included.
* **Files**: an empty root (remounted read-only) holding only ``/usr``, the
  ``/bin`` ``/lib*`` links, the interpreter's installation (read-only; the
  standard library only, no venv packages), a private size-capped tmpfs ``/tmp``, a fresh ``/proc`` and a
  minimal ``/dev``. No ``/etc``, no home, no workspace. The agent's granted
  folder, if any, is mounted at :data:`GRANT_DIR` (read-only unless writable).
* **User**: as a normal user, a user namespace maps the user to itself and
  nested user namespaces are disabled. As root (where the kernel exempts uid 0
  from ``RLIMIT_NPROC``), the code runs as ``nobody`` (65534) with only
  ``CAP_DAC_OVERRIDE`` kept as an ambient capability, so the granted folder
  stays usable; ``no_new_privs`` and ``nosuid`` mounts block regaining root.
* **System calls**: a seccomp filter (:func:`seccomp_filter`) refuses new user
  namespaces, SysV shared memory and ``memfd_create``.
* **Limits** set before the code runs: ``RLIMIT_AS`` (memory), ``RLIMIT_NPROC``
  (fork bombs; counted per user inside the sandbox's user namespace, or for
  ``nobody`` host-wide when run as root), ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, no
  core dumps; a wall-clock limit kills the whole tree; output beyond the cap
  stops the run (we never buffer more than the cap).

Inside, an audit hook refusing sockets and new processes is a second layer, not
the boundary (native code could bypass it). Without a working bwrap there is no
weaker fallback: :func:`unavailable_reason` says why and what to install.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from app.core.errors import DemoAIError

MAX_OUTPUT = 64 * 1024
MAX_CODE = 1024 * 1024
#: Where the granted folder appears inside the sandbox.
GRANT_DIR = "/data"
NOBODY = 65534
INSTALL_HINT = (
    "Install bubblewrap (Debian/Ubuntu: sudo apt install bubblewrap; Fedora: sudo dnf "
    "install bubblewrap; Arch: sudo pacman -S bubblewrap) and restart DemoAI."
)

_BOOT = r"""
import resource, sys

def _limit(kind, value):
    resource.setrlimit(kind, (value, value))

_mem, _cpu, _nproc, _fsize, _audit = (int(a) for a in sys.argv[1:6])
_limit(resource.RLIMIT_CORE, 0)
_limit(resource.RLIMIT_AS, _mem)
resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu + 1))
_limit(resource.RLIMIT_NPROC, _nproc)
_limit(resource.RLIMIT_FSIZE, _fsize)
_code = sys.stdin.buffer.read().decode("utf-8", "replace")
sys.stdin = open("/dev/null")

def _install():
    def hook(event, args):
        # Constants live in the code object: nothing reachable from the user's code
        # to reassign; replacing a function's __code__ is itself refused.
        if event == "object.__setattr__" and len(args) > 1 and args[1] == "__code__":
            raise PermissionError("sandbox: replacing code objects is not allowed")
        if event == "socket.gethostname":
            return
        if event in ("os.system", "pty.spawn") or event.startswith((
            "socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
            "os.forkpty", "ctypes.dlopen", "ctypes.dlsym", "_posixsubprocess",
        )):
            raise PermissionError(f"sandbox: {event} is not allowed (no network, no processes)")
    sys.addaudithook(hook)

if _audit:
    _install()
_g = {"__name__": "__main__", "__builtins__": __builtins__}
del _limit, _install, _mem, _cpu, _nproc, _fsize, _audit
exec(compile(_code, "<agent code>", "exec"), _g)
"""


class SandboxUnavailable(DemoAIError):
    """The sandbox cannot run here (no working bubblewrap); nothing was run."""


@dataclass(frozen=True)
class SandboxResult:
    """What the code printed and how it ended."""

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    #: the output passed the cap and the run was stopped there
    truncated: bool = False
    isolated_network: bool = True

    def summary(self) -> str:
        """Text for the model: output, errors, and why it stopped."""
        parts = []
        if self.stdout:
            parts.append(self.stdout.rstrip())
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr.rstrip())
        if self.truncated:
            parts.append("[stopped: output limit reached; print less]")
        elif self.timed_out:
            parts.append("[killed: time limit exceeded]")
        elif self.returncode not in (0, None):
            parts.append(f"[exit code {self.returncode}]")
        return "\n".join(parts) or "(no output)"


def find_bwrap(bwrap: str | None = None) -> str | None:
    """The bwrap executable: ``bwrap`` itself if given (and executable), else from PATH."""
    if bwrap is not None:
        return bwrap if os.path.isfile(bwrap) and os.access(bwrap, os.X_OK) else None
    return shutil.which("bwrap")


def unavailable_reason(bwrap: str | None = None) -> str | None:
    """None when the sandbox works here, else what is wrong (probed once per bwrap)."""
    if not sys.platform.startswith("linux"):
        return "run_python needs Linux: its sandbox is bubblewrap, which exists only there."
    exe = find_bwrap(bwrap)
    if exe is None:
        return "run_python is unavailable: bubblewrap (bwrap) is not installed. " + INSTALL_HINT
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "run_python is unavailable: as root it needs setpriv (package util-linux)."
    return _probe(os.path.realpath(exe), os.geteuid())


@functools.cache
def _probe(exe: str, euid: int) -> str | None:
    """Run a trivial program in the real sandbox; the reason it failed, or None."""
    try:
        res = _run(exe, "print('ok')", None, False, _Limits(timeout_s=20.0), audit=True)
    except OSError as exc:
        return f"run_python is unavailable: bubblewrap could not start ({exc}). " + INSTALL_HINT
    if res.returncode == 0 and res.stdout.strip() == "ok":
        return None
    detail = (res.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return (
        f"run_python is unavailable: bubblewrap does not work here ({detail}). "
        "It needs user namespaces (kernel.unprivileged_userns_clone=1, or an AppArmor "
        "profile allowing bwrap on Ubuntu 24.04+). " + INSTALL_HINT
    )


def check_available(bwrap: str | None = None) -> str:
    """The working bwrap executable; :class:`SandboxUnavailable` says why not."""
    reason = unavailable_reason(bwrap)
    if reason is not None:
        raise SandboxUnavailable(reason)
    exe = find_bwrap(bwrap)
    assert exe is not None
    return exe


@dataclass(frozen=True)
class _Limits:
    timeout_s: float = 10.0
    memory_mb: int = 512
    processes: int = 64
    output_bytes: int = MAX_OUTPUT
    tmp_mb: int = 64
    file_mb: int = 256


def run_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    folder: Path | None = None,
    writable: bool = False,
    processes: int = 64,
    output_bytes: int = MAX_OUTPUT,
    bwrap: str | None = None,
    audit_hook: bool = True,
) -> SandboxResult:
    """Run ``code`` in the sandbox; never raises for what the code does.

    ``folder`` is mounted at :data:`GRANT_DIR` (read-only unless ``writable``).
    ``audit_hook=False`` leaves out the inner layer (tests use it to show the
    boundary holds on its own). Raises :class:`SandboxUnavailable` when bwrap
    does not work here, and :class:`DemoAIError` for code over 1 MiB.
    """
    exe = check_available(bwrap)
    if len(code.encode("utf-8", "replace")) > MAX_CODE:
        raise DemoAIError("The code is over 1 MiB.", "Send a shorter program.")
    grant = Path() if folder is None else folder.expanduser().resolve()
    if folder is not None and not grant.is_dir():
        raise DemoAIError(f"The granted folder {folder} does not exist.", "Grant an existing one.")
    limits = _Limits(timeout_s, memory_mb, processes, output_bytes)
    return _run(exe, code, grant if folder is not None else None, writable, limits, audit_hook)


# --------------------------------------------------------------------------- internals


def _interpreter() -> str:
    """The real interpreter binary (a venv's ``python`` is a link to it)."""
    return os.path.realpath(sys.executable)


def _python_roots() -> list[str]:
    """Folders the interpreter and its standard library live in (not the venv: stdlib only)."""
    roots = {os.path.realpath(sys.base_prefix), str(Path(_interpreter()).parent.parent)}
    keep = sorted(r for r in roots if r != "/" and not _under(r, "/usr"))
    return [r for r in keep if not any(r != o and _under(r, o) for o in keep)]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _argv(exe: str, grant: Path | None, writable: bool, limits: _Limits, audit: bool) -> list[str]:
    root = os.geteuid() == 0
    # --as-pid-1: the program is pid 1 of its pid namespace, so when it ends or is
    # killed the kernel kills every other process there before bwrap sees it exit.
    argv = [exe, "--die-with-parent", "--new-session", "--as-pid-1"]
    if root:
        # No user namespace: uid 0 is exempt from RLIMIT_NPROC, so setpriv drops to
        # nobody below, keeping only CAP_DAC_OVERRIDE for the granted folder.
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        argv += ["--unshare-cgroup-try", "--cap-drop", "ALL"]
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        argv += ["--cap-add", "CAP_DAC_OVERRIDE"]
    else:
        argv += ["--unshare-all", "--unshare-user", "--disable-userns"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for r in _python_roots():
        argv += ["--ro-bind", r, r]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", str(limits.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
    if grant is not None:
        argv += ["--bind" if writable else "--ro-bind", str(grant), GRANT_DIR]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    argv += ["--chdir", GRANT_DIR if grant is not None else "/tmp", "--clearenv"]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for k, v in env.items():
        argv += ["--setenv", k, v]
    argv.append("--")
    if root:
        argv += [str(shutil.which("setpriv")), f"--reuid={NOBODY}", f"--regid={NOBODY}"]
        argv += ["--clear-groups", "--inh-caps=-all,+dac_override"]
        argv += ["--ambient-caps=-all,+dac_override", "--"]
    mem = limits.memory_mb * 1024 * 1024
    cpu = max(1, int(limits.timeout_s) + 1)
    fsize = limits.file_mb * 1024 * 1024
    argv += [_interpreter(), "-I", "-S", "-c", _BOOT, str(mem), str(cpu)]
    argv += [str(limits.processes), str(fsize), "1" if audit else "0"]
    return argv


#: (audit arch, unshare, clone, clone3, shmget, memfd_create) syscall numbers
_SYSCALLS = {
    "x86_64": (0xC000003E, 272, 56, 435, 29, 319),
    "aarch64": (0xC00000B7, 97, 220, 435, 194, 279),
}
_CLONE_NEWUSER = 0x10000000


def seccomp_filter() -> bytes | None:
    """A classic-BPF seccomp program for bwrap's ``--seccomp``; None on other machines.

    It refuses new user namespaces (``unshare``/``clone`` with ``CLONE_NEWUSER``:
    inside one, the code could mount a tmpfs with no size limit), ``clone3``
    (ENOSYS: the C library falls back to ``clone``, whose flags can be checked),
    SysV shared memory and ``memfd_create`` (memory that ``RLIMIT_AS`` does not
    count), and system calls of another ABI (x32, 32-bit).
    """
    import platform
    import struct

    nums = _SYSCALLS.get(platform.machine())
    if nums is None:
        return None
    arch, unshare, clone, clone3, shmget, memfd = nums
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("=HBBI", code, jt, jf, k)

    prog = [
        op(ld, 4),  # arch
        op(jeq, arch, 1, 0),
        op(ret, eperm),  # another ABI
        op(ld, 0),  # syscall number
        op(jge, 0x40000000, 0, 1),  # x32
        op(ret, eperm),
        op(jeq, clone3, 0, 1),
        op(ret, enosys),
        op(jeq, shmget, 0, 1),
        op(ret, eperm),
        op(jeq, memfd, 0, 1),
        op(ret, eperm),
        op(jeq, unshare, 1, 0),
        op(jeq, clone, 0, 3),
        op(ld, 16),  # low 32 bits of the first argument: the flags
        op(jset, _CLONE_NEWUSER, 0, 1),
        op(ret, eperm),
        op(ret, allow),
    ]
    return b"".join(prog)


def _run(
    exe: str, code: str, grant: Path | None, writable: bool, limits: _Limits, audit: bool
) -> SandboxResult:
    info_r, info_w = os.pipe()  # bwrap writes {"child-pid": N} here: pid 1 of the sandbox
    argv = _argv(exe, grant, writable, limits, audit)
    argv[1:1] = ["--info-fd", str(info_w)]
    fds = [info_w]
    program = seccomp_filter()
    if program is not None:
        sec_r, sec_w = os.pipe()
        os.write(sec_w, program)  # a few hundred bytes: fits the pipe buffer
        os.close(sec_w)
        argv[1:1] = ["--seccomp", str(sec_r)]
        fds.append(sec_r)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": os.defpath},
            start_new_session=True,
            pass_fds=tuple(fds),
        )
    except OSError:
        os.close(info_r)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + limits.timeout_s
    pending = memoryview(code.encode("utf-8", "replace"))
    out_fd, err_fd, in_fd = proc.stdout.fileno(), proc.stderr.fileno(), proc.stdin.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    info = bytearray()
    timed_out = truncated = False
    sel = selectors.DefaultSelector()
    try:
        for fd in (info_r, out_fd, err_fd, in_fd):
            os.set_blocking(fd, False)
        for fd in (info_r, out_fd, err_fd):
            sel.register(fd, selectors.EVENT_READ)
        sel.register(in_fd, selectors.EVENT_WRITE)
        while len(sel.get_map()) > (0 if pending else 1):
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(min(left, 0.5)):
                fd = key.fd
                if fd == in_fd:
                    try:
                        pending = pending[os.write(fd, pending[:65536]) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    continue
                buf = info if fd == info_r else bufs[fd]
                room = (4096 if fd == info_r else limits.output_bytes) - len(buf)
                buf += chunk[: max(room, 0)]
                truncated = truncated or (fd != info_r and len(chunk) > room)
            if truncated:
                break
        if timed_out or truncated:
            _kill(proc, info)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill(proc, info)
            proc.wait()
    finally:
        if proc.poll() is None:  # an exception (or KeyboardInterrupt) on our side
            _kill(proc, info)
            proc.wait()
        sel.close()
        os.close(info_r)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if not f.closed:
                f.close()
    return SandboxResult(
        stdout=bufs[out_fd].decode("utf-8", "replace"),
        stderr=bufs[err_fd].decode("utf-8", "replace"),
        returncode=proc.returncode,
        timed_out=timed_out,
        truncated=truncated,
    )


def _kill(proc: subprocess.Popen[bytes], info: bytes | bytearray) -> None:
    """Kill the sandbox's pid 1: the kernel then kills every process in its pid namespace,
    and bwrap exits only after they are all gone. Killing bwrap itself is the fallback
    (``--die-with-parent`` takes pid 1 down, but the teardown then outlives our wait)."""
    try:
        child = int(json.loads(info.decode("utf-8", "replace"))["child-pid"])
    except (ValueError, KeyError, TypeError):
        child = 0
    # bwrap is alive, so its child (pid 1 of the sandbox) is unreaped: the pid is not reused.
    if child > 1 and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
            return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
