"""Atomic file writes (temporary name, fsync, rename), temporary names that say who owns
them, the leftovers of killed processes, and sha256 hashes.

Every temporary file or folder inside the workspace is named
``.<tag>.p<pid>-<start>-<host>.<random>.tmp`` (:func:`owned_temp_name`): the
creating process id, its start time in milliseconds and a short tag of the host
name. A later process can then tell a temporary of a *dead* process (a leftover
of a killed job, safe to remove) from one that a live process is still writing,
even when the window and the CLI share the workspace and PIDs are reused.
Names from before this scheme, and names made by other hosts on a shared disk,
have no owner that can be checked (:attr:`Leftover.owner` is ``"unknown"``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Literal

#: Owned temporary names: ``.<tag>.p<pid>-<start ms>-<host>.<random>.tmp``.
_OWNED_RE = re.compile(r"^\..*\.p(\d+)-(\d+)-([0-9a-f]{6})\.[A-Za-z0-9_]+\.tmp$")
#: Temporary names of older DemoAI versions (no owner in the name): the dataset
#: writer's ``.tmp-<uuid>``, import work folders, atomic writes ``.<name>.<random>.tmp``,
#: GGUF and package staging folders.
_LEGACY_RE = re.compile(
    r"^\.(tmp-[0-9a-f]{32}|import-[A-Za-z0-9_]+|shuffle-[A-Za-z0-9_]+|gguf-work-[A-Za-z0-9_]+|pkg-[A-Za-z0-9_]+"
    r"|[^/]+\.[A-Za-z0-9_]{6,}\.tmp)$"
)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_owned_prefix(target.name), suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a part."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


# -- temporary names with an owner, and leftovers ------------------------------------------
@lru_cache(maxsize=1)
def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


#: A start written as milliseconds since the epoch is above this; since boot, below it.
_EPOCH_MS = 10**11


def _boot_ms(pid: int) -> int | None:
    """When ``pid`` started, in milliseconds since boot (Linux: ``/proc/PID/stat`` field 22).

    Counted from boot, not read from the wall clock: psutil's ``create_time`` is the boot
    time plus this, and the boot time it derives moves when the clock is adjusted (NTP,
    a VM's clock correction), so a start measured an hour apart differed by more than a
    second and a live process's temporary files read as a dead one's (seen in CI)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        fields = data[data.rindex(b")") + 2 :].split()  # the name may hold spaces and ')'
        return int(fields[19]) * 1000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _start_ms(pid: int, *, since_boot: bool) -> int | None:
    if since_boot:
        return _boot_ms(pid)
    from app.core.system.procs import process_start_time

    started = process_start_time(pid)
    return None if started is None else int(started * 1000)


@lru_cache(maxsize=1)
def _own_owner() -> tuple[int, int]:
    pid = os.getpid()
    boot = _boot_ms(pid)
    if boot is not None:
        return pid, boot
    return pid, _start_ms(pid, since_boot=False) or int(time.time() * 1000)


def _owned_prefix(tag: str) -> str:
    pid, start = _own_owner()
    if os.getpid() != pid:  # a forked child: not the cached owner
        _own_owner.cache_clear()
        pid, start = _own_owner()
    return f".{tag}.p{pid}-{start}-{_host_tag()}."


def owned_temp_name(tag: str) -> str:
    """A fresh temporary name that records this process as its owner (see the module doc)."""
    return f"{_owned_prefix(tag)}{os.urandom(6).hex()}.tmp"


def make_owned_temp_dir(parent: Path, tag: str) -> Path:
    """Create and return an empty temporary folder in ``parent`` owned by this process."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_owned_prefix(tag), suffix=".tmp", dir=parent))


def is_temp_name(name: str) -> bool:
    """Whether ``name`` (one path component) is a temporary name of DemoAI."""
    return bool(_OWNED_RE.match(name) or _LEGACY_RE.match(name))


def temp_owner(name: str) -> Literal["alive", "dead", "unknown"]:
    """Whether the process that made temporary ``name`` still runs (``unknown``: no owner
    in the name, or it was made on another host)."""
    m = _OWNED_RE.match(name)
    if m is None or m.group(3) != _host_tag():
        return "unknown"
    pid, start = int(m.group(1)), int(m.group(2))
    now = _start_ms(pid, since_boot=start < _EPOCH_MS)  # epoch: names of older versions
    if now is None:
        import psutil

        # A process we may not inspect (another user's) counts as alive: never guess.
        return "alive" if psutil.pid_exists(pid) else "dead"
    # The start time tells a reused PID apart (1 s of slack for clock rounding).
    return "alive" if abs(now - start) <= 1000 else "dead"


@dataclass(frozen=True)
class Leftover:
    """A temporary file or folder found in the workspace."""

    path: Path
    bytes: int
    owner: Literal["alive", "dead", "unknown"]


def _tree_size(path: Path) -> int:
    try:
        if path.is_symlink() or not path.is_dir():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for base, _dirs, names in os.walk(path):
        for n in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(base, n)).st_size
    return total


def find_temporaries(roots: Iterable[Path], max_depth: int = 3) -> list[Leftover]:
    """Temporary files and folders under ``roots`` down to ``max_depth`` levels.

    Temporary names are made beside their final place, at a small depth (a dataset
    version, a model folder, a checkpoint), so a bounded walk finds them without
    visiting every file of large model folders. A temporary folder is not entered.
    """
    found: list[Leftover] = []

    def walk(d: Path, depth: int) -> None:
        try:
            entries = list(os.scandir(d))
        except OSError:
            return
        for e in entries:
            if is_temp_name(e.name):
                p = Path(e.path)
                found.append(Leftover(p, _tree_size(p), temp_owner(e.name)))
            elif depth < max_depth and e.is_dir(follow_symlinks=False):
                walk(Path(e.path), depth + 1)

    for root in roots:
        if root.is_dir():
            walk(root, 1)
    return found


def remove_path(path: Path) -> bool:
    """Remove a file or folder tree; True when it is gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
