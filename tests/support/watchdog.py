"""A watchdog on the UI thread: which product code held it, and for how long.

A sampling thread looks at the UI thread's Python stack every few
milliseconds. A *stall* is one call into product code (a frame whose file is
under ``app/``) that stayed on the UI thread's stack for longer than the
limit: a slot that read a whole table, deleted a folder, waited on a process.
The report names the call and its stack, so a failure says what to move off
the UI thread. Waiting in the event loop (``qtbot.waitUntil``) is not a stall:
no product frame is on the stack then.
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


@dataclass
class UiWatchdog:
    limit_s: float = 0.100
    interval_s: float = 0.004
    stalls: list[Stall] = field(default_factory=list)
    samples: int = 0

    def __post_init__(self) -> None:
        self._ident = threading.get_ident()  # created on the UI (test) thread
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

    def _loop(self) -> None:
        current: FrameType | None = None
        since = 0.0
        reported = False
        while not self._stop.wait(self.interval_s):
            self.samples += 1
            frame, top = self._outermost_app_frame()
            now = time.perf_counter()
            if frame is not current:
                current, since, reported = frame, now, False
                continue
            if frame is not None and not reported and now - since > self.limit_s:
                reported = True
                stack = _stack_from(frame, top)
                where = f"{frame.f_code.co_filename.removeprefix(APP_DIR)}:{frame.f_code.co_name}"
                self.stalls.append(Stall(now - since, where, stack))
            elif reported and frame is not None and self.stalls:
                self.stalls[-1].seconds = now - since

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

    def report(self) -> str:
        return "\n".join(
            f"UI thread held {s.seconds * 1000:.0f} ms in app/{s.where}\n{s.stack}"
            for s in self.stalls
        )

    def assert_no_stall(self) -> None:
        assert self.samples > 0, "the watchdog never sampled"
        assert not self.stalls, self.report()


def _stack_from(outer: FrameType, top: FrameType | None) -> str:
    """The UI thread's stack from the outermost app frame to where it is now."""
    lines = traceback.format_stack(top) if top is not None else []
    start = len(traceback.format_stack(outer)) - 1
    return "".join(lines[start:])
