"""Dataset import benchmark: our streaming JSONL import vs pyarrow's own JSON reader.

Generates a JSONL file of N instruction-style rows (default 10 million), then,
each in a fresh process so peak memory is its own:

- ``pyarrow.json.read_json`` of the whole file (the baseline),
- ``import_dataset`` into a temporary workspace (parse, write Parquet, hash),
- opening the imported version and reading its first rows (time to first rows),
- the Qt view (offscreen): an ArrowTableModel in a QTableView, time to the first
  painted screen, then page-down and random-position scrolls, each repaint timed
  (p50/p99, goal p99 <= 16 ms), and the view process's peak RSS.

Prints seconds, rows/s, the ratio of our throughput to pyarrow's (goal >= 0.8x)
and peak RSS (goal <= 300 MB for the import).

    python bench/datasets.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORDS = (
    "report invoice meeting customer ticket summary draft quarterly budget policy "
    "printer access login refund schedule vendor contract review approve deadline "
    "team office travel expense laptop network update release migration audit"
).split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    tasks = ["summarize", "classify", "extract", "email", "rewrite"]
    with open(path, "w", encoding="utf-8") as fh:
        buf: list[str] = []
        for i in range(rows):
            words = rng.choices(WORDS, k=rng.randint(8, 30))
            buf.append(
                json.dumps(
                    {
                        "id": i,
                        "instruction": f"Please {rng.choice(tasks)} the following text.",
                        "input": " ".join(words),
                        "output": " ".join(words[: len(words) // 2]),
                        "score": round(rng.random(), 4),
                    }
                )
            )
            if len(buf) >= 100_000:
                fh.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            fh.write("\n".join(buf) + "\n")


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / (1024 * 1024)


def child(mode: str, path: str, ws: str) -> None:
    """Run one measurement in this process and print a JSON line."""
    if mode == "pyarrow":
        import pyarrow.json as pajson

        t0 = time.perf_counter()
        table = pajson.read_json(path)
        dt = time.perf_counter() - t0
        print(json.dumps({"seconds": dt, "rows": table.num_rows, "rss_mb": _peak_rss_mb()}))
    elif mode == "import":
        sys.path.insert(0, str(ROOT))
        import app.core.data.store as store_mod
        from app.core.data.importers import import_dataset
        from app.core.workspace import Workspace

        store_mod.PARQUET_COMPRESSION = os.environ.get("BENCH_COMPRESSION", "snappy")
        w = Workspace.open(ws)
        t0 = time.perf_counter()
        res = import_dataset(w, path, name="bench", format="jsonl")
        dt = time.perf_counter() - t0
        print(
            json.dumps(
                {
                    "seconds": dt,
                    "rows": res.version.rows,
                    "rss_mb": _peak_rss_mb(),
                    "ref": res.version.dataset_id,
                    "parquet_mb": res.version.data_path.stat().st_size / 1e6,
                }
            )
        )
    elif mode == "open":
        sys.path.insert(0, str(ROOT))
        t0 = time.perf_counter()
        from app.core.data.store import DatasetStore
        from app.core.workspace import Workspace

        w = Workspace.open(ws)
        store = DatasetStore(w)
        ref = store.list_datasets()[0].id
        pf = store.parquet_file(ref)
        first = pf.read_row_group(0).slice(0, 50).to_pylist()
        dt = time.perf_counter() - t0
        # A random block deep in the file (a scrolled screen) from the cold file handle.
        t1 = time.perf_counter()
        mid = pf.read_row_group(pf.num_row_groups // 2).slice(0, 50).to_pylist()
        dt_mid = time.perf_counter() - t1
        print(
            json.dumps(
                {
                    "seconds": dt,
                    "block_seconds": dt_mid,
                    "rows": len(first) + len(mid),
                    "rss_mb": _peak_rss_mb(),
                }
            )
        )
    elif mode == "view":
        print(json.dumps(_view_bench(ws)))
    elif mode == "qtbase":
        print(json.dumps(_view_bench(ws, baseline=True)))


def _pct(values: list[float], q: float) -> float:
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


#: Rows of the dataset copied into the QStandardItemModel baseline (all in memory).
BASELINE_ROWS = 20_000


def _view_bench(
    ws: str, screens: int = 200, seed: int = 0, baseline: bool = False
) -> dict[str, float]:
    """The Qt view: model + QTableView offscreen, first paint, then page and random scrolls.

    ``baseline``: the same view and scrolls over Qt's own ``QStandardItemModel``
    holding the first rows' display strings in C++ (no Python per cell): the floor
    of what Qt's painting costs on this machine.
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    from PySide6.QtGui import QStandardItem, QStandardItemModel
    from PySide6.QtWidgets import QApplication, QTableView

    from app.core.data.store import DatasetStore
    from app.core.workspace import Workspace
    from app.ui.panes.datasets.qt_arrow_model import (
        ArrowCellDelegate,
        ArrowTableModel,
        configure_table_view,
        display_text,
    )

    app = QApplication.instance() or QApplication([])
    t_imports = time.perf_counter() - t0
    w = Workspace.open(ws)
    store = DatasetStore(w)
    ref = store.list_datasets()[0].id
    view = QTableView()
    view.resize(1280, 800)
    configure_table_view(view)  # as the Datasets pane does (for ours and the baseline)
    view.show()
    app.processEvents()
    t1 = time.perf_counter()
    pf = store.parquet_file(ref)
    model = ArrowTableModel(pf)
    char_px = view.fontMetrics().averageCharWidth()
    for c in range(model.columnCount()):  # as the Datasets pane does for its columns
        model.set_display_width(c, 220, char_px)
    if baseline:
        limits = [model._limits[col.uid] for col in model.columns]
        head = pf.read_row_groups(
            list(range(min(pf.num_row_groups, BASELINE_ROWS // 8192 + 1)))
        ).slice(0, BASELINE_ROWS)
        std = QStandardItemModel(head.num_rows, head.num_columns)
        for c, values in enumerate(head.columns):
            for r, v in enumerate(values.to_pylist()):
                std.setItem(r, c, QStandardItem(display_text(v, limits[c]) or ""))
        t1 = time.perf_counter()
        view.setModel(std)
    else:
        view.setModel(model)
        delegate = ArrowCellDelegate(model, view)  # as the Datasets pane does
        view.setItemDelegate(delegate)
    view.viewport().repaint()  # paints the first screen of rows synchronously
    first_s = time.perf_counter() - t1
    rows = view.model().rowCount()
    bar = view.verticalScrollBar()
    page = max(1, bar.pageStep())
    page_ms: list[float] = []
    rand_ms: list[float] = []
    cpu_ms: list[float] = []  # the painting thread's CPU time: what the repaint costs, without
    # the time the (shared) machine gave to other processes in the middle of it
    rng = random.Random(seed)

    def timed(out: list[float]) -> None:
        t, c = time.perf_counter(), time.thread_time()
        view.viewport().repaint()
        cpu_ms.append((time.thread_time() - c) * 1000)
        out.append((time.perf_counter() - t) * 1000)

    for i in range(screens):  # page down from the top
        bar.setValue(min(bar.maximum(), (i + 1) * page))
        timed(page_ms)
    for _ in range(screens):  # jump anywhere (the scroll bar dragged)
        bar.setValue(rng.randint(0, bar.maximum()))
        timed(rand_ms)
    bar.setValue(bar.maximum())
    t = time.perf_counter()
    view.viewport().repaint()
    end_ms = (time.perf_counter() - t) * 1000
    app.processEvents()
    both = page_ms + rand_ms
    return {
        "seconds": first_s,
        "imports_s": t_imports,
        "rows": rows,
        "page_p50": _pct(page_ms, 50),
        "page_p99": _pct(page_ms, 99),
        "rand_p50": _pct(rand_ms, 50),
        "rand_p99": _pct(rand_ms, 99),
        "all_p50": _pct(both, 50),
        "all_p99": _pct(both, 99),
        "all_max": max(both),
        "cpu_p50": _pct(cpu_ms, 50),
        "cpu_p99": _pct(cpu_ms, 99),
        "end_ms": end_ms,
        "rss_mb": _peak_rss_mb(),
    }


def _run_once(mode: str, path: Path, ws: Path) -> dict[str, float]:
    if mode == "import" and ws.exists():
        import shutil

        shutil.rmtree(ws)
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path), str(ws)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--file", type=Path, help="use this JSONL file instead of generating one")
    ap.add_argument(
        "--compression", default="snappy", help="Parquet codec of the import (snappy, none, zstd)"
    )
    ap.add_argument(
        "--repeat", type=int, default=5, help="baseline/import pairs (median ratio, best times)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the generated file and workspace")
    ap.add_argument("--no-view", action="store_true", help="skip the Qt view measurement")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "PATH", "WS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="demoai-bench-"))
    path = args.file or tmp / "bench.jsonl"
    if args.file is None:
        t0 = time.perf_counter()
        generate(path, args.rows)
        print(
            f"generated {args.rows:,} rows, {path.stat().st_size / 1e6:,.0f} MB in {time.perf_counter() - t0:.1f} s"
        )
    size_mb = path.stat().st_size / 1e6
    os.environ["BENCH_COMPRESSION"] = args.compression
    # Alternate baseline and import so both see the same phases of a shared machine;
    # the figure is the median of the per-pair ratios.
    pairs = [
        (_run_once("pyarrow", path, tmp / "ws"), _run_once("import", path, tmp / "ws"))
        for _ in range(args.repeat)
    ]
    pair_ratios = sorted(b["seconds"] / o["seconds"] for b, o in pairs)
    base = min((b for b, _ in pairs), key=lambda r: r["seconds"])
    ours = min((o for _, o in pairs), key=lambda r: r["seconds"])
    base["rss_mb"] = max(b["rss_mb"] for b, _ in pairs)
    ours["rss_mb"] = max(o["rss_mb"] for _, o in pairs)
    opened = _run_once("open", path, tmp / "ws")
    rows = ours["rows"]
    print(f"file                       {size_mb:,.0f} MB, {rows:,.0f} rows, {os.cpu_count()} CPUs")
    print(
        f"pyarrow.json.read_json     {base['seconds']:7.2f} s  {base['rows'] / base['seconds']:>12,.0f} rows/s  "
        f"peak RSS {base['rss_mb']:,.0f} MB"
    )
    print(
        f"demoai import ({args.compression:<8})  {ours['seconds']:7.2f} s  {rows / ours['seconds']:>12,.0f} rows/s  "
        f"peak RSS {ours['rss_mb']:,.0f} MB  (parquet {ours['parquet_mb']:,.0f} MB)"
    )
    median = pair_ratios[len(pair_ratios) // 2]
    print(f"(best of {args.repeat} runs each, alternating, each in a fresh process)")
    print(
        f"throughput ratio           {median:.2f}x pyarrow, median of {len(pairs)} back-to-back "
        f"pairs (range {pair_ratios[0]:.2f}-{pair_ratios[-1]:.2f}x; goal >= 0.8x)"
    )
    print(
        f"open + first 50 rows       {opened['seconds'] * 1000:7.0f} ms (incl. imports; goal <= 1 s), "
        f"a block mid-file {opened['block_seconds'] * 1000:.0f} ms"
    )
    if not args.no_view:
        qv = _run_once("view", path, tmp / "ws")
        print(
            f"Qt view: first rows shown   {qv['seconds'] * 1000:7.0f} ms (model + first paint; "
            f"PySide6 import {qv['imports_s'] * 1000:.0f} ms more; goal <= 1 s), {qv['rows']:,.0f} rows"
        )
        print(
            f"Qt view: page-down repaint  p50 {qv['page_p50']:6.2f} ms  p99 {qv['page_p99']:6.2f} ms"
        )
        print(
            f"Qt view: random-jump repaint p50 {qv['rand_p50']:6.2f} ms  p99 {qv['rand_p99']:6.2f} ms"
        )
        print(
            f"Qt view: all screens         p50 {qv['all_p50']:6.2f} ms  p99 {qv['all_p99']:6.2f} ms "
            f"(goal p99 <= 16 ms), max {qv['all_max']:.1f} ms, last screen {qv['end_ms']:.1f} ms"
        )
        print(
            f"Qt view: CPU per repaint     p50 {qv['cpu_p50']:6.2f} ms  p99 {qv['cpu_p99']:6.2f} ms "
            "(the painting thread's CPU time, without the machine's other work)"
        )
        print(f"Qt view: peak RSS            {qv['rss_mb']:,.0f} MB (goal <= 300 MB)")
        qb = _run_once("qtbase", path, tmp / "ws")
        print(
            f"baseline: Qt's QStandardItemModel and default delegate, {qb['rows']:,.0f} rows' "
            "display text held in C++, "
            f"same view and scrolls: p50 {qb['all_p50']:.2f} ms  p99 {qb['all_p99']:.2f} ms, "
            f"CPU p50 {qb['cpu_p50']:.2f} ms  p99 {qb['cpu_p99']:.2f} ms"
        )
        print(
            f"ours / Qt baseline           p50 {qv['all_p50'] / qb['all_p50']:.2f}x  "
            f"p99 {qv['all_p99'] / qb['all_p99']:.2f}x (below 1: faster than Qt's own model)"
        )
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
