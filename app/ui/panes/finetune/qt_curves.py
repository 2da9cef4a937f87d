"""Live training curves (pyqtgraph), several runs overlaid.

Points are keyed by step: after a resume, a later point for the same step
replaces the earlier one, so the curve stays continuous. Series in
:data:`POINT_SERIES` (checkpoint evaluations) are drawn as markers only.
"""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QEvent
from PySide6.QtWidgets import QGridLayout, QWidget

from app.ui.theme import current_colors

PLOTS = (
    ("loss", "Loss", ("train_loss", "eval_loss", "ckpt_eval_loss")),
    ("learning_rate", "Learning rate", ("learning_rate",)),
    ("grad_norm", "Gradient norm", ("grad_norm",)),
    ("tokens_per_s", "Tokens/s", ("tokens_per_s",)),
    ("memory", "Memory (MB)", ("cpu_mem_mb", "gpu_mem_mb")),
)
#: Metrics drawn as markers only (no line), with their symbol: e.g. the eval loss of each
#: checkpoint from an ``eval.checkpoints`` job, shown beside the run's own curves.
POINT_SERIES = {"ckpt_eval_loss": "star"}
#: Per-rank figures of a run with several training processes (``tokens_per_s.rank1``, ...)
#: are drawn as dotted lines in the plot of the quantity before the dot.
PER_RANK = ("tokens_per_s", "cpu_mem_mb", "gpu_mem_mb")
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


class CurvesWidget(QWidget):
    """One plot per quantity; one line per (run, metric)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        pg.setConfigOptions(antialias=True)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        self.plots: dict[str, pg.PlotItem] = {}
        self._metric_plot: dict[str, str] = {}
        for i, (key, title, metrics) in enumerate(PLOTS):
            w = pg.PlotWidget(title=title)
            w.showGrid(x=True, y=True, alpha=0.3)
            w.addLegend(offset=(-5, 5))
            w.setLabel("bottom", "step")
            grid.addWidget(w, i // 3, i % 3)
            self.plots[key] = w.getPlotItem()
            for m in metrics:
                self._metric_plot[m] = key
        self.points: dict[tuple[str, str], dict[int, float]] = {}
        self.lines: dict[tuple[str, str], Any] = {}
        self._run_color: dict[str, str] = {}
        self._labels: dict[str, str] = {}
        self._titles = {key: title for key, title, _ in PLOTS}
        self.apply_colors()

    def apply_colors(self) -> None:
        """Background, axes, titles and legends in the current theme's colours (the plots
        were white in the dark theme); called again when the theme changes."""
        c = current_colors()
        for key, item in self.plots.items():
            widget = item.getViewWidget()
            if widget is not None:
                widget.setBackground(c.base)
            item.setTitle(self._titles[key], color=c.text)
            for side in ("left", "bottom"):
                axis = item.getAxis(side)
                axis.setPen(c.muted)
                axis.setTextPen(c.text)
            legend = item.legend
            if legend is not None:
                legend.setLabelTextColor(c.text)
                for _sample, label in legend.items:
                    label.setText(label.text, color=c.text)

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange):
            self.apply_colors()

    def set_runs(self, runs: dict[str, str]) -> None:
        """Show exactly these runs (job id -> label); others are removed."""
        emptied = set()
        for key in [k for k in self.lines if k[0] not in runs]:
            line = self.lines.pop(key)
            line.getViewBox() and self.plots[self._metric_plot[key[1]]].removeItem(line)
            self.points.pop(key, None)
            emptied.add(self._metric_plot[key[1]])
        self._labels = dict(runs)
        for plot_key in emptied:
            self._fit_y(plot_key)
        for job_id in runs:
            self._run_color.setdefault(job_id, COLORS[len(self._run_color) % len(COLORS)])

    def add_events(self, job_id: str, events: list[dict[str, Any]]) -> None:
        touched: set[tuple[str, str]] = set()
        for ev in events:
            if ev.get("type") != "metric" or not self._known(str(ev.get("name"))):
                continue
            key = (job_id, str(ev["name"]))
            self.points.setdefault(key, {})[int(ev["step"])] = float(ev["value"])
            touched.add(key)
        for key in touched:
            self._redraw(key)

    def _known(self, name: str) -> bool:
        """Whether ``name`` has a plot; a per-rank name is given its quantity's plot."""
        if name in self._metric_plot:
            return True
        base, _, rank = name.partition(".")
        if base in PER_RANK and rank.startswith("rank") and rank[4:].isdigit():
            self._metric_plot[name] = self._metric_plot[base]
            return True
        return False

    def _redraw(self, key: tuple[str, str]) -> None:
        if key[0] not in self._labels:
            return
        pts = self.points[key]
        steps = sorted(pts)
        values = [pts[s] for s in steps]
        line = self.lines.get(key)
        if line is None and key[1] in POINT_SERIES:
            color = self._run_color[key[0]]
            line = self.plots[self._metric_plot[key[1]]].plot(
                steps,
                values,
                pen=None,
                name=f"{self._labels[key[0]]} {key[1]}",
                symbol=POINT_SERIES[key[1]],
                symbolSize=12,
                symbolBrush=color,
                symbolPen=pg.mkPen(current_colors().text, width=1),
            )
            self.lines[key] = line
        elif line is None:
            dash = key[1] in ("eval_loss", "gpu_mem_mb")
            style = pg.QtCore.Qt.PenStyle
            per_rank = "." in key[1]
            pen = pg.mkPen(
                self._run_color[key[0]],
                width=1 if per_rank else 2,
                style=(style.DotLine if per_rank else style.DashLine if dash else style.SolidLine),
            )
            label = f"{self._labels[key[0]]} {key[1]}"
            line = self.plots[self._metric_plot[key[1]]].plot(
                steps,
                values,
                pen=pen,
                name=label,
                symbol="o" if key[1] == "eval_loss" else None,
                symbolSize=5,
            )
            self.lines[key] = line
        else:
            line.setData(steps, values)
        self._fit_y(self._metric_plot[key[1]])

    def _fit_y(self, plot_key: str) -> None:
        """Give a flat series a y range around its value.

        pyqtgraph's auto range pads a zero-height range by +-0.5, which squashes a
        constant learning rate of 3e-4 onto the zero line. A series with some spread
        is left to auto range (which fits it).
        """
        ys = [
            v
            for (job, metric), pts in self.points.items()
            for v in pts.values()
            if job in self._labels and self._metric_plot.get(metric) == plot_key
        ]
        vb = self.plots[plot_key].getViewBox()
        if not ys:
            vb.enableAutoRange(axis="y")
            return
        lo, hi = min(ys), max(ys)
        size = max(abs(lo), abs(hi))
        if hi - lo > 1e-6 * size:
            vb.enableAutoRange(axis="y")
            return
        pad = 0.1 * size if size > 0 else 1.0
        vb.setYRange(lo - pad, hi + pad, padding=0)

    def series(self, job_id: str, metric: str) -> dict[int, float]:
        """The points shown for one run and metric (step -> value)."""
        return dict(self.points.get((job_id, metric), {}))
