"""run_python's sandbox, attacked for real: every escape fails within the time limit.

Most attacks run with ``audit_hook=False`` too: the inner audit hook is a second
layer, and these tests show that bubblewrap holds without it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from app.core.agents import sandbox
from app.core.agents.builtin_tools import ToolContext, builtin_tool, unavailable
from app.core.agents.sandbox import GRANT_DIR, SandboxUnavailable, run_python
from app.core.agents.tools import ToolError

REASON = sandbox.unavailable_reason()
pytestmark = [] if REASON is None else [pytest.mark.demoai_unavailable(f"no sandbox: {REASON}")]
ROOT = Path(__file__).resolve().parents[2]
LIMIT = 3.0


def timed(code: str, **kw: object) -> tuple[sandbox.SandboxResult, float]:
    t0 = time.monotonic()
    res = run_python(textwrap.dedent(code), **kw)  # type: ignore[arg-type]
    return res, time.monotonic() - t0


@pytest.fixture
def grant() -> Iterator[Path]:
    """A granted folder inside an 'outside' folder, both usable by the sandbox user."""
    base = Path(tempfile.mkdtemp(prefix="demoai-sbx-"))
    folder = base / "granted"
    folder.mkdir()
    (folder / "notes.txt").write_text("granted content\n")
    if os.geteuid() == 0:  # for the non-root path test, which runs as nobody
        for p in (base, folder):
            os.chown(p, sandbox.NOBODY, sandbox.NOBODY)
    try:
        yield folder
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("hook", [True, False])
def test_plain_code_runs_and_prints(hook: bool) -> None:
    res, took = timed("import sys; print(sum(range(10)), sys.flags.isolated)", audit_hook=hook)
    assert (res.returncode, res.stdout.strip()) == (0, "45 1"), res
    assert took < 5


def test_reassigning_the_block_list_does_not_unblock_processes() -> None:
    res, took = timed(
        """
        import sys, subprocess
        main = sys.modules['__main__']
        main._BLOCKED_PREFIXES = ()
        main.__dict__['_BLOCKED'] = set()
        print(subprocess.run(['id'], capture_output=True).stdout)
        """,
        timeout_s=LIMIT,
    )
    assert res.returncode != 0 and "PermissionError" in res.stderr and "uid=" not in res.stdout
    assert took < LIMIT + 1


def test_processes_refused_by_the_hook_and_contained_without_it() -> None:
    direct, took = timed("import os; os.system('id')", timeout_s=LIMIT)
    assert "PermissionError" in direct.stderr and "uid=" not in direct.stdout
    assert took < LIMIT + 1
    # Without the hook a program may start, but sees only the sandbox.
    bare, took = timed(
        """
        import subprocess
        print(subprocess.run(['id', '-u'], capture_output=True, text=True).stdout.strip())
        r = subprocess.run(['cat', '/etc/passwd'], capture_output=True, text=True)
        print('cat', r.returncode, 'root:' in r.stdout)
        """,
        timeout_s=LIMIT,
        audit_hook=False,
    )
    lines = bare.stdout.split()
    assert lines[0] != "0" and "cat 1 False" in bare.stdout, bare
    assert took < LIMIT + 1


@pytest.mark.parametrize("hook", [True, False])
def test_host_files_are_invisible(hook: bool, tmp_path: Path) -> None:
    home_secret = Path.home() / f".demoai-sbx-secret-{os.getpid()}"
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "demoai.db").write_text("TOKEN-W0RKSPACE")
    home_secret.write_text("TOKEN-H0ME")
    targets = ["/etc/passwd", "/etc/shadow", "/root/.bashrc", str(home_secret),
               str(workspace / "demoai.db"), str(ROOT / "pyproject.toml"),
               f"/proc/{os.getpid()}/environ"]  # fmt: skip
    try:
        res, took = timed(
            f"""
            import os
            for p in {targets!r}:
                try:
                    print('READ', p, open(p).read()[:40])
                except OSError as e:
                    print('DENIED', p, type(e).__name__)
            print('home', os.listdir(os.path.expanduser('~')))
            """,
            timeout_s=LIMIT,
            audit_hook=hook,
        )
    finally:
        home_secret.unlink()
    assert res.returncode == 0, res
    assert "READ " not in res.stdout and "TOKEN-" not in res.stdout and "root:" not in res.stdout
    assert res.stdout.count("DENIED") == len(targets)
    assert took < LIMIT + 1


@pytest.mark.parametrize("writable", [False, True])
def test_writes_outside_the_grant_fail(writable: bool, grant: Path) -> None:
    outside = grant.parent / "escaped.txt"
    res, took = timed(
        f"""
        for p in [{str(outside)!r}, '{GRANT_DIR}/../escaped.txt', '/escaped.txt',
                  '/usr/escaped.txt', '/dev/escaped.txt', '/proc/escaped.txt']:
            try:
                open(p, 'w').write('x')
                print('WROTE', p)
            except OSError as e:
                print('DENIED', p, type(e).__name__)
        """,
        folder=grant,
        writable=writable,
        audit_hook=False,
        timeout_s=LIMIT,
    )
    assert "WROTE" not in res.stdout and res.stdout.count("DENIED") == 6, res
    assert not outside.exists() and not Path("/escaped.txt").exists()
    assert took < LIMIT + 1


def test_read_only_grant_reads_but_does_not_write(grant: Path) -> None:
    res, took = timed(
        """
        import os
        print(os.getcwd(), open('notes.txt').read().strip())
        for p in ['notes.txt', 'new.txt']:
            try:
                open(p, 'w').write('changed')
                print('WROTE', p)
            except OSError as e:
                print('DENIED', p, e.strerror)
        """,
        folder=grant,
        timeout_s=LIMIT,
    )
    assert res.stdout.splitlines()[0] == f"{GRANT_DIR} granted content", res
    assert "WROTE" not in res.stdout and "Read-only file system" in res.stdout
    assert (grant / "notes.txt").read_text() == "granted content\n"
    assert not (grant / "new.txt").exists()
    assert took < LIMIT + 1


def test_writable_grant_writes_land_on_the_host(grant: Path) -> None:
    res, _ = timed(
        f"""
        import os
        os.makedirs('{GRANT_DIR}/out', exist_ok=True)
        open('{GRANT_DIR}/out/result.txt', 'w').write('from the sandbox')
        print(open('notes.txt').read().strip())
        """,
        folder=grant,
        writable=True,
        timeout_s=LIMIT,
    )
    assert res.returncode == 0 and res.stdout.strip() == "granted content", res
    assert (grant / "out" / "result.txt").read_text() == "from the sandbox"


@pytest.mark.parametrize("hook", [True, False])
def test_no_network_even_to_a_loopback_server(hook: bool) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    port = server.getsockname()[1]
    try:
        res, took = timed(
            f"""
            import socket
            for host in ['127.0.0.1', 'localhost', '10.0.2.2']:
                try:
                    s = socket.create_connection((host, {port}), timeout=1)
                    print('CONNECTED', host)
                except OSError as e:
                    print('REFUSED', host, type(e).__name__)
            """,
            timeout_s=LIMIT,
            audit_hook=hook,
        )
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert "CONNECTED" not in res.stdout and res.stdout.count("REFUSED") == 3, res
    assert took < LIMIT + 1


def test_detached_children_die_at_the_time_limit(grant: Path) -> None:
    marker = grant / "marker"
    code = f"""
    import os, subprocess, time
    subprocess.Popen(['setsid', 'sh', '-c', 'sleep 2; echo shell > {GRANT_DIR}/marker'])
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(2)
            open('{GRANT_DIR}/marker', 'a').write('python')
        os._exit(0)
    print('started', flush=True)
    while True:
        pass
    """
    res, took = timed(code, folder=grant, writable=True, timeout_s=1.0, audit_hook=False)
    assert res.timed_out and "started" in res.stdout, res
    assert took < 1.0 + 1
    time.sleep(3)
    assert not marker.exists()


def test_detached_children_die_when_the_program_ends(grant: Path) -> None:
    marker = grant / "marker"
    code = f"""
    import subprocess
    subprocess.Popen(['setsid', 'sh', '-c', 'sleep 1; echo late > {GRANT_DIR}/marker'],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print('bye')
    """
    res, took = timed(code, folder=grant, writable=True, timeout_s=LIMIT, audit_hook=False)
    assert res.returncode == 0 and not res.timed_out and took < LIMIT + 1, res
    time.sleep(2.5)
    assert not marker.exists()


def _sandbox_processes() -> int:
    """Processes on this machine that run as the sandbox's user or under a bwrap."""
    n = 0
    for p in psutil.process_iter(["uids", "name"]):
        try:
            if p.info["name"] == "bwrap" or (
                os.geteuid() == 0 and p.info["uids"] and p.info["uids"].real == sandbox.NOBODY
            ):
                n += 1
        except psutil.Error:
            continue
    return n


def test_process_count_is_capped_and_a_fork_bomb_is_contained() -> None:
    before = _sandbox_processes()
    counted, _ = timed(
        """
        import os, time
        n = 0
        try:
            for _ in range(500):
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                n += 1
        except OSError as e:
            print('refused', e.errno)
        print('forked', n)
        """,
        processes=16,
        timeout_s=LIMIT,
        audit_hook=False,
    )
    forked = int(counted.stdout.split("forked")[1])
    assert "refused 11" in counted.stdout and forked < 16, counted
    bomb, took = timed(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        processes=32,
        timeout_s=2.0,
        audit_hook=False,
    )
    assert bomb.timed_out and took < 2.0 + 1
    assert _sandbox_processes() <= before  # all gone by the time run_python returns


def test_memory_limit_stops_a_large_allocation() -> None:
    host_free = psutil.virtual_memory().available
    res, took = timed(
        "x = bytearray(2 * 1024 ** 3)\nprint('allocated')", memory_mb=512, timeout_s=LIMIT
    )
    assert res.returncode != 0 and "MemoryError" in res.stderr and "allocated" not in res.stdout
    assert took < LIMIT + 1
    assert psutil.virtual_memory().available > host_free - 512 * 1024**2


def test_huge_output_is_cut_and_never_buffered() -> None:
    tracemalloc.start()
    try:
        res, took = timed("while True:\n    print('x' * 10**8)", memory_mb=1024, timeout_s=10.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.truncated and not res.timed_out, res.stderr[-500:]
    assert len(res.stdout) <= sandbox.MAX_OUTPUT and "output limit" in res.summary()
    assert took < 10.0  # stopped at the cap, not at the time limit
    assert peak < 8 * sandbox.MAX_OUTPUT + 1024**2


def test_busy_loop_hits_the_time_limit() -> None:
    res, took = timed("while True:\n    pass", timeout_s=1.0)
    assert res.timed_out and "time limit" in res.summary() and took < 2.0


def test_missing_bwrap_makes_the_tool_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(SandboxUnavailable, match="install bubblewrap"):
        run_python("print(1)", bwrap=str(tmp_path / "no-bwrap"))
    broken = tmp_path / "bwrap"
    broken.write_text(
        "#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n"
    )
    broken.chmod(0o755)
    reason = sandbox.unavailable_reason(str(broken))
    assert reason is not None and "does not work here" in reason and "uid map" in reason
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no bwrap there
    assert "bubblewrap" in (unavailable("run_python") or "")
    tool = builtin_tool("run_python", ToolContext())
    assert tool.description.startswith("UNAVAILABLE")
    with pytest.raises(ToolError, match="bubblewrap"):
        tool.fn({"code": "print(1)"})
    assert unavailable("calculator") is None


def test_tool_describes_what_the_code_gets(grant: Path) -> None:
    plain = builtin_tool("run_python", ToolContext(python_timeout_s=5))
    assert "No files" in plain.description and "No network" in plain.description
    ro = builtin_tool("run_python", ToolContext(folder=grant))
    rw = builtin_tool("run_python", ToolContext(folder=grant, folder_writable=True))
    assert f"{GRANT_DIR} (read only" in ro.description
    assert f"{GRANT_DIR} (read and write)" in rw.description
    assert rw.fn({"code": "print(open('notes.txt').read())"}).strip() == "granted content"


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
    reason="needs root (to become nobody) and a system Python",
)
def test_unprivileged_user_path(grant: Path) -> None:
    """As a normal user (here: nobody with the system Python) bwrap uses a user namespace."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from app.core.agents import sandbox
        assert sandbox.unavailable_reason() is None, sandbox.unavailable_reason()
        r = sandbox.run_python(
            "import os\\nopen('{GRANT_DIR}/w.txt','w').write(str(os.getuid()))\\n"
            "n = 0\\ntry:\\n    for _ in range(200):\\n        if os.fork() == 0:\\n"
            "            import time; time.sleep(3); os._exit(0)\\n        n += 1\\n"
            "except OSError:\\n    pass\\nprint('forked', n)",
            folder=Path({str(grant)!r}), writable=True, processes=10, audit_hook=False,
            timeout_s=5)
        print(r.stdout, r.stderr)
        """
    )
    out = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        user=sandbox.NOBODY,
        group=sandbox.NOBODY,
        extra_groups=[],
        cwd="/",
        check=False,
    )
    if "user namespace" in out.stdout + out.stderr and "unavailable" in out.stderr:
        pytest.skip("unprivileged user namespaces are off here")
    assert out.returncode == 0, out.stderr
    forked = int(out.stdout.split("forked")[1].split()[0])
    assert 0 < forked < 10, out.stdout
    assert (grant / "w.txt").exists()


def test_no_nested_user_namespace_nor_uncounted_memory() -> None:
    """Inside a new user namespace the code could mount a tmpfs of any size: refused."""
    res, took = timed(
        """
        import os, subprocess
        r = subprocess.run(['unshare', '-Urm', 'sh', '-c', 'mount -t tmpfs none /tmp && echo MOUNTED'],
                           capture_output=True, text=True)
        print(r.returncode, r.stdout.strip() or 'no mount')
        try:
            os.memfd_create('x')
            print('MEMFD')
        except OSError as e:
            print('memfd refused', e.errno)
        print(subprocess.run(['sh', '-c', 'echo child ok'], capture_output=True, text=True).stdout)
        """,
        timeout_s=LIMIT,
        audit_hook=False,
    )
    assert "MOUNTED" not in res.stdout and "MEMFD" not in res.stdout, res
    assert "memfd refused 1" in res.stdout and "child ok" in res.stdout
    assert took < LIMIT + 1


@pytest.mark.parametrize("writable", [False, True])
def test_spec_grant_mounts_the_folder_read_only_unless_writable(
    writable: bool, grant: Path
) -> None:
    """From the spec to the sandbox: agent_tools hands the grant's ``writable`` to run_python."""
    from app.core.agents import AgentSpec, ToolGrant
    from app.core.agents.loop import agent_tools
    from app.core.agents.tools import ToolCall

    spec = AgentSpec("py", tools=(ToolGrant("run_python", str(grant), writable=writable),))
    code = f"open('{GRANT_DIR}/x', 'w').write('from the model')\nprint('done')"
    t0 = time.monotonic()
    with agent_tools(spec) as tools:
        out = tools.call(ToolCall("run_python", {"code": code}))
    assert time.monotonic() - t0 < 10.0 + 5  # the default python time limit, plus start-up
    if writable:
        assert out.strip() == "done", out
        assert (grant / "x").read_text() == "from the model"
    else:
        assert "Read-only file system" in out and "done" not in out.splitlines(), out
        assert not (grant / "x").exists()
    assert (grant / "notes.txt").read_text() == "granted content\n"
