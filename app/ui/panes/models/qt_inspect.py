"""Models › Inspect: the module tree, weight statistics, comparisons and a layer × module heatmap.

Everything that reads weights runs through ``services.actions.run`` (a thread, with
progress and Cancel); the window only lays out what comes back. The numbers come from
``app.core.inspect`` (numpy, no torch), the same as ``demoai models inspect``.
"""

from __future__ import annotations

import functools
import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QBrush, QColor, QCursor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QToolTip,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.format import human_size
from app.core.inspect.heatmap import Grid, available, grid, short_names
from app.core.jobs.store import Job, JobState
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
        if model.format != "lora":  # an adapter shares no tensor with its base
            self._propose_parent(model.id)
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
        # The plots are built when first shown: a pyqtgraph plot costs ~50 ms of UI thread.
        self._heat_layout = hl
        self.heat_tab = heat
        self.plot: Any = None
        self.image: Any = None
        self.colorbar: Any = None
        self.prompt_tab = QWidget()
        QVBoxLayout(self.prompt_tab).setContentsMargins(0, 0, 0, 0)
        self._prompt_built = False

        self.tabs = QTabWidget()
        self.tabs.addTab(self.tree, "Architecture")
        self.tabs.addTab(self.stats_table, "Statistics")
        self.tabs.addTab(self.compare_table, "Compare")
        self.tabs.addTab(self.lora_table, "LoRA")
        self.tabs.addTab(heat, "Heatmap")
        self.tabs.addTab(self.prompt_tab, "Prompt")
        self.tabs.currentChanged.connect(self._tab_shown)
        for i in (1, 2, 3, 4):
            self.tabs.setTabVisible(i, False)  # shown once they have something
        self.probe_job: str | None = None
        self.probe: dict[str, Any] | None = None
        self.attention: np.ndarray | None = None
        services.hub.jobs_changed.connect(self._jobs_changed)
        services.hub.job_events.connect(self._job_events)

        lay = QVBoxLayout(self)
        lay.addWidget(self.summary)
        lay.addLayout(bar)
        lay.addWidget(self.status)
        lay.addWidget(self.tabs, 1)
        self._update_buttons(busy=True)
        self._run("Reading the headers", self._compute_fn())

    def _propose_parent(self, model_id: str) -> None:
        """Preselect the model this one was made from (a GGUF export's source, a merge's base)."""
        from app.core.errors import DemoAIError
        from app.core.models.registry import ModelRegistry

        try:
            parents = ModelRegistry(self.services.workspace).lineage(model_id).parents
        except DemoAIError:
            return
        for edge in parents:
            if edge.name is not None and self.compare_picker.select(edge.model_id):
                return

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
        if has and self.plot is not None:
            self.show_heatmap()

    def _tab_shown(self, index: int) -> None:
        page = self.tabs.widget(index)
        if page is self.heat_tab and self.plot is None:
            self.show_heatmap()
        elif page is self.prompt_tab:
            self._ensure_prompt()

    def _ensure_plot(self) -> None:
        if self.plot is not None:
            return
        self.plot = pg.PlotWidget(background="w", enableMenu=False)
        self.plot.setObjectName("inspectHeatmap")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.plot.setLabel("bottom", "layer")
        self.plot.getPlotItem().setMenuEnabled(False)
        self.colorbar = pg.ColorBarItem(colorMap=pg.colormap.get("viridis"), interactive=False)
        self.colorbar.setImageItem(self.image, insert_in=self.plot.getPlotItem())
        self._heat_layout.addWidget(self.plot, 1)

    def _ensure_prompt(self) -> None:
        if not self._prompt_built:
            self._prompt_built = True
            layout = self.prompt_tab.layout()
            assert layout is not None
            layout.addWidget(self._build_prompt_tab())

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
        self._ensure_plot()
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
        self._ensure_plot()
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

    # -- a prompt through the model (a job: it loads the model) --------------------------
    def _build_prompt_tab(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        row = QHBoxLayout()
        self.prompt_edit = QLineEdit()
        self.prompt_edit.setObjectName("inspectPrompt")
        self.prompt_edit.setPlaceholderText("A prompt to run through the model…")
        self.prompt_edit.returnPressed.connect(lambda: self.run_prompt(self.prompt_edit.text()))
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 256)
        self.max_tokens.setValue(24)
        self.max_tokens.setPrefix("answer ≤ ")
        self.max_tokens.setSuffix(" tokens")
        self.run_btn = QPushButton("Run")
        self.run_btn.setToolTip(
            "Runs in a background job (see Jobs): the greedy answer coloured by probability "
            "(hover a token for the alternatives); for Hugging Face models also the logit lens "
            "and the attention maps"
        )
        self.run_btn.clicked.connect(lambda: self.run_prompt(self.prompt_edit.text()))
        self.cancel_probe_btn = QPushButton("Cancel")
        self.cancel_probe_btn.setEnabled(False)
        self.cancel_probe_btn.clicked.connect(self.cancel_prompt)
        row.addWidget(self.prompt_edit, 1)
        row.addWidget(self.max_tokens)
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_probe_btn)
        lay.addLayout(row)
        self.answer_view = QTextBrowser()
        self.answer_view.setObjectName("inspectAnswer")
        self.answer_view.setOpenLinks(False)
        self.answer_view.highlighted.connect(self._token_hovered)
        self.answer_view.setPlaceholderText(
            "The answer appears here, each token coloured by its probability."
        )
        self.lens_table = QTableWidget(0, 0)
        self.lens_table.setObjectName("inspectLens")
        self.lens_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        att = QWidget()
        al = QVBoxLayout(att)
        al.setContentsMargins(0, 0, 0, 0)
        arow = QHBoxLayout()
        self.att_layer = QSpinBox()
        self.att_layer.setPrefix("layer ")
        self.att_head = QSpinBox()
        self.att_head.setPrefix("head ")
        self.att_layer.valueChanged.connect(lambda _v: self.show_attention())
        self.att_head.valueChanged.connect(lambda _v: self.show_attention())
        arow.addWidget(QLabel("Attention"))
        arow.addWidget(self.att_layer)
        arow.addWidget(self.att_head)
        arow.addStretch(1)
        al.addLayout(arow)
        self.att_plot = pg.PlotWidget(background="w", enableMenu=False)
        self.att_plot.setObjectName("inspectAttention")
        self.att_image = pg.ImageItem(axisOrder="row-major")
        self.att_plot.addItem(self.att_image)
        self.att_plot.getPlotItem().getViewBox().invertY(True)
        self.att_plot.getPlotItem().setMenuEnabled(False)
        self.att_plot.setLabel("bottom", "attended position")
        self.att_plot.setLabel("left", "position")
        self.att_image.setColorMap(pg.colormap.get("viridis"))
        al.addWidget(self.att_plot, 1)
        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(self.lens_table)
        lower.addWidget(att)
        lower.setSizes([600, 400])
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.answer_view)
        split.addWidget(lower)
        split.setSizes([160, 420])
        lay.addWidget(split, 1)
        self.probe_status = StatusLine()
        self.probe_status.setObjectName("inspectProbeStatus")
        lay.addWidget(self.probe_status)
        return w

    def run_prompt(self, prompt: str) -> Job | None:
        """Start the ``models.inspect`` job with ``prompt``; the result shows when it ends."""
        prompt = prompt.strip()
        if not prompt or self.probe_job is not None:
            return None
        self._ensure_prompt()
        params = {
            "model": self.record.id,
            "stats": False,
            "prompt": prompt,
            "max_tokens": self.max_tokens.value(),
        }
        job = self.services.jobs.submit(
            "models.inspect", params, title=f"Prompt through {self.record.name}"
        )
        self.probe_job = job.id
        self.run_btn.setEnabled(False)
        self.cancel_probe_btn.setEnabled(True)
        self.probe_status.busy("Loading the model and running the prompt (a background job)…")
        self.services.hub.tick()
        return job

    def cancel_prompt(self) -> None:
        if self.probe_job is not None:
            self.services.supervisor.cancel(self.probe_job)
            self.services.hub.tick()

    def _job_events(self, job_id: str, events: list[dict[str, Any]]) -> None:
        if job_id != self.probe_job:
            return
        for ev in events:
            if ev.get("type") == "progress":
                fraction = ev.get("fraction")
                self.probe_status.progress(
                    float(fraction or 0.0),
                    1.0 if fraction is not None else None,
                    str(ev.get("message", "")),
                )

    def _jobs_changed(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.id != self.probe_job or job.state in (
                JobState.QUEUED,
                JobState.RUNNING,
                JobState.CANCELLING,
            ):
                continue
            self.probe_job = None
            self.run_btn.setEnabled(True)
            self.cancel_probe_btn.setEnabled(False)
            if job.state == JobState.SUCCEEDED and job.result:
                report_path = str(job.result.get("report", ""))
                self.services.actions.run(
                    self,
                    "Reading the result",
                    functools.partial(_load_probe, report_path),
                    status=self.probe_status,
                    done=self._show_probe,
                )
            elif job.state == JobState.CANCELLED:
                self.probe_status.ok("Cancelled.")
            else:
                self.probe_status.error(job.error or f"The job ended {job.state}.", job.hint or "")

    def _show_probe(self, loaded: tuple[dict[str, Any], np.ndarray | None]) -> None:
        probe, attention = loaded
        self.probe, self.attention = probe, attention
        e = html.escape
        parts = [f"<span style='color:gray'>{e(probe['prompt'])}</span>"]
        for i, t in enumerate(probe["answer"]):
            p = t["prob"] or 0.0
            parts.append(
                f"<a href='tok:{i}' style='text-decoration:none; color:black; "
                f"background-color:{_prob_colour(p)}'>{e(t['text']) or '∅'}</a>"
            )
        self.answer_view.setHtml("".join(parts))
        lens = probe.get("lens")
        positions = probe.get("positions") or []
        if lens:
            self.lens_table.clear()
            self.lens_table.setRowCount(lens["layers"])
            self.lens_table.setColumnCount(len(positions))
            self.lens_table.setHorizontalHeaderLabels([repr(t["text"])[1:-1] for t in positions])
            self.lens_table.setVerticalHeaderLabels(
                [f"layer {i + 1}" for i in range(lens["layers"])]
            )
            for r, row in enumerate(lens["rows"]):
                for c, cell in enumerate(row):
                    item = QTableWidgetItem(repr(cell["text"])[1:-1])
                    item.setBackground(QBrush(QColor(_prob_colour(cell["prob"]))))
                    item.setForeground(QBrush(QColor("black")))
                    item.setToolTip(f"{cell['text']!r}: {cell['prob']:.3f}")
                    self.lens_table.setItem(r, c, item)
        else:
            self.lens_table.setRowCount(0)
            self.lens_table.setColumnCount(0)
        if attention is not None:
            self.att_layer.setRange(0, attention.shape[0] - 1)
            self.att_head.setRange(0, attention.shape[1] - 1)
            self.show_attention()
        else:
            self.att_image.clear()
        note = probe.get("inside_unavailable")
        self.probe_status.ok(
            f"Answer of {len(probe['answer'])} tokens." + (f" {note}" if note else ""),
            clear_after_ms=0,
        )

    def show_attention(self) -> np.ndarray | None:
        """The attention map of the chosen layer and head (rows: positions; sum to 1)."""
        if self.attention is None:
            return None
        m: np.ndarray = np.asarray(
            self.attention[self.att_layer.value(), self.att_head.value()], dtype=np.float32
        )
        self.att_image.setImage(m, levels=(0.0, float(m.max()) or 1.0))
        self.att_plot.getPlotItem().getViewBox().autoRange(padding=0)
        return m

    def _token_hovered(self, url: QUrl) -> None:
        text = url.toString()
        if not text.startswith("tok:") or self.probe is None:
            QToolTip.hideText()
            return
        t = self.probe["answer"][int(text[4:])]
        lines = [f"{t['text']!r}: {t['prob']:.3f}" if t["prob"] is not None else repr(t["text"])]
        lines += [f"  {a['text']!r}: {a['prob']:.3f}" for a in t["top"]]
        QToolTip.showText(QCursor.pos(), "\n".join(lines), self.answer_view)


def _prob_colour(p: float) -> str:
    """Red (unlikely) to green (likely), light enough for black text."""
    p = min(1.0, max(0.0, p))
    r = int(255 - 90 * p)
    g = int(165 + 90 * p)
    return f"#{r:02x}{g:02x}a5"


def _load_probe(
    report_path: str, _progress: Progress | None = None
) -> tuple[dict[str, Any], np.ndarray | None]:
    """The probe section of a job's report and its attention array (off the UI thread)."""
    import json

    from app.core.inspect.probe import load_attention

    probe: dict[str, Any] = json.loads(Path(report_path).read_text("utf-8"))["probe"]
    att = probe.get("attention") or {}
    array = load_attention(att["file"]) if att.get("file") else None
    return probe, array
