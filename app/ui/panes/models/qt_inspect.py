"""Models › Inspect: the module tree, weight statistics, comparisons and a layer × module heatmap.

Everything that reads weights runs through ``services.actions.run`` (a thread, with
progress and Cancel); the window only lays out what comes back. The numbers come from
``app.core.inspect`` (numpy, no torch), the same as ``demoai models inspect``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.format import human_size
from app.core.inspect.heatmap import Grid, available, grid, short_names
from app.core.models.registry import ModelRecord
from app.ui.actions import Cancelled, Progress
from app.ui.panes.models.qt_models_table import human_params
from app.ui.services import Services
from app.ui.theme import current_colors
from app.ui.widgets.pickers import ModelPicker
from app.ui.widgets.status_line import StatusLine

STAT_COLUMNS = ("Tensor", "Mean", "Std", "Min", "Max", "L2 norm", "Near zero", "Outlier")
COMPARE_COLUMNS = ("Tensor", "Other", "Type", "Rel. change", "Cosine", "Max |Δ|")
LORA_COLUMNS = ("Module", "Rank", "Scale", "‖B·A‖·scale", "Effective rank", "Top singular values")


class _NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number, shown with a short format."""

    def __init__(self, value: float, fmt: str = "{:.4g}") -> None:
        super().__init__("–" if value is None or math.isnan(value) else fmt.format(value))
        self.value = -math.inf if value is None or math.isnan(value) else float(value)
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, _NumberItem):
            return self.value < other.value
        return super().__lt__(other)


def _table(columns: tuple[str, ...], name: str) -> QTableWidget:
    t = QTableWidget(0, len(columns))
    t.setObjectName(name)
    t.setHorizontalHeaderLabels(list(columns))
    t.verticalHeader().setVisible(False)
    t.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    t.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    t.horizontalHeader().setStretchLastSection(True)
    t.setColumnWidth(0, 320)
    return t


def _fill(table: QTableWidget, rows: list[list[QTableWidgetItem]]) -> None:
    table.setSortingEnabled(False)
    table.setRowCount(len(rows))
    for r, items in enumerate(rows):
        for c, item in enumerate(items):
            table.setItem(r, c, item)
    table.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)  # file order
    table.setSortingEnabled(True)


class InspectWindow(QDialog):
    """One model's inspector (non-modal; several can be open)."""

    def __init__(self, services: Services, model: ModelRecord, parent: QWidget | None = None):
        super().__init__(parent)
        self.services = services
        self.record = model
        self.report: dict[str, Any] = {}
        self.current_grid: Grid | None = None
        self.setWindowTitle(f"Inspect {model.name}")
        self.setObjectName("inspectWindow")
        self.resize(1100, 720)

        self.summary = QLabel(f"<b>{model.name}</b> — reading the headers…")
        self.summary.setObjectName("inspectSummary")
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.stats_btn = QPushButton("Weight statistics")
        self.stats_btn.setToolTip(
            "Mean, std, min/max, L2 norm, near-zero share and a histogram per tensor; "
            "outliers flagged. Cached, so the second time is instant."
            + (
                " For an adapter: the norm and rank of each LoRA update."
                if model.format == "lora"
                else ""
            )
        )
        self.compare_picker = ModelPicker(services, accept=lambda m: m.id != model.id)
        self.compare_picker.setToolTip(
            "A fine-tune or merge of the same architecture, or a GGUF export of this model "
            "(its quantization error)"
        )
        self.compare_btn = QPushButton("Compare")
        self.stats_btn.clicked.connect(self.compute_stats)
        self.compare_btn.clicked.connect(
            lambda: self.compare_with(self.compare_picker.current_id())
        )
        self.status = StatusLine()
        self.status.setObjectName("inspectStatus")
        bar = QHBoxLayout()
        bar.addWidget(self.stats_btn)
        bar.addSpacing(16)
        bar.addWidget(QLabel("Compare with"))
        bar.addWidget(self.compare_picker, 1)
        bar.addWidget(self.compare_btn)

        self.tree = QTreeWidget()
        self.tree.setObjectName("inspectTree")
        self.tree.setHeaderLabels(["Module", "Shape", "Type", "Parameters", "Size"])
        self.tree.setColumnWidth(0, 380)
        self.stats_table = _table(STAT_COLUMNS, "inspectStats")
        self.compare_table = _table(COMPARE_COLUMNS, "inspectCompare")
        self.lora_table = _table(LORA_COLUMNS, "inspectLora")

        heat = QWidget()
        hl = QVBoxLayout(heat)
        row = QHBoxLayout()
        self.stat_choice = QComboBox()
        self.stat_choice.setObjectName("inspectHeatmapChoice")
        self.stat_choice.currentIndexChanged.connect(lambda _i: self.show_heatmap())
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.setToolTip(
            "Colour by log10 of the value (only when every value is positive)"
        )
        self.log_scale.toggled.connect(lambda _on: self.show_heatmap())
        self.png_btn = QPushButton("Export PNG…")
        self.csv_btn = QPushButton("Export CSV…")
        self.png_btn.clicked.connect(self._ask_png)
        self.csv_btn.clicked.connect(self._ask_csv)
        row.addWidget(QLabel("Statistic"))
        row.addWidget(self.stat_choice, 1)
        row.addWidget(self.log_scale)
        row.addWidget(self.png_btn)
        row.addWidget(self.csv_btn)
        hl.addLayout(row)
        self.plot = pg.PlotWidget(background="w")
        self.plot.setObjectName("inspectHeatmap")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.plot.setLabel("bottom", "layer")
        self.plot.getPlotItem().setMenuEnabled(False)
        self.colorbar = pg.ColorBarItem(colorMap=pg.colormap.get("viridis"), interactive=False)
        self.colorbar.setImageItem(self.image, insert_in=self.plot.getPlotItem())
        hl.addWidget(self.plot, 1)

        self.tabs = QTabWidget()
        self.tabs.addTab(self.tree, "Architecture")
        self.tabs.addTab(self.stats_table, "Statistics")
        self.tabs.addTab(self.compare_table, "Compare")
        self.tabs.addTab(self.lora_table, "LoRA")
        self.tabs.addTab(heat, "Heatmap")
        for i in (1, 2, 3, 4):
            self.tabs.setTabVisible(i, False)  # shown once they have something

        lay = QVBoxLayout(self)
        lay.addWidget(self.summary)
        lay.addLayout(bar)
        lay.addWidget(self.status)
        lay.addWidget(self.tabs, 1)
        self._update_buttons(busy=True)
        self._run("Reading the headers", self._compute_fn())

    # -- running ---------------------------------------------------------------------
    def _compute_fn(self, stats: bool = False, compare: str | None = None) -> Any:
        ws = self.services.workspace
        model_id = self.record.id

        def fn(progress: Progress) -> dict[str, Any]:
            from app.core.inspect.job import inspect_model
            from app.core.jobs.context import Cancelled as JobCancelled

            def report(fraction: float | None, message: str) -> None:
                progress.update(fraction or 0.0, 1.0, message)

            try:
                return inspect_model(
                    ws,
                    model_id,
                    stats=stats,
                    compare=compare,
                    progress=report,
                    cancelled=lambda: progress.cancelled,
                )
            except JobCancelled:
                raise Cancelled() from None

        return fn

    def _run(self, title: str, fn: Any) -> None:
        self.services.actions.run(
            self,
            title,
            fn,
            status=self.status,
            cancellable=True,
            done=self._show,
            failed=lambda _e: self._update_buttons(),
        )

    def compute_stats(self) -> None:
        self._update_buttons(busy=True)
        self._run("Computing weight statistics", self._compute_fn(stats=True))

    def compare_with(self, other_id: str | None) -> None:
        if not other_id:
            return
        self._update_buttons(busy=True)
        self._run("Comparing", self._compute_fn(compare=other_id))

    def _update_buttons(self, busy: bool = False) -> None:
        self.stats_btn.setEnabled(not busy)
        self.compare_btn.setEnabled(not busy and self.compare_picker.current_id() is not None)

    # -- showing ---------------------------------------------------------------------
    def _show(self, report: dict[str, Any]) -> None:
        for key in ("stats", "lora", "compare"):
            if key in report:
                self.report[key] = report[key]
        if not self.report.get("architecture"):
            self.report["architecture"] = report["architecture"]
            self.report["model"] = report["model"]
            self._show_architecture(report["architecture"])
        if "stats" in report:
            self._show_stats(report["stats"])
        if "lora" in report:
            self._show_lora(report["lora"])
        if "compare" in report:
            self._show_compare(report["compare"])
        self._refresh_choices()
        self._update_buttons()

    def _show_architecture(self, arch: dict[str, Any]) -> None:
        dtypes = ", ".join(f"{v['tensors']} {k}" for k, v in sorted(arch["dtypes"].items()))
        n_layers = sum(1 for r in arch["layers"] if r["layer"] is not None)
        self.summary.setText(
            f"<b>{self.record.name}</b> — {arch['tensor_count']} tensors, "
            f"{human_params(arch['params'])} parameters, {human_size(arch['nbytes'])}, "
            f"{n_layers} layers · {dtypes}"
        )
        self.tree.clear()

        def add(parent: QTreeWidget | QTreeWidgetItem, node: dict[str, Any]) -> None:
            shape = "×".join(str(d) for d in node["shape"]) if "shape" in node else ""
            item = QTreeWidgetItem(
                [
                    node["name"],
                    shape,
                    node.get("dtype", ""),
                    f"{node['params']:,}",
                    human_size(node["nbytes"]),
                ]
            )
            for c in (3, 4):
                item.setTextAlignment(
                    c, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                )
            if isinstance(parent, QTreeWidget):
                parent.addTopLevelItem(item)
            else:
                parent.addChild(item)
            for child in node.get("children", []):
                add(item, child)

        for child in arch["tree"].get("children", []):
            add(self.tree, child)
        for i in range(self.tree.topLevelItemCount()):
            top = self.tree.topLevelItem(i)
            if top is not None:
                top.setExpanded(True)

    def _show_stats(self, stats: dict[str, Any]) -> None:
        flag = QBrush(QColor(current_colors().warning))  # the theme's warning colour
        rows = []
        for t in stats["tensors"]:
            items: list[QTableWidgetItem] = [
                QTableWidgetItem(t["name"]),
                _NumberItem(t["mean"]),
                _NumberItem(t["std"]),
                _NumberItem(t["min"]),
                _NumberItem(t["max"]),
                _NumberItem(t["l2"]),
                _NumberItem(t["near_zero"], "{:.2%}"),
                QTableWidgetItem(f"{t['outlier_ratio']:.1f}× the median" if t["outlier"] else ""),
            ]
            if t["outlier"]:
                for it in items:
                    it.setForeground(flag)
                    font = it.font()
                    font.setBold(True)
                    it.setFont(font)
            rows.append(items)
        _fill(self.stats_table, rows)
        self.tabs.setTabVisible(1, True)
        n_out = sum(1 for t in stats["tensors"] if t["outlier"])
        cached = " (from the cache)" if stats.get("cached") else ""
        self.status.ok(f"Statistics of {len(rows)} tensors{cached}; {n_out} outlier(s).")
        self.tabs.setCurrentIndex(1)

    def _show_lora(self, lora: dict[str, Any]) -> None:
        rows = []
        for m in lora["modules"]:
            top = ", ".join(f"{v:.3g}" for v in m["singular_values"][:4])
            rows.append(
                [
                    QTableWidgetItem(m["module"]),
                    _NumberItem(m["rank"], "{:.0f}"),
                    _NumberItem(m["scale"]),
                    _NumberItem(m["norm"]),
                    _NumberItem(m["effective_rank"], "{:.2f}"),
                    QTableWidgetItem(top),
                ]
            )
        _fill(self.lora_table, rows)
        self.tabs.setTabVisible(3, True)

    def _show_compare(self, cmp: dict[str, Any]) -> None:
        rows = []
        for t in cmp["tensors"]:
            rows.append(
                [
                    QTableWidgetItem(t["name"]),
                    QTableWidgetItem(t["other"]),
                    QTableWidgetItem(f"{t['dtype']} → {t['other_dtype']}"),
                    _NumberItem(t["rel_change"]),
                    _NumberItem(t["cosine"], "{:.6f}"),
                    _NumberItem(t["max_abs"]),
                ]
            )
        _fill(self.compare_table, rows)
        self.compare_table.sortItems(3, Qt.SortOrder.DescendingOrder)
        what = "quantization error" if cmp["mode"] == "quantization" else "change"
        self.tabs.setTabText(2, f"Compare ({what})")
        self.tabs.setTabVisible(2, True)
        self.tabs.setCurrentIndex(2)
        missing = len(cmp["only_in_reference"]) + len(cmp["only_in_other"])
        self.status.ok(
            f"Compared {len(rows)} tensors with {cmp['other_model']['name']}"
            + (f"; {missing} without a counterpart." if missing else ".")
        )

    # -- heatmap ---------------------------------------------------------------------
    def _refresh_choices(self) -> None:
        current = self.stat_choice.currentData()
        self.stat_choice.blockSignals(True)
        self.stat_choice.clear()
        for section, key, label in available(self.report):
            self.stat_choice.addItem(label, f"{section}:{key}")
        i = self.stat_choice.findData(current) if current else -1
        self.stat_choice.setCurrentIndex(max(i, 0))
        self.stat_choice.blockSignals(False)
        has = self.stat_choice.count() > 0
        self.tabs.setTabVisible(4, has)
        if has:
            self.show_heatmap()

    def show_heatmap(self, section: str | None = None, key: str | None = None) -> Grid | None:
        """Draw the chosen statistic (or ``section``/``key``) over layer × module type."""
        if section and key:
            i = self.stat_choice.findData(f"{section}:{key}")
            if i >= 0 and i != self.stat_choice.currentIndex():
                self.stat_choice.setCurrentIndex(i)  # draws through the signal
                return self.current_grid
        data = self.stat_choice.currentData()
        if not data:
            return None
        sec, _, k = str(data).partition(":")
        g = grid(self.report, sec, k)
        self.current_grid = g
        if not g.layers:
            self.image.clear()
            return g
        values = np.array(g.values, dtype=np.float64)
        title = g.title
        if self.log_scale.isChecked() and np.nanmin(values) > 0:
            values = np.log10(values)
            title = f"log10 {g.title}"
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + (abs(lo) * 1e-6 or 1e-12)
        self.image.setImage(np.where(np.isfinite(values), values, lo), levels=(lo, hi))
        self.colorbar.setLevels((lo, hi))
        names = short_names(g.types)
        self.plot.getAxis("left").setTicks([[(i + 0.5, n[-28:]) for i, n in enumerate(names)]])
        step = max(1, len(g.layers) // 16)
        self.plot.getAxis("bottom").setTicks(
            [[(j + 0.5, str(layer)) for j, layer in enumerate(g.layers) if j % step == 0]]
        )
        self.plot.setTitle(title)
        self.plot.getPlotItem().getViewBox().invertY(True)
        self.plot.getPlotItem().getViewBox().autoRange(padding=0)
        return g

    def export_png(self, path: str | Path) -> Path:
        p = Path(path)
        if not self.plot.grab().save(str(p), "PNG"):
            raise OSError(f"Could not write {p}.")
        return p

    def export_csv(self, path: str | Path) -> Path:
        from app.core.store import atomic_write_text

        p = Path(path)
        if self.current_grid is None:
            raise ValueError("No heatmap to export yet.")
        atomic_write_text(p, self.current_grid.to_csv())
        return p

    def _ask_png(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export heatmap", "heatmap.png", "PNG (*.png)")
        if path:
            self.export_png(path)
            self.status.ok(f"Saved {path}")

    def _ask_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export heatmap data", "heatmap.csv", "CSV (*.csv)"
        )
        if path:
            self.export_csv(path)
            self.status.ok(f"Saved {path}")
