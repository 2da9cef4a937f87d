"""The Harness tab: an lm-evaluation-harness task against a library model (docs/eval-harness.md).

Runs are ``eval.harness`` jobs (worker processes; the harness is imported only
there). This tab checks the task and pins its data off the UI thread (a task
whose data is not in the dataset library is refused with the dataset to import,
before any job), follows the job's progress, cancels it, and lists harness runs
with their aggregates; the Evaluate tab lists and compares the same runs.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.core.data.store import DatasetStore
from app.core.errors import DemoAIError
from app.core.eval.harness import KIND, HarnessConfig, TaskCodeNotTrustedError, submit_harness
from app.core.eval.runner import EvalStore
from app.core.jobs.store import Job, JobState
from app.core.models.registry import ModelRegistry
from app.ui.panes.evaluate.qt_eval_tab import fmt_ci, num_item, table, text_item
from app.ui.services import Services

BY_NAME = "(the task's own: PATH[/NAME]:SPLIT)"
_TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED)


def is_harness_run(run: Any) -> bool:
    return (run.config or {}).get("kind") == "lm_eval"


class HarnessTab(QWidget):
    """Setup on the left; harness runs, their aggregates and the harness's own results right."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.ws = services.workspace
        self.registry = ModelRegistry(self.ws)
        self.datasets = DatasetStore(self.ws)
        self.store = EvalStore(self.ws)
        self.job_id: str | None = None
        #: The task file the user said yes to running code from (asked once per start).
        self._trusted_task: str | None = None
        self._states: dict[str, str] = {}

        self.model = QComboBox()
        self.model.setObjectName("harnessModel")
        self.task = QLineEdit()
        self.task.setObjectName("harnessTask")
        self.task.setPlaceholderText("a task name (arc_easy) or a task YAML file")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        task_row = QHBoxLayout()
        task_row.addWidget(self.task, 1)
        task_row.addWidget(browse)
        self.dataset = QComboBox()
        self.dataset.setToolTip(
            "The library dataset for the evaluated split. By default the task's Hub dataset "
            "is looked up under its library name, e.g. allenai/ai2_arc/ARC-Easy:test; a task "
            "that reads data files uses its files."
        )
        self.limit = QSpinBox()
        self.limit.setRange(0, 10_000_000)
        self.limit.setSpecialValueText("all documents")
        self.fewshot = QSpinBox()
        self.fewshot.setRange(-1, 64)
        self.fewshot.setSpecialValueText("the task's")
        self.fewshot.setValue(-1)
        self.name = QLineEdit()
        self.run_btn = QPushButton("Run harness task")
        self.run_btn.setObjectName("harnessStart")
        self.cancel_btn = QPushButton("Cancel")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setObjectName("harnessError")
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error.hide()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.hide()
        note = QLabel(
            "lm-evaluation-harness scores the task through the model host; nothing is "
            "downloaded. Import a task's data first (docs/eval-harness.md)."
        )
        note.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Model", self.model)
        form.addRow("Task", task_row)
        form.addRow("Data", self.dataset)
        form.addRow("Limit", self.limit)
        form.addRow("Few-shot", self.fewshot)
        form.addRow("Name", self.name)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        setup = QWidget()
        col = QVBoxLayout(setup)
        col.addLayout(form)
        col.addWidget(note)
        col.addLayout(buttons)
        col.addWidget(self.progress)
        col.addWidget(self.status)
        col.addWidget(self.error)
        col.addStretch(1)

        self.runs = table(["Run", "State", "Task", "Model", "Data"], "harnessRuns")
        self.aggregates = table(["Metric", "Value", "95% CI", "n"], "harnessAggs")
        self.results = QLabel("")
        self.results.setObjectName("harnessResults")
        self.results.setWordWrap(True)
        self.results.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self.runs)
        right.addWidget(self.aggregates)
        right.addWidget(self.results)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(setup)
        split.addWidget(right)
        split.setSizes([340, 800])
        QVBoxLayout(self).addWidget(split)

        self.run_btn.clicked.connect(self.start_run)
        self.cancel_btn.clicked.connect(self.cancel_run)
        self.runs.itemSelectionChanged.connect(self._run_selected)
        services.hub.jobs_changed.connect(self._jobs_changed)
        services.hub.job_events.connect(self._job_events)
        services.bus.changed.connect(self._workspace_changed)
        self.refresh()
        self._set_running(False)

    # -- setup ------------------------------------------------------------------------------
    def refresh(self) -> None:
        current = self.model.currentData()
        self.model.clear()
        for m in self.registry.list():
            if m.format in ("gguf", "hf", "lora"):
                self.model.addItem(f"{m.name}  ({m.format})", m.id)
        if current is not None and (i := self.model.findData(current)) >= 0:
            self.model.setCurrentIndex(i)
        chosen = self.dataset.currentData()
        self.dataset.clear()
        self.dataset.addItem(BY_NAME, None)
        for ds in self.datasets.list_datasets():
            self.dataset.addItem(ds.name, ds.id)
        if chosen is not None and (i := self.dataset.findData(chosen)) >= 0:
            self.dataset.setCurrentIndex(i)
        self.refresh_runs()

    def _workspace_changed(self, topics: frozenset[str]) -> None:
        if topics & {"models", "datasets", "versions"} and self.job_id is None:
            self.refresh()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Task YAML", "", "Task YAML (*.yaml *.yml)")
        if path:
            self.task.setText(path)

    def config(self) -> HarnessConfig:
        model = self.model.currentData()
        if model is None:
            raise DemoAIError("Choose a model (import one in Models).")
        task = self.task.text().strip()
        data: dict[str, Any] = {"models": [model], "task": task}
        data["trust_task_code"] = bool(task) and task == self._trusted_task
        if self.dataset.currentData() is not None:
            data["datasets"] = {"": str(self.dataset.currentData())}
        if self.limit.value():
            data["limit"] = self.limit.value()
        if self.fewshot.value() >= 0:
            data["num_fewshot"] = self.fewshot.value()
        data["name"] = self.name.text().strip()
        return HarnessConfig.from_dict(data)

    def start_run(self) -> None:
        """Find the task and pin its data off the UI thread, then the job starts."""
        self.error.hide()
        try:
            cfg = self.config()
        except DemoAIError as exc:
            self._show_error(exc.message + (f" {exc.hint}" if exc.hint else ""))
            return
        ws = self.ws
        self.run_btn.setEnabled(False)
        self.status.setText("Checking the task and its data…")

        def done(job: Job) -> None:
            self._trusted_task = None  # a yes is for one start
            self.job_id = job.id
            self.progress.setValue(0)
            self.status.setText("Queued. Progress also shows in Jobs.")
            self._set_running(True)
            self.refresh_runs(select=job.id)
            self.services.hub.tick()

        def failed(exc: BaseException) -> None:
            self._set_running(False)
            self.status.setText("")
            if isinstance(exc, TaskCodeNotTrustedError) and self._ask_trust(cfg.task, exc):
                self.start_run()  # again, with the user's yes for this file
                return
            if isinstance(exc, DemoAIError):
                self._show_error(exc.message + (f"\n{exc.hint}" if exc.hint else ""))
            else:
                self._show_error(f"Could not start: {exc}")

        self.services.actions.run(
            self, "Run harness task", lambda _p: submit_harness(ws, cfg), done=done,
            failed=failed,
        )  # fmt: skip

    def _ask_trust(self, task: str, exc: DemoAIError) -> bool:
        """Ask whether to run this task file's code; True when the user says yes."""
        answer = QMessageBox.question(
            self,
            "Run the task's code?",
            f"{exc.message}\n\nRun the task {task}?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return False
        self._trusted_task = task
        return True

    def cancel_run(self) -> None:
        if self.job_id is None:
            return
        try:
            self.services.supervisor.cancel(self.job_id)
        except DemoAIError as exc:
            self._show_error(str(exc))
        self.status.setText("Cancelling… answered requests are kept (Resume in Jobs).")
        self.services.hub.tick()

    def _show_error(self, text: str) -> None:
        self.error.setText(text)
        self.error.show()

    def _set_running(self, running: bool) -> None:
        self.run_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        self.progress.setVisible(running)

    # -- job tracking -------------------------------------------------------------------------
    def _job_events(self, job_id: str, events: list[dict[str, Any]]) -> None:
        if job_id != self.job_id:
            return
        for ev in events:
            if ev.get("type") == "progress":
                if ev.get("fraction") is not None:
                    self.progress.setValue(round(float(ev["fraction"]) * 1000))
                if ev.get("message"):
                    self.status.setText(str(ev["message"]))

    def _jobs_changed(self, jobs: list[Job]) -> None:
        mine = [j for j in jobs if j.kind == KIND]
        for job in mine:
            if job.id == self.job_id and job.state in _TERMINAL:
                self.job_id = None
                self._set_running(False)
                msg = "Done." if job.state == JobState.SUCCEEDED else f"{job.state}: {job.error}"
                self.status.setText(msg)
        moved = [j for j in mine if self._states.get(j.id) != j.state]
        for j in mine:
            self._states[j.id] = j.state
        if moved:
            self.refresh_runs(select=self.selected_run())

    # -- results ------------------------------------------------------------------------------
    def refresh_runs(self, select: str | None = None) -> None:
        self.runs.blockSignals(True)
        self.runs.setRowCount(0)
        target = -1
        names = {m.id: m.name for m in self.registry.list()}
        for run in self.store.list_runs():
            if not is_harness_run(run):
                continue
            r = self.runs.rowCount()
            self.runs.insertRow(r)
            first = text_item(run.name or run.id[:12], run.id)
            first.setData(Qt.ItemDataRole.UserRole, run.id)
            self.runs.setItem(r, 0, first)
            self.runs.setItem(r, 1, text_item(run.state))
            self.runs.setItem(r, 2, text_item(str(run.config.get("task_name", ""))))
            model = run.models[0] if run.models else ""
            self.runs.setItem(r, 3, text_item(names.get(model, model), model))
            self.runs.setItem(r, 4, text_item(run.dataset_ref))
            if run.id == select:
                target = r
        self.runs.resizeColumnsToContents()
        self.runs.blockSignals(False)
        if target >= 0:
            self.runs.selectRow(target)
            self.show_run(select)

    def selected_run(self) -> str | None:
        rows = sorted({i.row() for i in self.runs.selectedIndexes()})
        if not rows:
            return None
        item = self.runs.item(rows[0], 0)
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    def _run_selected(self) -> None:
        self.show_run(self.selected_run())

    def show_run(self, run_id: str | None) -> None:
        """The run's aggregates (with CIs) and the harness's own results line."""
        self.aggregates.setRowCount(0)
        self.results.setText("")
        if run_id is None:
            return
        try:
            run = self.store.get_run(run_id)
        except DemoAIError:
            return
        agg = (run.summary or {}).get("aggregates") or {}
        for _model, per in agg.items():
            for metric, a in per.items():
                r = self.aggregates.rowCount()
                self.aggregates.insertRow(r)
                self.aggregates.setItem(r, 0, text_item(metric))
                self.aggregates.setItem(r, 1, num_item(a.get("value")))
                self.aggregates.setItem(r, 2, text_item(fmt_ci(a.get("ci_low"), a.get("ci_high"))))
                self.aggregates.setItem(r, 3, num_item(a.get("n")))
        self.aggregates.resizeColumnsToContents()
        harness = (run.summary or {}).get("harness") or {}
        res = harness.get("results") or {}
        parts = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                 for k, v in sorted(res.items()) if "," in k]  # fmt: skip
        if parts:
            self.results.setText(
                f"lm-eval {harness.get('version', '')} reports: " + " · ".join(parts)
            )
        elif run.state not in ("succeeded",):
            self.results.setText(run.state)


__all__ = ["HarnessTab", "is_harness_run"]
