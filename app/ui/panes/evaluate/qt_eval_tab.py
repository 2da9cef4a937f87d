"""The Evaluate tab: set up an eval run, follow its job, read and compare the results.

Runs are ``eval.run`` jobs (worker processes); this tab only validates the
setup, submits, and reads what :class:`EvalStore` has stored.
"""

from __future__ import annotations

import math
import time
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.data.store import DatasetStore
from app.core.errors import DemoAIError
from app.core.eval.judge import DEFAULT_RUBRIC
from app.core.eval.metrics import get_metric, metrics
from app.core.eval.runner import EvalConfig, EvalRun, EvalStore, submit_eval, validate_eval
from app.core.jobs.store import Job, JobState
from app.core.models.registry import ModelRegistry
from app.ui.qt_errors import show_error
from app.ui.services import Services

KIND = "eval.run"
NONE = "(none)"
DEFAULT_METRICS = ("exact_match", "f1")
_INPUT_GUESS = ("input", "question", "prompt", "instruction", "text")
_REF_GUESS = (
    "reference", "answer", "output", "target", "label", "completion", "response",
    "expected", "gold", "ground_truth", "solution", "truth", "chosen",
)  # fmt: skip


def guess_column(columns: list[str], names: tuple[str, ...], avoid: str = "") -> str | None:
    """The column a user most likely means: an exact name first (case-insensitive, in the
    order of ``names``), then a column whose name contains one (``expected_answer``)."""
    low = {c.lower(): c for c in columns if c != avoid}
    for name in names:
        if name in low:
            return low[name]
    for name in names:
        for key, col in low.items():
            if name in key:
                return col
    return None


_TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED)


def fmt_num(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{float(v):.3f}"


def fmt_ci(lo: Any, hi: Any) -> str:
    if lo is None or hi is None:
        return "—"
    return f"[{float(lo):.3f}, {float(hi):.3f}]"


def num_item(v: Any) -> QTableWidgetItem:
    """A table cell that sorts numerically (missing values sort as -inf)."""
    item = QTableWidgetItem()
    if v is None:
        item.setData(Qt.ItemDataRole.DisplayRole, "—")
    else:
        item.setData(Qt.ItemDataRole.DisplayRole, round(float(v), 4))
    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
    return item


def text_item(text: Any, tip: str | None = None) -> QTableWidgetItem:
    s = "" if text is None else str(text)
    item = QTableWidgetItem(s.replace("\n", " ⏎ ")[:300])
    item.setToolTip(tip if tip is not None else s[:2000])
    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
    return item


def run_label(run: Any) -> str:
    """What a person reads for an eval run: its name, else when it was started."""
    return run.name or time.strftime("%d %b %H:%M", time.localtime(run.created_at))


def table(headers: list[str], name: str) -> QTableWidget:
    t = QTableWidget(0, len(headers))
    t.setObjectName(name)
    t.setHorizontalHeaderLabels(headers)
    t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    t.verticalHeader().setVisible(False)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    t.horizontalHeader().setStretchLastSection(True)
    # Rows stay in the order they are filled (worst first, by model) until the user clicks a
    # header: Qt's default indicator (column 0, descending) re-sorted every fill by name, Z-A.
    t.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
    return t


def checkable(
    list_widget: QListWidget, label: str, data: Any, checked: bool, tip: str = ""
) -> None:
    item = QListWidgetItem(label)
    item.setData(Qt.ItemDataRole.UserRole, data)
    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
    item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
    if tip:
        item.setToolTip(tip)
    list_widget.addItem(item)


def checked_data(list_widget: QListWidget) -> list[Any]:
    out = []
    for i in range(list_widget.count()):
        it = list_widget.item(i)
        if it.checkState() == Qt.CheckState.Checked:
            out.append(it.data(Qt.ItemDataRole.UserRole))
    return out


def set_checked(list_widget: QListWidget, values: list[Any]) -> None:
    for i in range(list_widget.count()):
        it = list_widget.item(i)
        on = it.data(Qt.ItemDataRole.UserRole) in values
        it.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)


class BarChart(QWidget):
    """Grouped bars (one group per label, one colour per series) with a legend.

    pyqtgraph is imported here, on first use: the pane module loads only when shown.
    """

    COLOURS = ("#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#14b8a6", "#ec4899")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import pyqtgraph as pg

        self._pg = pg
        self.plot = pg.PlotWidget()
        self.plot.setObjectName("evalChart")
        self.plot.showGrid(y=True, alpha=0.3)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.setBackground(self.palette().color(self.backgroundRole()))
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen(self.palette().color(self.foregroundRole()))
        self.legend = self.plot.addLegend(offset=(10, 10))
        self.items: list[Any] = []
        self._shown: Any = None
        self.whiskers: list[Any] = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.plot)

    def set_data(
        self,
        labels: list[str],
        series: dict[str, list[float | None]],
        cis: dict[str, list[tuple[float | None, float | None]]] | None = None,
    ) -> None:
        """Bars; ``cis`` (per series, per label: (low, high)) adds a whisker to each bar."""
        shown = (list(labels), {k: list(v) for k, v in series.items()}, cis)
        if shown == self._shown:
            return  # redrawn on every job tick otherwise (pyqtgraph: ~100 ms on a busy machine)
        self._shown = shown
        pg = self._pg
        self.plot.clear()
        self.legend.clear()
        self.items = []
        self.whiskers = []
        n = max(1, len(series))
        width = 0.8 / n
        for k, (name, values) in enumerate(series.items()):
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(labels))]
            ys = [0.0 if v is None else float(v) for v in values]
            bar = pg.BarGraphItem(
                x=xs, height=ys, width=width * 0.9, brush=self.COLOURS[k % len(self.COLOURS)]
            )
            self.plot.addItem(bar)
            self.legend.addItem(bar, name)
            self.items.append(bar)
            ci = (cis or {}).get(name)
            if ci:
                pts = [
                    (x, y, lo, hi)
                    for x, y, (lo, hi) in zip(xs, ys, ci, strict=False)
                    if lo is not None and hi is not None
                ]
                if pts:
                    import numpy as np

                    arr = np.asarray(pts, dtype=float)  # pyqtgraph does arithmetic on them
                    whisker = pg.ErrorBarItem(
                        x=arr[:, 0],
                        y=arr[:, 1],
                        top=arr[:, 3] - arr[:, 1],
                        bottom=arr[:, 1] - arr[:, 2],
                        beam=width * 0.4,
                        pen=self.palette().color(self.foregroundRole()),
                    )
                    self.plot.addItem(whisker)
                    self.whiskers.append(whisker)
        self.plot.getAxis("bottom").setTicks([list(enumerate(labels))])
        if labels:
            self.plot.setXRange(-0.6, len(labels) - 0.4, padding=0)


class EvalTab(QWidget):
    """Setup on the left; runs, aggregates, chart, samples and comparison on the right."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.ws = services.workspace
        self.registry = ModelRegistry(self.ws)
        self.datasets = DatasetStore(self.ws)
        self.store = EvalStore(self.ws)
        self.job_id: str | None = None
        self.run: EvalRun | None = None
        self._states: dict[str, str] = {}

        # -- setup form
        self.models = QListWidget()
        self.models.setObjectName("evalModels")
        self.models.setMaximumHeight(110)
        self.models_hint = QLabel(
            "No model yet: import a GGUF file or a Hugging Face folder in the Models pane."
        )
        self.models_hint.setWordWrap(True)
        self.datasets_hint = QLabel(
            "No dataset yet: import or create one in the Datasets pane. It needs an input "
            "column and, for most metrics, a reference column."
        )
        self.datasets_hint.setWordWrap(True)
        self.dataset = QComboBox()
        self.dataset.setObjectName("evalDataset")
        self.version = QComboBox()
        self.version.setObjectName("evalVersion")
        self.input_col = QComboBox()
        self.ref_col = QComboBox()
        self.prompt = QLineEdit("{input}")
        self.prompt.setToolTip("The prompt; {input} is the input column, {COLUMN} any column.")
        self.chat = QCheckBox("Use the chat template")
        self.chat.setToolTip("Wrap each prompt as a user message in the model's chat template.")
        self.metrics = QListWidget()
        self.metrics.setObjectName("evalMetrics")
        self.metrics.setMaximumHeight(150)
        for spec in metrics():
            if spec.name == "corpus_perplexity":  # a whole text, not per sample: its own runs
                continue
            checkable(
                self.metrics, spec.name, spec.name, spec.name in DEFAULT_METRICS, spec.description
            )
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 8192)
        self.max_tokens.setValue(64)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.05)
        self.temperature.setValue(0.0)
        self.temperature.setToolTip("0 always picks the likeliest token: repeatable results.")
        self.limit = QSpinBox()
        self.limit.setRange(0, 10_000_000)
        self.limit.setSpecialValueText("all rows")
        self.limit.setToolTip("Evaluate the first N rows only (0 = all).")
        self.judge = QComboBox()
        self.judge.setObjectName("evalJudge")
        self.rubric = QPlainTextEdit(DEFAULT_RUBRIC)
        self.rubric.setMaximumHeight(80)
        self.rubric.setToolTip("What the judge model is asked to score (1..5).")
        self.rubric_btn = QPushButton("Rubric from library…")
        self.rubric_btn.setToolTip("Use a prompt from the library as the judge's rubric.")
        self.rubric_btn.clicked.connect(self.pick_rubric)
        self.prompt_picker: QWidget | None = None
        self.name = QLineEdit()
        self.name.setPlaceholderText("optional run name")
        self.error = QLabel("")
        self.error.setObjectName("evalError")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #c0392b")
        self.error.hide()
        self.run_btn = QPushButton("Run")
        self.run_btn.setObjectName("evalRun")
        self.ppl_ctx = QSpinBox()
        self.ppl_ctx.setObjectName("evalPplCtx")
        self.ppl_ctx.setRange(16, 32768)
        self.ppl_ctx.setValue(512)
        self.ppl_ctx.setToolTip(
            "Window in tokens for corpus perplexity (llama.cpp-style: the second half of each "
            "window is scored). The column needs at least two windows of text."
        )
        self.ppl_btn = QPushButton("Corpus perplexity")
        self.ppl_btn.setObjectName("evalPerplexity")
        self.ppl_btn.setToolTip(
            "Perplexity of the whole input column (its rows joined) for each checked model, "
            "with a 95% CI over windows. Lower is better."
        )
        self.cancel_btn = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.status = QLabel("")
        self.status.setObjectName("evalStatus")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Models", self.models)
        form.addRow("", self.models_hint)
        form.addRow("Dataset", self.dataset)
        form.addRow("", self.datasets_hint)
        form.addRow("Version", self.version)
        form.addRow("Input column", self.input_col)
        form.addRow("Reference column", self.ref_col)
        form.addRow("Prompt", self.prompt)
        form.addRow("", self.chat)
        form.addRow("Metrics", self.metrics)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Temperature", self.temperature)
        form.addRow("Rows", self.limit)
        form.addRow("Judge model", self.judge)
        form.addRow("Rubric", self.rubric)
        form.addRow("", self.rubric_btn)
        form.addRow("Name", self.name)
        form.addRow("Perplexity window", self.ppl_ctx)
        setup = QWidget()
        sl = QVBoxLayout(setup)
        sl.addLayout(form)
        sl.addStretch(1)
        self.setup_scroll = QScrollArea()
        self.setup_scroll.setWidgetResizable(True)
        self.setup_scroll.setWidget(setup)
        # Run, its error and the progress stay under the scrolling form, always in view:
        # an error drawn below the fold made Run look as if it did nothing.
        setup_col = QWidget()
        setup_col.setMinimumWidth(300)
        scl = QVBoxLayout(setup_col)
        scl.setContentsMargins(0, 0, 0, 0)
        scl.addWidget(self.setup_scroll, 1)
        scl.addWidget(self.error)
        brow = QHBoxLayout()
        brow.addWidget(self.run_btn)
        brow.addWidget(self.ppl_btn)
        brow.addWidget(self.cancel_btn)
        scl.addLayout(brow)
        scl.addWidget(self.progress)
        scl.addWidget(self.status)

        # -- runs and results
        self.runs = table(["Run", "State", "Dataset", "Models", "Metrics"], "evalRuns")
        self.runs.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.compare_btn = QPushButton("Compare 2 selected")
        self.export_csv_btn = QPushButton("Export CSV…")
        self.export_json_btn = QPushButton("Export JSON…")
        self.delete_btn = QPushButton("Delete run")
        runs_box = QWidget()
        rl = QVBoxLayout(runs_box)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(QLabel("<b>Runs</b>"))
        rl.addWidget(self.runs, 1)
        rrow = QHBoxLayout()
        for b in (self.compare_btn, self.export_csv_btn, self.export_json_btn, self.delete_btn):
            rrow.addWidget(b)
        rrow.addStretch(1)
        rl.addLayout(rrow)

        self.aggregates = table(["Model", "Metric", "Value", "95% CI", "n", "Errors"], "evalAggs")
        self.chart = BarChart()
        summary = QSplitter(Qt.Orientation.Vertical)
        summary.addWidget(self.aggregates)
        summary.addWidget(self.chart)
        self.run_info = QLabel("")
        self.run_info.setWordWrap(True)
        self.run_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        summary_box = QWidget()
        sbl = QVBoxLayout(summary_box)
        sbl.setContentsMargins(0, 0, 0, 0)
        sbl.addWidget(self.run_info)
        sbl.addWidget(summary, 1)

        self.sample_model = QComboBox()
        self.sort_by = QComboBox()
        self.worst_first = QCheckBox("Worst first")
        self.worst_first.setChecked(True)
        self.samples = table([], "evalSamples")
        samples_box = QWidget()
        sml = QVBoxLayout(samples_box)
        sml.setContentsMargins(0, 0, 0, 0)
        srow = QHBoxLayout()
        srow.addWidget(QLabel("Model"))
        srow.addWidget(self.sample_model, 1)
        srow.addWidget(QLabel("Sort by"))
        srow.addWidget(self.sort_by, 1)
        srow.addWidget(self.worst_first)
        sml.addLayout(srow)
        sml.addWidget(self.samples, 1)

        self.compare = table(["Model", "Metric", "Run A", "Run B", "B − A"], "evalCompare")
        self.compare_info = QLabel("Select two runs in the list and press Compare.")
        self.compare_info.setWordWrap(True)
        compare_box = QWidget()
        cl = QVBoxLayout(compare_box)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.addWidget(self.compare_info)
        cl.addWidget(self.compare, 1)

        self.results = QTabWidget()
        self.results.addTab(summary_box, "Summary")
        self.results.addTab(samples_box, "Samples")
        self.results.addTab(compare_box, "Compare")
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(runs_box)
        right.addWidget(self.results)
        right.setSizes([200, 500])

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(setup_col)
        split.addWidget(right)
        split.setSizes([340, 800])
        QVBoxLayout(self).addWidget(split)

        # -- wiring
        self.dataset.currentIndexChanged.connect(self._dataset_changed)
        self.version.currentIndexChanged.connect(self._version_changed)
        self.run_btn.clicked.connect(self.start_run)
        self.ppl_btn.clicked.connect(self.start_perplexity)
        self.cancel_btn.clicked.connect(self.cancel_run)
        self.runs.itemSelectionChanged.connect(self._run_selected)
        self.compare_btn.clicked.connect(self.compare_selected)
        self.export_csv_btn.clicked.connect(lambda: self.export("csv"))
        self.export_json_btn.clicked.connect(lambda: self.export("json"))
        self.delete_btn.clicked.connect(self.delete_selected)
        self.sample_model.currentIndexChanged.connect(self.refresh_samples)
        self.sort_by.currentIndexChanged.connect(self.refresh_samples)
        self.worst_first.toggled.connect(self.refresh_samples)
        services.hub.jobs_changed.connect(self._jobs_changed)
        services.hub.job_events.connect(self._job_events)
        services.bus.models_changed.connect(self.refresh_models)
        services.bus.changed.connect(self._workspace_changed)

        self.refresh_models()
        self.refresh_datasets()
        self.refresh_runs()
        self._set_running(False)

    # -- setup ------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        chosen = set(checked_data(self.models))
        judge = self.judge.currentData()
        self.models.clear()
        self.judge.clear()
        self.judge.addItem("(no judge)", None)
        for m in self.registry.list():
            if m.format in ("gguf", "hf", "lora"):
                label = f"{m.name}  ({m.format})"
                checkable(self.models, label, m.id, m.id in chosen, str(m.path))
                self.judge.addItem(label, m.id)
        if judge is not None and (i := self.judge.findData(judge)) >= 0:
            self.judge.setCurrentIndex(i)
        self.models_hint.setVisible(self.models.count() == 0)

    def _workspace_changed(self, topics: frozenset[str]) -> None:
        """Datasets or versions made elsewhere appear; the choices made here are kept."""
        if not topics & {"datasets", "versions"}:
            return
        try:
            have = [(d.id, d.name) for d in self.datasets.list_datasets()]
        except DemoAIError:
            return
        shown = [
            (self.dataset.itemData(i), self.dataset.itemText(i))
            for i in range(self.dataset.count())
        ]
        ds_id = self.dataset.currentData()
        versions_shown = [self.version.itemData(i) for i in range(self.version.count())]
        try:
            versions = [v.hash for v in reversed(self.datasets.versions(ds_id))] if ds_id else []
        except DemoAIError:
            versions = []
        if have != shown or versions != versions_shown:
            ver = self.version.currentData()
            inp, ref = self.input_col.currentText(), self.ref_col.currentText()
            self.refresh_datasets()
            if self.dataset.currentData() == ds_id:
                if ver is not None and (i := self.version.findData(ver)) >= 0:
                    self.version.setCurrentIndex(i)
                if self.input_col.findText(inp) >= 0:
                    self.input_col.setCurrentText(inp)
                if self.ref_col.findText(ref) >= 0:
                    self.ref_col.setCurrentText(ref)

    def refresh_datasets(self) -> None:
        current = self.dataset.currentData()
        self.dataset.blockSignals(True)
        self.dataset.clear()
        for ds in self.datasets.list_datasets():
            self.dataset.addItem(ds.name, ds.id)
        if current is not None and (i := self.dataset.findData(current)) >= 0:
            self.dataset.setCurrentIndex(i)
        self.dataset.blockSignals(False)
        self.datasets_hint.setVisible(self.dataset.count() == 0)
        self._dataset_changed()

    def _dataset_changed(self, *_: Any) -> None:
        self.version.blockSignals(True)
        self.version.clear()
        ds_id = self.dataset.currentData()
        if ds_id is not None:
            try:
                ds = self.datasets.get(ds_id)
                versions = self.datasets.versions(ds_id)
                for n, v in reversed(list(enumerate(versions, 1))):
                    mark = " · current" if v.hash == ds.current_version else ""
                    self.version.addItem(f"v{n} · {v.rows:,} rows{mark}", v.hash)
                    tip = f"{v.message or 'version'} ({v.short})"
                    self.version.setItemData(
                        self.version.count() - 1, tip, Qt.ItemDataRole.ToolTipRole
                    )
                if ds.current_version and (i := self.version.findData(ds.current_version)) >= 0:
                    self.version.setCurrentIndex(i)
            except DemoAIError as exc:
                self._show_error(str(exc))
        self.version.blockSignals(False)
        self._version_changed()

    def _version_changed(self, *_: Any) -> None:
        cols: list[str] = []
        ds_id, ver = self.dataset.currentData(), self.version.currentData()
        if ds_id is not None and ver is not None:
            try:
                cols = [c["name"] for c in self.datasets.version(ds_id, ver).schema]
            except DemoAIError as exc:
                self._show_error(str(exc))
        self.input_col.clear()
        self.input_col.addItems(cols)
        self.ref_col.clear()
        self.ref_col.addItem(NONE)
        self.ref_col.addItems(cols)
        inp = guess_column(cols, _INPUT_GUESS) or (cols[0] if cols else "")
        self.input_col.setCurrentText(inp)
        self.ref_col.setCurrentText(guess_column(cols, _REF_GUESS, avoid=inp) or NONE)

    def select_models(self, model_ids: list[str]) -> None:
        set_checked(self.models, model_ids)

    def select_dataset(self, dataset_id: str) -> None:
        self.refresh_datasets()
        i = self.dataset.findData(dataset_id)
        if i >= 0:
            self.dataset.setCurrentIndex(i)

    def pick_rubric(self) -> QWidget:
        """Open the prompt picker; the rendered prompt replaces the judge rubric."""
        from app.ui.qt_prompt_picker import open_prompt_picker

        self.prompt_picker = open_prompt_picker(
            self, self.ws.db, self.rubric.setPlainText,
            title="Judge rubric from the library", action="Use as rubric",
        )  # fmt: skip
        return self.prompt_picker

    def select_metrics(self, names: list[str]) -> None:
        set_checked(self.metrics, names)

    def config(self) -> EvalConfig:
        """The setup as an EvalConfig (raises ConfigError for a bad setup)."""
        ds_id, ver = self.dataset.currentData(), self.version.currentData()
        if ds_id is None:
            raise DemoAIError("Choose a dataset (create or import one in the Datasets pane).")
        chosen_metrics = checked_data(self.metrics)
        judge = self.judge.currentData()
        if judge and "judge" not in chosen_metrics:
            chosen_metrics.append("judge")
        ref = self.ref_col.currentText()
        return EvalConfig(
            models=checked_data(self.models),
            dataset=f"{ds_id}@{ver}" if ver else ds_id,
            input_column=self.input_col.currentText(),
            reference_column=None if ref in ("", NONE) else ref,
            metrics=chosen_metrics,
            prompt_template=self.prompt.text() or "{input}",
            chat=self.chat.isChecked(),
            temperature=round(self.temperature.value(), 3),
            max_tokens=self.max_tokens.value(),
            judge_model=judge,
            rubric=self.rubric.toPlainText().strip() or DEFAULT_RUBRIC,
            limit=self.limit.value() or None,
            name=self.name.text().strip(),
        )

    def start_run(self) -> Job | None:
        """Validate (errors shown here, nothing started), then submit the ``eval.run`` job."""
        self.error.hide()
        try:
            cfg = self.config()
            info = validate_eval(self.ws, cfg)
        except DemoAIError as exc:
            self._show_error(exc.message + (f" {exc.hint}" if exc.hint else ""))
            return None
        try:
            job = submit_eval(self.ws, cfg)
        except DemoAIError as exc:
            show_error(self, "Evaluate", exc)
            return None
        self.job_id = job.id
        self.progress.setValue(0)
        self.status.setText(
            f"Queued: {len(cfg.models)} model(s) × {cfg.limit or info['rows']} rows. "
            "Progress also shows in the Jobs pane."
        )
        self._set_running(True)
        self.refresh_runs(select=job.id)  # the hub's next tick (250 ms) starts and follows it
        return job

    def perplexity_config(self) -> Any:
        """The setup as a corpus perplexity config: checked models, the input column."""
        from app.core.eval.corpus import PerplexityConfig

        ds_id, ver = self.dataset.currentData(), self.version.currentData()
        if ds_id is None:
            raise DemoAIError("Choose a dataset (create or import one in the Datasets pane).")
        if not self.input_col.currentText():
            raise DemoAIError("Choose the input column: its text is what is scored.")
        return PerplexityConfig(
            models=checked_data(self.models),
            dataset=f"{ds_id}@{ver}" if ver else ds_id,
            column=self.input_col.currentText(),
            n_ctx=self.ppl_ctx.value(),
            name=self.name.text().strip(),
        )

    def start_perplexity(self) -> None:
        """Check the text's length off the UI thread (it is tokenized), then submit the job."""
        from app.core.eval.corpus import submit_perplexity

        self.error.hide()
        try:
            cfg = self.perplexity_config()
        except DemoAIError as exc:
            self._show_error(exc.message + (f" {exc.hint}" if exc.hint else ""))
            return
        ws = self.ws
        self.run_btn.setEnabled(False)
        self.ppl_btn.setEnabled(False)
        self.status.setText("Checking the text…")

        def done(job: Job) -> None:
            self.job_id = job.id
            self.progress.setValue(0)
            self.status.setText(
                f"Queued: corpus perplexity of {len(cfg.models)} model(s). "
                "Progress also shows in the Jobs pane."
            )
            self._set_running(True)
            self.refresh_runs(select=job.id)

        def failed(exc: BaseException) -> None:
            self._set_running(False)
            self.status.setText("")
            if isinstance(exc, DemoAIError):
                self._show_error(exc.message + (f" {exc.hint}" if exc.hint else ""))
            else:
                self._show_error(f"Could not start: {exc}")

        self.services.actions.run(
            self, "Check corpus", lambda _p: submit_perplexity(ws, cfg), done=done, failed=failed
        )

    def cancel_run(self) -> None:
        if self.job_id is None:
            return
        try:
            self.services.supervisor.cancel(self.job_id)
        except DemoAIError as exc:
            show_error(self, "Evaluate", exc)
        self.status.setText("Cancelling… the samples done so far are kept.")
        self.services.hub.tick()

    def _show_error(self, text: str) -> None:
        self.error.setText(text)
        self.error.show()

    def _set_running(self, running: bool) -> None:
        self.run_btn.setEnabled(not running)
        self.ppl_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        self.progress.setVisible(running or self.progress.value() > 0)

    # -- job tracking -------------------------------------------------------------------------
    def _job_events(self, job_id: str, events: list[dict[str, Any]]) -> None:
        if job_id != self.job_id:
            return
        for ev in events:
            if ev.get("type") == "progress":
                frac = ev.get("fraction")
                if frac is None:
                    self.progress.setRange(0, 0)
                else:
                    self.progress.setRange(0, 1000)
                    self.progress.setValue(round(float(frac) * 1000))
                if ev.get("message"):
                    self.status.setText(str(ev["message"]))

    def _jobs_changed(self, jobs: list[Job]) -> None:
        evals = [j for j in jobs if j.kind == KIND]
        if not evals:
            return
        for job in evals:
            if job.id != self.job_id:
                continue
            if job.progress is not None:
                self.progress.setRange(0, 1000)
                self.progress.setValue(round(job.progress * 1000))
            if job.state in _TERMINAL:
                self.job_id = None
                self._set_running(False)
                self.progress.setRange(0, 1000)
                if job.state == JobState.SUCCEEDED:
                    self.progress.setValue(1000)
                    self.status.setText("Done.")
                else:
                    msg = job.error or f"The run ended: {job.state}."
                    self.status.setText(
                        f"{job.state}: {msg}" + (f" {job.hint}" if job.hint else "")
                    )
        # the list (and the shown run) only change with a state; progress alone does not
        moved = [j for j in evals if self._states.get(j.id) != j.state]
        for j in evals:
            self._states[j.id] = j.state
        if moved:
            selected = self.selected_runs()
            self.refresh_runs(select=selected[0] if len(selected) == 1 else None)

    # -- runs ---------------------------------------------------------------------------------
    def refresh_runs(self, select: str | None = None) -> None:
        self.runs.blockSignals(True)
        self.runs.setRowCount(0)
        names = {m.id: m.name for m in self.registry.list()}
        row_to_select = -1
        for run in self.store.list_runs():
            r = self.runs.rowCount()
            self.runs.insertRow(r)
            label = run_label(run)
            first = text_item(label, run.id)
            first.setData(Qt.ItemDataRole.UserRole, run.id)
            self.runs.setItem(r, 0, first)
            self.runs.setItem(r, 1, text_item(run.state))
            self.runs.setItem(r, 2, text_item(self._dataset_label(run.dataset_ref)))
            self.runs.setItem(r, 3, text_item(", ".join(names.get(m, m) for m in run.models)))
            self.runs.setItem(r, 4, text_item(", ".join(run.metrics)))
            if run.id == select:
                row_to_select = r
        self.runs.resizeColumnsToContents()
        self.runs.blockSignals(False)
        if row_to_select >= 0:
            self.runs.selectRow(row_to_select)
            self.show_run(select)

    def _dataset_label(self, ref: str) -> str:
        """'name v2' (the version's number as the Datasets pane shows it), never hashes."""
        ds, _, ver = ref.partition("@")
        try:
            name = self.datasets.get(ds).name
            hashes = [v.hash for v in self.datasets.versions(ds)]
        except DemoAIError:
            return ref
        n = next((i for i, h in enumerate(hashes, 1) if ver and h.startswith(ver)), None)
        return f"{name} v{n}" if n else name

    def selected_runs(self) -> list[str]:
        rows = sorted({i.row() for i in self.runs.selectedIndexes()})
        out = []
        for r in rows:
            item = self.runs.item(r, 0)
            if item is not None:
                out.append(item.data(Qt.ItemDataRole.UserRole))
        return out

    def _run_selected(self) -> None:
        sel = self.selected_runs()
        self.compare_btn.setEnabled(len(sel) == 2)
        if len(sel) == 1:
            self.show_run(sel[0])
        elif len(sel) == 2:
            self.compare_selected()

    def show_run(self, run_id: str | None) -> None:
        """Aggregates (table + chart) and samples of one run."""
        if run_id is None:
            return
        try:
            run = self.run = self.store.get_run(run_id)
        except DemoAIError:
            return
        names = {m.id: m.name for m in self.registry.list()}
        agg = (run.summary or {}).get("aggregates") or self.store.aggregates(run.id, n_boot=200)
        self.aggregates.setSortingEnabled(False)
        self.aggregates.setRowCount(0)
        for model, per in agg.items():
            for metric, a in per.items():
                r = self.aggregates.rowCount()
                self.aggregates.insertRow(r)
                self.aggregates.setItem(r, 0, text_item(names.get(model, model), model))
                spec_tip = get_metric(metric).description
                self.aggregates.setItem(r, 1, text_item(metric, spec_tip))
                self.aggregates.setItem(r, 2, num_item(a.get("value")))
                self.aggregates.setItem(r, 3, text_item(fmt_ci(a.get("ci_low"), a.get("ci_high"))))
                self.aggregates.setItem(r, 4, num_item(a.get("n")))
                self.aggregates.setItem(r, 5, num_item(a.get("errors")))
        self.aggregates.resizeColumnsToContents()
        self.aggregates.setSortingEnabled(True)
        # chart: one group per metric, one series per model
        labels = list(run.metrics)
        series = {
            names.get(model, model): [per.get(m, {}).get("value") for m in labels]
            for model, per in agg.items()
        }
        cis = {
            names.get(model, model): [
                (per.get(m, {}).get("ci_low"), per.get(m, {}).get("ci_high")) for m in labels
            ]
            for model, per in agg.items()
        }
        self.chart.set_data(labels, series, cis)
        info = [
            f"<b>{run.name or run.id}</b> · {run.state}",
            f"dataset {self._dataset_label(run.dataset_ref)}",
        ]
        cfg = run.config
        if cfg.get("task") == "corpus_perplexity":
            info.append(f"corpus perplexity ({cfg.get('method')}, window {cfg.get('n_ctx')})")
        else:
            info.append(f"max tokens {cfg.get('max_tokens')}, temperature {cfg.get('temperature')}")
        if run.errors:
            info.append("errors: " + "; ".join(f"{m}: {e}" for m, e in run.errors.items()))
        self.run_info.setText(" · ".join(info))
        # samples controls
        self.sample_model.blockSignals(True)
        self.sort_by.blockSignals(True)
        self.sample_model.clear()
        self.sample_model.addItem("(all models)", None)
        for model in agg:
            self.sample_model.addItem(names.get(model, model), model)
        self.sort_by.clear()
        self.sort_by.addItem("(row order)", None)
        for m in run.metrics:
            self.sort_by.addItem(m, m)
        if run.metrics:
            self.sort_by.setCurrentIndex(1)
        self.sample_model.blockSignals(False)
        self.sort_by.blockSignals(False)
        self.refresh_samples()

    def refresh_samples(self, *_: Any) -> None:
        run = self.run
        if run is None:
            return
        metric = self.sort_by.currentData()
        ascending = True
        if metric is not None:
            higher = get_metric(metric).higher_is_better
            ascending = higher if self.worst_first.isChecked() else not higher
        rows = self.store.samples(
            run.id, self.sample_model.currentData(), sort_by=metric, ascending=ascending, limit=2000
        )
        heads = ["Model", "#", "Input", "Prediction", "Reference", *run.metrics, "Error"]
        self.samples.setSortingEnabled(False)
        self.samples.clear()
        self.samples.setColumnCount(len(heads))
        self.samples.setHorizontalHeaderLabels(heads)
        self.samples.setRowCount(len(rows))
        names = {m.id: m.name for m in self.registry.list()}
        for r, s in enumerate(rows):
            self.samples.setItem(r, 0, text_item(names.get(s.model_id, s.model_id), s.model_id))
            self.samples.setItem(r, 1, num_item(s.idx))
            self.samples.setItem(r, 2, text_item(s.input))
            self.samples.setItem(r, 3, text_item(s.prediction))
            self.samples.setItem(r, 4, text_item(s.reference))
            for k, m in enumerate(run.metrics):
                self.samples.setItem(r, 5 + k, num_item(s.scores.get(m)))
            self.samples.setItem(r, 5 + len(run.metrics), text_item(s.error))
        self.samples.resizeColumnsToContents()
        for c in (2, 3, 4):
            self.samples.setColumnWidth(c, min(self.samples.columnWidth(c), 260))
        self.samples.setSortingEnabled(True)  # header clicks sort by any column

    def compare_selected(self) -> None:
        sel = self.selected_runs()
        if len(sel) != 2:
            self.compare_info.setText("Select exactly two runs to compare.")
            return
        a, b = sel
        try:
            rows = self.store.compare([a, b])
        except DemoAIError as exc:
            show_error(self, "Compare runs", exc)
            return
        names = {m.id: m.name for m in self.registry.list()}
        by: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for row in rows:
            by.setdefault((row["model"], row["metric"]), {})[row["run_id"]] = row
        self.compare.setSortingEnabled(False)
        self.compare.setRowCount(0)
        labels: list[str] = []
        va: list[float | None] = []
        vb: list[float | None] = []
        for (model, metric), per in by.items():
            ra, rb = per.get(a, {}), per.get(b, {})
            r = self.compare.rowCount()
            self.compare.insertRow(r)
            self.compare.setItem(r, 0, text_item(names.get(model, model), model))
            self.compare.setItem(r, 1, text_item(metric))
            for col, x in ((2, ra), (3, rb)):
                txt = (
                    f"{fmt_num(x.get('value'))} {fmt_ci(x.get('ci_low'), x.get('ci_high'))}"
                    if x
                    else "—"
                )
                self.compare.setItem(r, col, text_item(txt))
            delta = (
                rb["value"] - ra["value"]
                if ra.get("value") is not None and rb.get("value") is not None
                else None
            )
            self.compare.setItem(r, 4, num_item(delta))
            labels.append(f"{names.get(model, model)}\n{metric}")
            va.append(ra.get("value"))
            vb.append(rb.get("value"))
        self.compare.resizeColumnsToContents()
        self.compare.setSortingEnabled(True)
        ra_, rb_ = self.store.get_run(a), self.store.get_run(b)
        na, nb = run_label(ra_), run_label(rb_)
        self.compare_info.setText(f"Run A: {na} · Run B: {nb}")
        self.chart.set_data(labels, {f"A: {na}": va, f"B: {nb}": vb})
        self.results.setCurrentIndex(2)

    def export(self, fmt: str, path: str | None = None) -> str | None:
        """Export the selected run (samples as CSV, or everything as JSON)."""
        sel = self.selected_runs()
        if not sel:
            return None
        run_id = sel[0]
        if not path:
            filt = "CSV (*.csv)" if fmt == "csv" else "JSON (*.json)"
            path, _ = QFileDialog.getSaveFileName(
                self, "Export eval run", f"eval-{run_id[:12]}.{fmt}", filt
            )
        if not path:
            return None
        try:
            self.store.export(run_id, path, fmt)
        except DemoAIError as exc:
            show_error(self, "Export", exc)
            return None
        self.status.setText(f"Exported to {path}")
        return path

    def delete_selected(self) -> None:
        sel = self.selected_runs()
        if not sel:
            return
        answer = QMessageBox.question(
            self, "Delete runs", f"Delete {len(sel)} eval run(s) and their samples?"
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        for rid in sel:
            run = self.store.get_run(rid)
            if run.job_id and run.job_id == self.job_id:
                continue  # never delete the run in progress
            self.store.delete_run(rid)
        self.run = None
        self.aggregates.setRowCount(0)
        self.samples.setRowCount(0)
        self.refresh_runs()
