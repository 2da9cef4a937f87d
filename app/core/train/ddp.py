"""Several processes training one LoRA run together: torch.distributed with DDP.

The job process is rank 0: it keeps the job context (events, checkpoints, the
adapter, the manifest) and starts ranks 1..W-1 as child processes with
``torchrun``'s environment (``MASTER_ADDR=127.0.0.1``, a free loopback port,
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) running ``python -m app.core.train.ddp``.
The backend is gloo on CPU and nccl on CUDA (one GPU per rank).

Every rank loads the same model and data and takes an equal share of each
batch of ``batch_size`` (rank ``r`` takes samples ``r, r+W, ...``); the loss is
normalized by the label tokens of the whole optimizer step, so a run with W
processes takes the same steps as a run with one (see ``TrainSession``).
Decisions that end the loop (cancel, a diverged step) are taken by all ranks
together; rank 0 alone writes checkpoints, with every rank's RNG state in them.

A rank that dies (kill -9, a crash) breaks the others' next collective (gloo
sees the closed connection; a stuck peer hits the process-group timeout):
rank 0 then stops the other ranks and fails the job, which resumes from its
last checkpoint. Ranks 1.. also exit when rank 0 goes away (parent-death
signal on Linux, and a watch on the parent pid).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.jobs.context import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, JobFailed

#: Seconds a collective waits for a peer before the run fails (DEMOAI_DDP_TIMEOUT overrides).
#: It covers rank 0 writing a checkpoint or evaluating while the others wait.
DEFAULT_TIMEOUT_S = 600.0
#: Exit code of a rank that lost its peers (a collective failed).
EXIT_PEER_LOST = 4
RESTART_HINT = "Resume the job: it continues from its last checkpoint."


def timeout_s() -> float:
    try:
        return max(5.0, float(os.environ.get("DEMOAI_DDP_TIMEOUT", DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def listen_loopback() -> socket.socket:
    """Rank 0's rendezvous socket: a free port on 127.0.0.1, listening (torch's own
    TCPStore server would listen on every interface)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@dataclass
class DistGroup:
    """This process's place in the group, and the few collectives training needs."""

    rank: int
    world_size: int
    backend: str
    store: Any = None  # the TCPStore (and rank 0's listening socket), kept alive

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def join(
        rank: int, world_size: int, port: int, cuda: bool, listen: socket.socket | None = None
    ) -> DistGroup:
        """Join the group; rank 0 passes its listening socket and serves the rendezvous."""
        import torch
        import torch.distributed as dist

        backend = "nccl" if cuda else "gloo"
        if cuda:
            torch.cuda.set_device(rank)
        timeout = datetime.timedelta(seconds=timeout_s())
        if listen is not None:
            store = dist.TCPStore(  # type: ignore[attr-defined]
                "127.0.0.1",
                port,
                world_size,
                True,
                timeout,
                wait_for_workers=False,
                master_listen_fd=listen.fileno(),
            )
        else:
            store = dist.TCPStore("127.0.0.1", port, world_size, False, timeout)  # type: ignore[attr-defined]
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world_size, timeout=timeout
        )
        return DistGroup(rank, world_size, backend, (store, listen))

    def _device(self) -> str:
        return "cuda" if self.backend == "nccl" else "cpu"

    def sum_floats(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(x) for x in t.cpu()]

    def any_true(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        return self.sum_floats([1.0 if flag else 0.0])[0] > 0

    def gather_floats(self, values: list[float]) -> list[list[float]]:
        """Every rank's ``values`` (same length everywhere), on every rank."""
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        out = [torch.zeros_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [[float(x) for x in o.cpu()] for o in out]

    def gather_bytes(self, data: Any) -> list[Any]:
        """Every rank's uint8 tensor of the same length (RNG states), on every rank."""
        import torch
        import torch.distributed as dist

        t = data.to(self._device(), torch.uint8).contiguous()
        out = [torch.zeros_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [o.cpu() for o in out]

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        if self.store is not None and self.store[1] is not None:
            self.store[1].close()
        self.store = None


def is_peer_failure(exc: BaseException) -> bool:
    """An error of a collective: a peer died, closed its connection or timed out."""
    import torch.distributed as dist

    base = getattr(dist, "DistError", None)
    if base is not None and isinstance(exc, base):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("Connection closed", "Connection reset", "Timed out", "gloo", "NCCL")
    )


# ----------------------------------------------------------------------------- rank 0's side


class RankProcesses:
    """Ranks 1..W-1 started by rank 0 (the job process), and their logs."""

    def __init__(self, world_size: int, port: int, config_path: Path, log_dir: Path) -> None:
        self.world_size = world_size
        self.port = port
        self.log_dir = log_dir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        log_dir.mkdir(parents=True, exist_ok=True)
        for rank in range(1, world_size):
            env = {
                **os.environ,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(world_size),
                "DEMOAI_DDP_PARENT": str(os.getpid()),
            }
            with open(self.log_path(rank), "ab") as log:
                self.procs[rank] = subprocess.Popen(
                    [sys.executable, "-m", "app.core.train.ddp", "--config", str(config_path)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=os.getcwd(),
                )

    def log_path(self, rank: int) -> Path:
        return self.log_dir / f"rank{rank}.log"

    def pids(self) -> dict[int, int]:
        return {r: p.pid for r, p in self.procs.items()}

    def dead(self) -> dict[int, int]:
        """Ranks that have exited, with their exit codes (negative: killed by a signal)."""
        return {r: p.returncode for r, p in self.procs.items() if p.poll() is not None}

    def failure(self, grace: float = 3.0) -> JobFailed:
        """The message for a broken group: which rank stopped and how."""
        end = time.monotonic() + grace
        while time.monotonic() < end and not self.dead():
            time.sleep(0.05)
        dead = {r: c for r, c in self.dead().items() if c != EXIT_OK}
        if not dead:
            return JobFailed(
                f"The training processes lost contact (no answer within {timeout_s():.0f} s).",
                RESTART_HINT,
            )
        parts = []
        for r, c in sorted(dead.items()):
            how = f"killed by signal {-c}" if c < 0 else f"exit code {c}"
            parts.append(f"rank {r} stopped ({how}; log: {self.log_path(r)})")
        return JobFailed("A training process stopped: " + "; ".join(parts) + ".", RESTART_HINT)

    def wait(self, timeout: float) -> dict[int, int | None]:
        end = time.monotonic() + timeout
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, end - time.monotonic()))
        return {r: p.poll() for r, p in self.procs.items()}

    def stop(self) -> None:
        """End every rank still running: SIGTERM, then SIGKILL after a short grace."""
        alive = [p for p in self.procs.values() if p.poll() is None]
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + 5.0
        for p in alive:
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()


# ----------------------------------------------------------------------------- ranks 1..W-1


def _exit_with_parent() -> None:
    """Die with rank 0: parent-death signal (Linux) and a thread watching the parent pid."""
    parent = int(os.environ.get("DEMOAI_DDP_PARENT", "0") or 0)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if parent and os.getppid() != parent:
        os._exit(EXIT_PEER_LOST)  # the parent was gone before the signal was armed

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if parent and os.getppid() != parent:
                os._exit(EXIT_PEER_LOST)

    threading.Thread(target=watch, daemon=True, name="ddp-parent-watch").start()


def run_rank(config_path: Path) -> int:
    """Ranks 1..W-1: the same steps as rank 0's job loop, without events or files."""
    from app.core.train.config import TrainConfig
    from app.core.train.loop import TrainSession

    _exit_with_parent()
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    port = int(os.environ["MASTER_PORT"])
    spec = TrainConfig.json_fields(config_path)
    ckpt_dir = Path(spec.pop("_checkpoint_dir"))
    resume = spec.pop("_resume", None)
    config = TrainConfig.from_dict(spec)
    import torch.distributed  # noqa: F401  (the slow imports happen before "ready")

    (config_path.parent / f"rank{rank}.ready").write_text(str(os.getpid()))
    group = DistGroup.join(rank, world, port, cuda=config.device == "cuda")
    try:
        session = TrainSession(config, dist=group)
        if resume:
            session.load_checkpoint(Path(resume))
        last_saved = session.step if resume else -1
        total = session.total_steps
        while session.step < total:
            if session.agree_stop(False):  # rank 0 was asked to cancel: it checkpoints
                if last_saved != session.step:
                    session.save_checkpoint(ckpt_dir)
                return EXIT_CANCELLED
            stats = session.train_step()
            s = stats.step
            if stats.skipped and config.stop_on_nan:
                return EXIT_FAILED  # rank 0 fails the job with the message
            if config.eval_every and s % config.eval_every == 0 and s < total:
                session.evaluate()
            if config.save_every and s % config.save_every == 0 and s < total:
                if last_saved != session.step:
                    session.save_checkpoint(ckpt_dir)
                    last_saved = session.step
        session.evaluate()
        return EXIT_OK
    except BaseException as exc:
        if is_peer_failure(exc):
            print(f"rank {rank}: lost the other ranks: {exc}", file=sys.stderr)
            return EXIT_PEER_LOST
        raise
    finally:
        group.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.core.train.ddp")
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(EXIT_FAILED))
    return run_rank(args.config)


if __name__ == "__main__":
    sys.exit(main())
