"""The window's warm-up after its first paint: its longest UI-thread slice vs the freeze it
replaces.

Baseline (same run, fresh processes, alternating): the window shown, then what the first
opening of the panes used to cost on the UI thread in one go (qtawesome, pyqtgraph and the
pane modules imported on the click). DemoAI: the window shown, the warm-up left to run
(``app/ui/warmup.py``); the longest slice it took on the UI thread and the longest gap of
a 5 ms event-loop timer while it ran. Prints medians and ratios.

    .venv/bin/python bench/warmup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

COMMON = r"""
import sys, time
from PySide6.QtCore import QElapsedTimer, QTimer
from PySide6.QtWidgets import QApplication
app = QApplication(sys.argv)
from app.core.workspace import Workspace
from app.ui.app import create_main_window
from app.ui.panes import PANES
w = create_main_window(Workspace.open(sys.argv[1]))
w.show()
modules = [p.widget.partition(":")[0] for p in PANES]
"""

BASELINE = (
    COMMON
    + r"""
import importlib
for _ in range(20):
    app.processEvents()
    time.sleep(0.005)
t = time.perf_counter()
importlib.import_module("qtawesome")
importlib.import_module("pyqtgraph")
for m in modules:
    importlib.import_module(m)
print(f"FREEZE {time.perf_counter() - t:.6f}")
w.close()
"""
)

DEMOAI = (
    COMMON
    + r"""
from app.ui import theme
clock = QElapsedTimer(); clock.start(); last = [0]; gaps = []
def beat():
    now = clock.elapsed(); gaps.append(now - last[0]); last[0] = now
timer = QTimer(); timer.setInterval(5); timer.timeout.connect(beat); timer.start()
deadline = time.monotonic() + 120
while not w.panes_ready.is_set() and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.001)
slices = list(w._warmup.slices.timings) + list(theme._loader.slices.timings)
label, longest = max(slices, key=lambda s: s[1])
print(f"SLICE {longest:.6f} {label.replace(' ', '_')}")
print(f"GAP {max(gaps) / 1000:.6f}")
w.close()
"""
)


def run(code: str, ws: str) -> dict[str, tuple[float, str]]:
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    out = subprocess.run(
        [sys.executable, "-c", code, ws], capture_output=True, text=True, env=env, timeout=300
    )
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    found = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("FREEZE", "SLICE", "GAP"):
            found[parts[0]] = (float(parts[1]), parts[2] if len(parts) > 2 else "")
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    freeze, slices, gaps, where = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            freeze.append(run(BASELINE, f"{tmp}/b{i}")["FREEZE"][0])
            d = run(DEMOAI, f"{tmp}/d{i}")
            slices.append(d["SLICE"][0])
            gaps.append(d["GAP"][0])
            where.append(d["SLICE"][1])
    f, s, g = (statistics.median(x) * 1000 for x in (freeze, slices, gaps))
    print(f"runs: {args.runs}")
    print(f"baseline: importing on the first click froze the window {f:.0f} ms (median)")
    print(f"warm-up: longest UI-thread slice {s:.0f} ms (median; {', '.join(sorted(set(where)))})")
    print(f"warm-up: longest event-loop gap {g:.0f} ms (median)")
    print(f"ratio longest slice / baseline freeze: {s / f:.2f}")
    print(f"ratio longest gap / baseline freeze: {g / f:.2f}")


if __name__ == "__main__":
    main()
