"""Human units for the UI: sizes, durations, relative times."""

from __future__ import annotations

import time


def human_size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def relative_time(t: float | None, now: float | None = None) -> str:
    if t is None:
        return ""
    d = (now or time.time()) - t
    if d < 45:
        return "just now"
    if d < 3600:
        return f"{round(d / 60)} min ago"
    if d < 86400:
        return f"{round(d / 3600)} h ago"
    if d < 7 * 86400:
        return f"{round(d / 86400)} days ago"
    return time.strftime("%Y-%m-%d", time.localtime(t))
