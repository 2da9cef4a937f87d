"""The Export pane: choose a model, a target and options; follow the job; see every export.

Exports run as jobs (``export.gguf``, ``export.docker``, ``export.package``) in
worker processes; this pane only submits them, follows their events through
``services.hub`` and reads the ``exports`` table (:class:`ExportStore`). The
Docker engine check runs a subprocess, so it runs off the UI thread.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any, ClassVar

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import DemoAIError, NotFoundError
from app.core.export.docker import LOCAL_BASE_IMAGE, default_base_image, docker_available
from app.core.export.gguf import QUANT_TYPES
from app.core.export.records import ExportRecord, ExportStore
from app.core.export.verify import THRESHOLDS
from app.core.format import human_size, relative_time
from app.core.jobs.store import FINAL_STATES, Job, JobState
from app.core.models.registry import ModelRecord, ModelRegistry, slugify
from app.ui.qt_errors import show_error
from app.ui.qt_open import open_folder
from app.ui.services import Services

#: Targets: key -> (label, job kind, model formats it accepts).
TARGETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "gguf": ("GGUF file (llama.cpp)", "export.gguf", ("hf", "lora")),
    "docker": ("Docker bundle for IT", "export.docker", ("gguf",)),
    "package": ("Model package (another DemoAI)", "export.package", ("hf", "gguf", "lora")),
}
#: GGUF types shown first (the usual choices), then the rest of QUANT_TYPES.
COMMON_QUANTS = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M")
HISTORY_COLUMNS = ("When", "Type", "Model", "Size", "Top-1", "PPL ratio", "Result")
GREEN, RED, GREY = QColor("#2e7d32"), QColor("#c62828"), QColor("#757575")


class _DockerCheck(QObject, QRunnable):
    """Runs :func:`docker_available` (a ``docker info`` subprocess) off the UI thread."""

    done = Signal(object)  # None, or why Docker is not available
    _running: ClassVar[set[_DockerCheck]] = set()

    def __init__(self) -> None:
        QObject.__init__(self)
        QRunnable.__init__(self)
        self.setAutoDelete(False)

    def start(self) -> None:
        _DockerCheck._running.add(self)
        QThreadPool.globalInstance().start(self)

    def run(self) -> None:
        try:
            why = docker_available()
        except Exception as exc:  # shown as the reason
            why = f"the check failed: {exc}"
        self.done.emit(why)
        _DockerCheck._running.discard(self)


def verification_problem(v: dict[str, Any]) -> str:
    """Why a verification failed, in words (empty when it passed)."""
    if v.get("passed"):
        return ""
    quant = v.get("quant", "?")
    parts: list[str] = []
    top1, need = float(v.get("top1_agreement", 0.0)), float(v.get("min_top1", 0.0))
    if top1 < need:
        parts.append(f"top-1 agreement {top1:.1%} is below the {need:.0%} required for {quant}")
    ratio, most = float(v.get("ppl_ratio", 0.0)), float(v.get("max_ratio", 0.0))
    if not ratio < most:
        parts.append(f"perplexity ratio {ratio:.4f} is not below {most} for {quant}")
    if not parts:
        parts.append("the numbers are outside the thresholds for " + quant)
    return "; ".join(parts) + "."


class ExportPane(QWidget):
    """Model + target + options -> Start (a job) with progress and Cancel; export history."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.registry = ModelRegistry(services.workspace)
        self.store = ExportStore(services.workspace)
        self.job: Job | None = None
        self.docker_reason: str | None = "checking for a Docker engine…"
        self._names: dict[str, str] = {}

        # -- what to export ------------------------------------------------------------
        self.target = QComboBox()
        self.target.setObjectName("exportTarget")
        for key, (label, _kind, _fmts) in TARGETS.items():
            self.target.addItem(label, key)
        self.model_combo = QComboBox()
        self.model_combo.setObjectName("exportModel")
        self.model_combo.setMinimumWidth(320)
        self.model_hint = QLabel("")
        self.model_hint.setWordWrap(True)
        self.out_dir = QLineEdit()
        self.out_dir.setPlaceholderText(str(self.store.exports_dir))
        self.out_dir.setToolTip("Where the export is written (empty: the workspace's exports)")
        browse_dir = QPushButton("Browse…")
        browse_dir.clicked.connect(self._browse_dir)
        dir_row = QHBoxLayout()
        dir_row.addWidget(self.out_dir, 1)
        dir_row.addWidget(browse_dir)

        # -- options per target ---------------------------------------------------------
        self.quant_boxes: dict[str, QCheckBox] = {}
        gguf_page = QWidget()
        grid = QGridLayout(gguf_page)
        grid.setContentsMargins(0, 0, 0, 0)
        ordered = [*COMMON_QUANTS, *(q for q in QUANT_TYPES if q not in COMMON_QUANTS)]
        for i, q in enumerate(ordered):
            box = QCheckBox(q)
            top1, ratio = THRESHOLDS.get(q, (0.0, 0.0))
            box.setToolTip(
                f"{q}: verified against the source; passes with top-1 agreement >= "
                f"{top1:.0%} and perplexity ratio < {ratio}"
            )
            box.setChecked(q == "Q8_0")
            box.toggled.connect(self._update_buttons)
            self.quant_boxes[q] = box
            grid.addWidget(box, i // 6, i % 6)
        gguf_note = QLabel(
            "Every GGUF is checked against its source (next-token agreement and perplexity); "
            "one that passes is added to the library. Adapters are merged into their base first."
        )
        gguf_note.setWordWrap(True)
        grid.addWidget(gguf_note, (len(ordered) + 5) // 6, 0, 1, 6)

        docker_page = QWidget()
        dform = QFormLayout(docker_page)
        dform.setContentsMargins(0, 0, 0, 0)
        self.base_image = QLineEdit(default_base_image())
        self.base_image.setToolTip(
            "Needs the same Python minor version and CPU architecture as this machine. "
            f"Without a registry, use a local image such as {LOCAL_BASE_IMAGE}."
        )
        self.build_image = QCheckBox("Also build the image and save it as a docker-load tar")
        self.build_image.setEnabled(False)
        self.docker_status = QLabel("Checking for a Docker engine…")
        self.docker_status.setWordWrap(True)
        dform.addRow("Base image", self.base_image)
        dform.addRow("", self.build_image)
        dform.addRow("", self.docker_status)

        package_page = QWidget()
        pform = QFormLayout(package_page)
        pform.setContentsMargins(0, 0, 0, 0)
        self.package_file = QLineEdit()
        self.package_file.setPlaceholderText("<output folder>/<model>-<time>.tar.gz")
        browse_file = QPushButton("Browse…")
        browse_file.clicked.connect(self._browse_file)
        file_row = QHBoxLayout()
        file_row.addWidget(self.package_file, 1)
        file_row.addWidget(browse_file)
        pform.addRow("Output file", file_row)
        note = QLabel(
            "Model files, model card, manifest and SHA256SUMS; another DemoAI imports it with "
            "Models > Import (every checksum is verified)."
        )
        note.setWordWrap(True)
        pform.addRow("", note)

        self.options = QStackedWidget()
        self.pages = {"gguf": gguf_page, "docker": docker_page, "package": package_page}
        for page in self.pages.values():
            self.options.addWidget(page)

        form = QFormLayout()
        form.addRow("Export to", self.target)
        form.addRow("Model", self.model_combo)
        form.addRow("", self.model_hint)
        form.addRow("Options", self.options)
        form.addRow("Output folder", dir_row)

        # -- run -----------------------------------------------------------------------
        self.start_btn = QPushButton("Start export")
        self.start_btn.setObjectName("exportStart")
        self.start_btn.clicked.connect(self.start_export)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.clicked.connect(self.cancel_export)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.status = QLabel("")
        self.status.setObjectName("exportStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        run_row = QHBoxLayout()
        run_row.addWidget(self.start_btn)
        run_row.addWidget(self.cancel_btn)
        run_row.addWidget(self.progress, 1)

        setup = QGroupBox("New export")
        sl = QVBoxLayout(setup)
        sl.addLayout(form)
        sl.addLayout(run_row)
        sl.addWidget(self.status)

        # -- history -------------------------------------------------------------------
        self.history = QTableWidget(0, len(HISTORY_COLUMNS))
        self.history.setObjectName("exportHistory")
        self.history.setHorizontalHeaderLabels(list(HISTORY_COLUMNS))
        self.history.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.history.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.history.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.history.verticalHeader().setVisible(False)
        self.history.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.history.horizontalHeader().setStretchLastSection(True)
        self.history.setColumnWidth(2, 240)
        self.history.itemSelectionChanged.connect(self._history_selected)
        self.history.doubleClicked.connect(lambda _: self.open_folder())
        self.history_empty = QLabel(
            "No exports yet. Choose a model above: a GGUF file for llama.cpp tools, a Docker "
            "bundle for IT, or a package for another DemoAI workstation."
        )
        self.history_empty.setWordWrap(True)
        self.open_btn = QPushButton("Open folder")
        self.open_btn.setToolTip("Open the selected export's folder (or the exports folder)")
        self.open_btn.clicked.connect(self.open_folder)
        hist_bar = QHBoxLayout()
        hist_bar.addWidget(QLabel("<b>Export history</b>"))
        hist_bar.addStretch(1)
        hist_bar.addWidget(self.open_btn)
        self.details = QTextBrowser()
        self.details.setObjectName("exportDetails")
        self.details.setPlaceholderText("Select an export to see its files and verification.")
        lower = QWidget()
        ll = QVBoxLayout(lower)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addLayout(hist_bar)
        ll.addWidget(self.history_empty)
        ll.addWidget(self.history, 2)
        ll.addWidget(self.details, 1)

        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(setup)
        self.splitter.addWidget(lower)
        self.splitter.setSizes([330, 420])
        QVBoxLayout(self).addWidget(self.splitter)

        self.target.currentIndexChanged.connect(self._target_changed)
        self.model_combo.currentIndexChanged.connect(self._update_buttons)
        services.hub.jobs_changed.connect(self._jobs_changed)
        services.hub.job_events.connect(self._job_events)
        services.bus.models_changed.connect(self.refresh_models)
        # Exports made anywhere (the CLI, another window) show without a Refresh button.
        services.bus.changed.connect(self._workspace_changed)

        self._target_changed()
        self.refresh_history()
        self._adopt_running_job()
        self._docker_check = _DockerCheck()
        self._docker_check.done.connect(self._docker_checked)
        self._docker_check.start()

    # -- state ---------------------------------------------------------------------------
    def current_target(self) -> str:
        return str(self.target.currentData())

    def set_target(self, key: str) -> None:
        self.target.setCurrentIndex(self.target.findData(key))

    def selected_model(self) -> ModelRecord | None:
        mid = self.model_combo.currentData()
        if not mid:
            return None
        try:
            return self.registry.get(str(mid))
        except NotFoundError:
            return None

    def select_model(self, model_id: str) -> bool:
        i = self.model_combo.findData(model_id)
        if i >= 0:
            self.model_combo.setCurrentIndex(i)
        return i >= 0

    def chosen_quants(self) -> list[str]:
        return [q for q, b in self.quant_boxes.items() if b.isChecked()]

    def set_quants(self, quants: list[str]) -> None:
        for q, b in self.quant_boxes.items():
            b.setChecked(q in quants)

    def _running(self) -> bool:
        return self.job is not None and self.job.state not in FINAL_STATES

    def refresh_models(self) -> None:
        """Fill the model picker with the models the chosen target accepts."""
        keep = self.model_combo.currentData()
        _label, _kind, formats = TARGETS[self.current_target()]
        models = [m for m in self.registry.list() if m.format in formats]
        self._names.update({m.id: m.name for m in self.registry.list()})
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for m in models:
            what = {"hf": "HF", "lora": "adapter", "gguf": m.quantization or "GGUF"}[m.format]
            self.model_combo.addItem(f"{m.name}  ({what}, {human_size(m.size_bytes)})", m.id)
            self.model_combo.setItemData(
                self.model_combo.count() - 1, f"{m.id}\n{m.path}", Qt.ItemDataRole.ToolTipRole
            )
        if keep is not None:
            i = self.model_combo.findData(keep)
            if i >= 0:
                self.model_combo.setCurrentIndex(i)
        self.model_combo.blockSignals(False)
        if not models:
            self.model_hint.setText(
                {
                    "gguf": "No Hugging Face model or adapter in the library: import or "
                    "download one in Models, or fine-tune one.",
                    "docker": "No GGUF model in the library: export one to GGUF first "
                    "(choose 'GGUF file' above), or import a .gguf in Models.",
                    "package": "The model library is empty: import a model in Models.",
                }[self.current_target()]
            )
        else:
            self.model_hint.setText("")
        self.model_hint.setVisible(not models)
        self._update_buttons()

    def _target_changed(self, *_: object) -> None:
        self.options.setCurrentWidget(self.pages[self.current_target()])
        self.refresh_models()

    def _update_buttons(self, *_: object) -> None:
        running = self._running()
        ok = self.model_combo.currentData() is not None
        if self.current_target() == "gguf":
            ok = ok and bool(self.chosen_quants())
        self.start_btn.setEnabled(ok and not running)
        self.cancel_btn.setEnabled(running)
        self.target.setEnabled(not running)

    def _docker_checked(self, why: object) -> None:
        self.docker_reason = None if why is None else str(why)
        if self.docker_reason is None:
            self.build_image.setEnabled(True)
            self.docker_status.setText("A Docker engine answers: the image can be built here.")
        else:
            self.build_image.setChecked(False)
            self.build_image.setEnabled(False)
            self.docker_status.setText(
                f"Building the image here is off: {self.docker_reason}. The bundle is written "
                "anyway; its README tells IT how to build it (docker build needs no network)."
            )

    def _browse_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder", str(self._base_dir()))
        if folder:
            self.out_dir.setText(folder)

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Package file", str(self._base_dir()), "Model packages (*.tar.gz)"
        )
        if path:
            self.package_file.setText(path if path.endswith(".tar.gz") else path + ".tar.gz")

    # -- start / cancel ------------------------------------------------------------------
    def _base_dir(self) -> Path:
        text = self.out_dir.text().strip()
        return Path(text).expanduser() if text else self.store.exports_dir

    def job_request(self) -> tuple[str, dict[str, Any], str]:
        """(job kind, params, title) for the current choices; raises DemoAIError if incomplete."""
        from app.core.errors import ConfigError

        rec = self.selected_model()
        if rec is None:
            raise ConfigError("Choose a model to export.")
        key = self.current_target()
        _label, kind, formats = TARGETS[key]
        if rec.format not in formats:
            raise ConfigError(f"{rec.name} is a '{rec.format}' model; it cannot go to {key}.")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        slug = slugify(rec.name, 40)
        params: dict[str, Any]
        if key == "gguf":
            quants = self.chosen_quants()
            if not quants:
                raise ConfigError("Tick at least one GGUF type.")
            params = {"model": rec.id, "quants": quants}
            if self.out_dir.text().strip():
                params["out_dir"] = str(self._base_dir().absolute())
            title = f"Export {rec.name} to GGUF {', '.join(quants)}"
        elif key == "docker":
            folder = self._base_dir() / f"{slug}-docker-{stamp}"
            params = {
                "model": rec.id,
                "out_dir": str(folder.absolute()),
                "base_image": self.base_image.text().strip() or default_base_image(),
                "build": self.build_image.isEnabled() and self.build_image.isChecked(),
            }
            title = f"Docker bundle of {rec.name}"
        else:
            text = self.package_file.text().strip()
            out = Path(text).expanduser() if text else self._base_dir() / f"{slug}-{stamp}.tar.gz"
            if out.exists():
                raise ConfigError(f"{out} already exists.", "Choose a new file name.")
            params = {"model": rec.id, "out_file": str(out.absolute())}
            title = f"Package {rec.name}"
        return kind, params, title

    def start_export(self) -> Job | None:
        """Submit the export job for the current choices."""
        if self._running():
            return None
        try:
            kind, params, title = self.job_request()
            job = self.services.jobs.submit(kind, params, title=title)
        except DemoAIError as exc:
            show_error(self, "Export", exc)
            return None
        self._track(job)
        self.status.setStyleSheet("")
        self.status.setText(f"{title}: queued…")
        self.services.hub.tick()
        return job

    def _track(self, job: Job) -> None:
        self.job = job
        self.services.hub.watch(job, from_start=True)
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(1000 * (job.progress or 0.0)))
        self.progress.setFormat("%p%")
        self._update_buttons()

    def _adopt_running_job(self) -> None:
        """Follow an export that is still running (the pane was reopened)."""
        active = {JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING}
        for job in self.services.jobs.list_jobs(active, limit=50):
            if job.kind.startswith("export."):
                self._track(job)
                self.status.setText(f"{job.title}: {job.message or job.state}")
                return

    def cancel_export(self) -> None:
        if self.job is None:
            return
        try:
            self.job = self.services.jobs.request_cancel(self.job.id)
        except DemoAIError as exc:
            show_error(self, "Cancel export", exc)
            return
        self.status.setText(f"{self.job.title}: cancelling…")
        self.services.hub.tick()

    # -- job updates ---------------------------------------------------------------------
    def _set_progress(self, fraction: float | None, message: str) -> None:
        if fraction is None:
            self.progress.setRange(0, 0)  # busy
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * max(0.0, min(1.0, fraction))))
        if message and self.job is not None:
            self.status.setText(f"{self.job.title}: {message}")

    def _job_events(self, job_id: str, events: list[dict[str, Any]]) -> None:
        if self.job is None or job_id != self.job.id or self.job.state in FINAL_STATES:
            return  # the hub may deliver the last events after the final state
        last = None
        for ev in events:
            if ev.get("type") == "progress":
                last = ev
        if last is not None:
            self._set_progress(last.get("fraction"), str(last.get("message") or ""))

    def _jobs_changed(self, jobs: list[Job]) -> None:
        if any(j.kind.startswith("export.") for j in jobs):
            self.refresh_history()
        if self.job is None:
            return
        mine = next((j for j in jobs if j.id == self.job.id), None)
        if mine is None:
            return
        self.job = mine
        if mine.state not in FINAL_STATES:
            if mine.state == JobState.RUNNING and mine.progress is not None:
                self._set_progress(mine.progress, mine.message)
            self._update_buttons()
            return
        self._finished(mine)

    def _finished(self, job: Job) -> None:
        self.progress.setRange(0, 1000)
        self._update_buttons()
        self.refresh_history()
        if job.state == JobState.SUCCEEDED:
            self.progress.setValue(1000)
            self.status.setStyleSheet(f"color: {GREEN.name()}")
            self.status.setText(f"{job.title}: done. {self._result_text(job)}")
        elif job.state == JobState.FAILED:
            self.status.setStyleSheet(f"color: {RED.name()}")
            self.status.setText(f"{job.title} failed: {job.error or 'see the job log'}")
            show_error(
                self,
                "Export failed",
                DemoAIError(job.error or "The export failed.", job.hint),
            )
        else:
            self.progress.setValue(0)
            self.status.setStyleSheet("")
            self.status.setText(f"{job.title}: {job.state}.")
        self.progress.setFormat("%p%" if job.state == JobState.SUCCEEDED else "")

    @staticmethod
    def _result_text(job: Job) -> str:
        r = job.result or {}
        if "outputs" in r:
            return " ".join(
                f"{o.get('quant')}: {human_size(o.get('size_bytes'))} "
                f"({'verified' if o.get('passed') else 'verification failed'})."
                for o in r["outputs"]
            )
        path = r.get("path") or r.get("folder") or r.get("tarball")
        return f"Written to {path}." if path else ""

    # -- history -------------------------------------------------------------------------
    def _model_name(self, model_id: str) -> str:
        if model_id not in self._names:
            try:
                self._names[model_id] = self.registry.get(model_id).name
            except NotFoundError:
                self._names[model_id] = f"{model_id} (removed)"
        return self._names[model_id]

    def records(self) -> list[ExportRecord]:
        """The exports shown in the history, newest first."""
        return [self._record_at(r) for r in range(self.history.rowCount())]

    def _record_at(self, row: int) -> ExportRecord:
        item = self.history.item(row, 0)
        rec = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        assert isinstance(rec, ExportRecord)
        return rec

    def selected_export(self) -> ExportRecord | None:
        rows = self.history.selectionModel().selectedRows()
        return self._record_at(rows[0].row()) if rows else None

    def select_export(self, export_id: str) -> bool:
        for row in range(self.history.rowCount()):
            if self._record_at(row).id == export_id:
                self.history.selectRow(row)
                return True
        return False

    def _workspace_changed(self, topics: frozenset[str]) -> None:
        if "exports" in topics:
            self.refresh_history()

    def refresh_history(self) -> None:
        keep = self.selected_export()
        recs = self.store.list()
        self.history.setRowCount(len(recs))
        for row, rec in enumerate(recs):
            for col, item in enumerate(self._row_items(rec)):
                self.history.setItem(row, col, item)
        self.history_empty.setVisible(not recs)
        self.history.setVisible(bool(recs))
        if keep is not None:
            self.select_export(keep.id)
        self._history_selected()

    def _row_items(self, rec: ExportRecord) -> list[QTableWidgetItem]:
        v = rec.verification or {}
        kind = {"gguf": "GGUF", "docker": "Docker bundle", "package": "Package"}.get(
            rec.kind, rec.kind
        )
        if rec.kind == "gguf" and rec.quant:
            kind += f" {rec.quant}"
        when = QTableWidgetItem(relative_time(rec.created_at))
        when.setToolTip(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.created_at)))
        when.setData(Qt.ItemDataRole.UserRole, rec)
        top1 = QTableWidgetItem(f"{v['top1_agreement']:.1%}" if v else "")
        ratio = QTableWidgetItem(f"{v['ppl_ratio']:.4f}" if v else "")
        for it in (top1, ratio):
            it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        size = QTableWidgetItem(human_size(rec.size_bytes) if rec.size_bytes else "")
        size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        text, color, tip = self._result(rec)
        result = QTableWidgetItem(text)
        result.setForeground(color)
        result.setToolTip(tip)
        if v:
            for it in (top1, ratio):
                it.setForeground(GREEN if v.get("passed") else RED)
                it.setToolTip(tip)
        model = QTableWidgetItem(self._model_name(rec.model_id))
        model.setToolTip(rec.model_id)
        return [when, QTableWidgetItem(kind), model, size, top1, ratio, result]

    def _result(self, rec: ExportRecord) -> tuple[str, QColor, str]:
        """Text, colour and tooltip of the Result column."""
        v = rec.verification
        if rec.state == "running":
            job = self.job
            if job is not None and rec.job_id == job.id and job.state in FINAL_STATES:
                return str(job.state), GREY, job.error or ""
            return "running…", GREY, ""
        if v is not None:
            if v.get("passed"):
                return "verified: passed", GREEN, self._verification_line(v)
            return "verification FAILED", RED, verification_problem(v)
        if rec.state == "succeeded":
            return "done", GREEN, rec.path or ""
        return "failed", RED, rec.error or ""

    @staticmethod
    def _verification_line(v: dict[str, Any]) -> str:
        return (
            f"top-1 agreement {v['top1_agreement']:.1%} (needs >= {v['min_top1']:.0%}), "
            f"perplexity ratio {v['ppl_ratio']:.4f} (needs < {v['max_ratio']}) over "
            f"{v['positions']} positions; tokenizer "
            + ("matches" if v.get("tokenizer_match") else "differs from the source")
        )

    def _history_selected(self) -> None:
        rec = self.selected_export()
        self.details.setHtml(self.details_html(rec) if rec else "")

    def details_html(self, rec: ExportRecord) -> str:
        e = html.escape
        rows: list[tuple[str, str]] = [
            ("Export", rec.id),
            ("Type", rec.kind + (f" {rec.quant}" if rec.quant else "")),
            ("Model", f"{self._model_name(rec.model_id)} ({rec.model_id})"),
            ("State", rec.state),
            ("Location", rec.path or "-"),
            ("Size", human_size(rec.size_bytes)),
            ("Started", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.created_at))),
        ]
        if rec.result_model_id:
            rows.append(("Added to the library as", self._model_name(rec.result_model_id)))
        for k in ("base_image", "image", "build"):
            if k in rec.params:
                rows.append((k.replace("_", " ").capitalize(), str(rec.params[k])))
        parts = ["<table cellspacing=4>"]
        parts += [f"<tr><td><b>{e(k)}</b></td><td>{e(v)}</td></tr>" for k, v in rows]
        parts.append("</table>")
        v = rec.verification
        if v is not None:
            ok = bool(v.get("passed"))
            color = (GREEN if ok else RED).name()
            verdict = "passed" if ok else "failed"
            parts.append(f"<h4 style='color:{color}'>Verification {verdict}</h4>")
            parts.append(f"<p>{e(self._verification_line(v))}.</p>")
            if not ok:
                parts.append(
                    f"<p style='color:{color}'><b>Why:</b> {e(verification_problem(v))} "
                    "The GGUF does not behave like its source, so it was not added to the "
                    "library; the file is kept (<code>.failed-verification</code>) for "
                    "inspection. See docs/export.md.</p>"
                )
        if rec.error and not (v is not None and not v.get("passed")):
            parts.append(f"<p style='color:{RED.name()}'><b>Error:</b> {e(rec.error)}</p>")
        return "".join(parts)

    def folder_of(self, rec: ExportRecord | None) -> Path:
        """The folder to open for an export (or the exports folder)."""
        if rec is not None and rec.path:
            p = Path(rec.path)
            if p.is_dir():
                return p
            if p.parent.is_dir():
                return p.parent
        return self._base_dir()

    def open_folder(self) -> None:
        folder = self.folder_of(self.selected_export())
        folder.mkdir(parents=True, exist_ok=True)
        open_folder(self, folder)
