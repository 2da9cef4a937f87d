"""A watchdog on the UI thread: which product code held it, and for how long.

A sampling thread looks at the UI thread's Python stack every few
milliseconds. A *stall* is one call into product code (a frame whose file is
under ``app/``) that stayed on the UI thread's stack for longer than the
limit: a slot that read a whole table, deleted a folder, waited on a process.
The report names the call and its stack, so a failure says what to move off
the UI thread. Waiting in the event loop (``qtbot.waitUntil``) is not a stall:
no product frame is on the stack then.

Time the UI thread spent *waiting for a CPU* (runnable while the machine's cores
ran other processes: ``/proc/self/task/<tid>/schedstat``) is not counted: that is
the machine's load, not the product's doing, and on a loaded 2-core machine it
made the watchdog report noise. Time on a CPU, in I/O, or waiting for a lock or
the GIL held by another thread of ours is counted.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

APP_DIR = str(Path(__file__).resolve().parents[2] / "app") + "/"


@dataclass
class Stall:
    seconds: float
    where: str
    stack: str
    #: wall-clock time, including waits for a CPU (not counted in ``seconds``)
    wall: float = 0.0


@dataclass
class UiWatchdog:
    limit_s: float = 0.100
    interval_s: float = 0.004
    stalls: list[Stall] = field(default_factory=list)
    samples: int = 0

    def __post_init__(self) -> None:
        self._ident = threading.get_ident()  # created on the UI (test) thread
        self._schedstat = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _outermost_app_frame(self) -> tuple[FrameType | None, FrameType | None]:
        """(outermost frame in app code, innermost frame) of the UI thread."""
        top = frame = sys._current_frames().get(self._ident)
        outer = None
        while frame is not None:
            if frame.f_code.co_filename.startswith(APP_DIR):
                outer = frame
            frame = frame.f_back
        return outer, top

    def _runqueue_wait(self) -> float:
        """Seconds the UI thread has waited for a CPU so far (0 where Linux does not say)."""
        try:
            with open(self._schedstat) as fh:
                return int(fh.read().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def _loop(self) -> None:
        current: FrameType | None = None
        since = waited = last = 0.0
        reported = False
        while not self._stop.wait(self.interval_s):
            self.samples += 1
            frame, top = self._outermost_app_frame()
            now = time.perf_counter()
            if frame is not current:
                if reported and self.stalls:
                    # Final figure, read now that the thread runs again: Linux adds a wait
                    # for a CPU to the run-queue count only once the thread gets one.
                    stall = self.stalls[-1]
                    stall.wall = last - since
                    stall.seconds = stall.wall - (self._runqueue_wait() - waited)
                current, since, waited, reported = frame, now, self._runqueue_wait(), False
                last = now
                continue
            last = now
            if frame is None:
                continue
            wall = now - since
            held = wall - (self._runqueue_wait() - waited)
            if not reported and held > self.limit_s:
                reported = True
                stack = _stack_from(frame, top)
                where = f"{frame.f_code.co_filename.removeprefix(APP_DIR)}:{frame.f_code.co_name}"
                self.stalls.append(Stall(held, where, stack, wall))
            elif reported and self.stalls:
                self.stalls[-1].seconds, self.stalls[-1].wall = held, wall

    @contextmanager
    def watch(self) -> Iterator[UiWatchdog]:
        """Watch the UI thread for the duration of the block."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ui-watchdog", daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()

    @property
    def over_limit(self) -> list[Stall]:
        """Stalls whose final figure is over the limit (a first reading can be high: the
        run-queue count catches up once the thread runs again)."""
        return [s for s in self.stalls if s.seconds > self.limit_s]

    def report(self) -> str:
        return "\n".join(
            f"UI thread held {s.seconds * 1000:.0f} ms ({s.wall * 1000:.0f} ms wall) "
            f"in app/{s.where}\n{s.stack}"
            for s in self.over_limit
        )

    def assert_no_stall(self) -> None:
        assert self.samples > 0, "the watchdog never sampled"
        assert not self.over_limit, self.report()


def _stack_from(outer: FrameType, top: FrameType | None) -> str:
    """The UI thread's stack from the outermost app frame to where it is now."""
    lines = traceback.format_stack(top) if top is not None else []
    start = len(traceback.format_stack(outer)) - 1
    return "".join(lines[start:])
