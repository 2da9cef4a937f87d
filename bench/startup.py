"""Cold start to first window shown: DemoAI vs a bare QApplication + QMainWindow.

Each sample is a fresh Python process (interpreter start included) timed from
just before it is spawned to the moment its window has been shown and the
event loop has run once. Samples alternate between the two so machine noise
hits both alike. Prints medians and the ratio.

    .venv/bin/python bench/startup.py [--runs 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

BARE = r"""
import sys, time
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMainWindow
app = QApplication(sys.argv)
w = QMainWindow()
w.resize(1200, 780)
w.show()
def shown():
    print(f"SHOWN {time.time():.6f}", flush=True)
    app.quit()
QTimer.singleShot(0, shown)
app.exec()
"""

DEMOAI = r"""
import sys, time
from PySide6.QtWidgets import QApplication
from app.cli.main import gui_args
args = gui_args(["--workspace", sys.argv[1]])
from app.ui.app import run_gui
def shown():
    print(f"SHOWN {time.time():.6f}", flush=True)
    QApplication.instance().quit()
run_gui(args.workspace, on_shown=shown)
"""


def sample(code: str, *args: str) -> float:
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    for line in out.stdout.splitlines():
        if line.startswith("SHOWN "):
            return float(line.split()[1]) - t0
    raise RuntimeError(f"no window shown: {out.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    opts = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    with tempfile.TemporaryDirectory() as tmp:
        ws = os.path.join(tmp, "ws")
        sample(DEMOAI, ws)  # creates the workspace; also warms the OS file cache for both
        sample(BARE)
        bare: list[float] = []
        ours: list[float] = []
        for _ in range(opts.runs):
            bare.append(sample(BARE))
            ours.append(sample(DEMOAI, ws))
    mb, mo = statistics.median(bare), statistics.median(ours)
    print(f"bare Qt window   median {mb * 1000:7.1f} ms  (min {min(bare) * 1000:.1f})")
    print(f"DemoAI window    median {mo * 1000:7.1f} ms  (min {min(ours) * 1000:.1f})")
    print(f"ratio DemoAI/bare: {mo / mb:.2f}x   (goal: window <= 1.0 s; stretch <= 2x bare)")
    print(f"runs: {opts.runs}, platform: {os.environ['QT_QPA_PLATFORM']}")


if __name__ == "__main__":
    main()
