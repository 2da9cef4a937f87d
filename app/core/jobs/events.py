"""The event log of a job: JSON lines appended to ``runs/<job-id>/events.jsonl``.

Event types and their fields (every event also has ``t``, a UNIX time, and ``type``):

- ``state``:    state, attempt
- ``progress``: fraction (0..1 or null when unknown), message
- ``metric``:   name, step, value
- ``log``:      text, level
- ``artifact``: kind, path
- ``result``:   data (a JSON object)
- ``error``:    message, hint

Readers read only what is new since their last read and ignore a trailing
partial line (a writer killed mid-line), so a log survives crashes and restarts.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, TextIO

EVENT_TYPES = ("state", "progress", "metric", "log", "artifact", "result", "error")


class EventWriter:
    """Appends events; each line is flushed so that readers and crashes see whole lines."""

    def __init__(self, path: Path, mirror: TextIO | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")
        self._mirror = mirror
        self._lock = threading.Lock()

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Append one event and return it."""
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}")
        event = {"t": time.time(), "type": type_, **fields}
        line = json.dumps(event, ensure_ascii=False, default=str)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()
            if self._mirror is not None:
                self._mirror.write(line + "\n")
                self._mirror.flush()
        return event

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()


class EventReader:
    """Reads a job's events incrementally from a byte offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read_new(self, max_bytes: int = 4 << 20) -> list[dict[str, Any]]:
        """Events appended since the last call (whole lines only)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read(max_bytes)
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        events: list[dict[str, Any]] = []
        for raw in chunk[: end + 1].splitlines():
            if not raw.strip():
                continue
            try:
                ev = json.loads(raw)
            except ValueError:
                continue  # a damaged line (torn write before a crash): skip it
            if isinstance(ev, dict):
                events.append(ev)
        return events

    def read_all(self) -> list[dict[str, Any]]:
        """Every event from the start."""
        self.offset = 0
        out: list[dict[str, Any]] = []
        while batch := self.read_new():
            out.extend(batch)
        return out
