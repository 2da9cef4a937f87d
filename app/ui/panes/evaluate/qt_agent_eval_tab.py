"""The Agent eval tab: run agent versions x models on a dataset of tasks, read the results.

Runs are ``eval.agent`` jobs (worker processes, docs/agent-eval.md); this tab
validates and submits off the UI thread and reads what :class:`EvalStore` and the
agent run store hold. A task's agent run opens as a read-only list of its steps
(the same run is in the Agents pane's run list).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.core.agents import AgentStore, RunStore
from app.core.data.store import DatasetStore
from app.core.errors import DemoAIError
from app.core.eval.agent_eval import KIND, METRICS, AgentEvalConfig, submit_agent_eval
from app.core.eval.metrics import get_metric
from app.core.eval.runner import EvalStore
from app.core.jobs.store import Job, JobState
from app.core.models.registry import ModelRegistry
from app.ui.panes.evaluate.qt_eval_tab import (
    checkable,
    checked_data,
    fmt_ci,
    num_item,
    table,
    text_item,
)
from app.ui.services import Services

NONE = "(none)"
_TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED)
TASK_HEADERS = ["Subject", "#", "Task", "Success", "Tool acc.", "Steps", "Tokens", "Time s",
                "Status", "Agent run"]  # fmt: skip


def _scaled(v: Any, points: float) -> float | None:
    return None if v is None else float(v) * points


def is_agent_run(run: Any) -> bool:
    return "agents" in (run.config or {})


class AgentEvalTab(QWidget):
    """Setup on the left; agent eval runs, aggregates with CIs and per-task results on the right."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.ws = services.workspace
        self.agents_store = AgentStore(self.ws.db)
        self.registry = ModelRegistry(self.ws)
        self.datasets = DatasetStore(self.ws)
        self.store = EvalStore(self.ws)
        self.job_id: str | None = None
        self._states: dict[str, str] = {}
        self.dialogs: list[QDialog] = []

        self.agents = QListWidget()
        self.agents.setObjectName("agentEvalAgents")
        self.agents.setMaximumHeight(110)
        self.models = QListWidget()
        self.models.setObjectName("agentEvalModels")
        self.models.setMaximumHeight(110)
        self.models.setToolTip("None checked: each agent uses its own model.")
        self.dataset = QComboBox()
        self.version = QComboBox()
        self.input_col = QComboBox()
        self.ref_col = QComboBox()
        self.tools_col = QComboBox()
        self.tools_col.setToolTip('Expected tool calls: JSON [{"name": ..., "arguments": {...}}]')
        self.check_col = QComboBox()
        self.check_col.setToolTip('A regex on the answer, or {"file": PATH, "content": REGEX}')
        self.limit = QSpinBox()
        self.limit.setRange(0, 1_000_000)
        self.limit.setSpecialValueText("all tasks")
        self.name = QLineEdit()
        self.run_btn = QPushButton("Start agent eval")
        self.run_btn.setObjectName("agentEvalStart")
        self.cancel_btn = QPushButton("Cancel")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setObjectName("agentEvalError")
        self.error.hide()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.hide()
        note = QLabel(
            "Each task runs in a scratch copy of the agent's granted folders. write_file and "
            "run_python act on that copy; other side-effecting calls are refused (the task fails)."
        )
        note.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Agents", self.agents)
        form.addRow("Models", self.models)
        form.addRow("Dataset", self.dataset)
        form.addRow("Version", self.version)
        form.addRow("Task column", self.input_col)
        form.addRow("Reference", self.ref_col)
        form.addRow("Expected tools", self.tools_col)
        form.addRow("Checker", self.check_col)
        form.addRow("Limit", self.limit)
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

        self.runs = table(["Run", "State", "Dataset", "Agents x models"], "agentEvalRuns")
        self.aggregates = table(["Subject", "Metric", "Value", "95% CI", "n"], "agentEvalAgg")
        self.tasks = table(TASK_HEADERS, "agentEvalTasks")
        self.tasks.setToolTip("Double-click a task to read its agent run.")
        right = QSplitter(Qt.Orientation.Vertical)
        for w in (self.runs, self.aggregates, self.tasks):
            right.addWidget(w)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(setup)
        split.addWidget(right)
        split.setSizes([340, 800])
        QVBoxLayout(self).addWidget(split)

        self.dataset.currentIndexChanged.connect(self._dataset_changed)
        self.version.currentIndexChanged.connect(self._version_changed)
        self.run_btn.clicked.connect(self.start_run)
        self.cancel_btn.clicked.connect(self.cancel_run)
        self.runs.itemSelectionChanged.connect(self._run_selected)
        self.tasks.cellDoubleClicked.connect(self.open_task)
        services.hub.jobs_changed.connect(self._jobs_changed)
        services.hub.job_events.connect(self._job_events)
        services.bus.changed.connect(self._workspace_changed)
        self.refresh()
        self._set_running(False)

    # -- setup ------------------------------------------------------------------------------
    def refresh(self) -> None:
        chosen_a, chosen_m = set(checked_data(self.agents)), set(checked_data(self.models))
        self.agents.clear()
        for spec in self.agents_store.list():
            ref = f"{spec.name}@{spec.version}"
            checkable(self.agents, f"{spec.name} v{spec.version}", ref, ref in chosen_a,
                      spec.description or spec.name)  # fmt: skip
        self.models.clear()
        for m in self.registry.list():
            if m.format in ("gguf", "hf", "lora"):
                checkable(self.models, f"{m.name}  ({m.format})", m.id, m.id in chosen_m)
        current = self.dataset.currentData()
        self.dataset.blockSignals(True)
        self.dataset.clear()
        for ds in self.datasets.list_datasets():
            self.dataset.addItem(ds.name, ds.id)
        if current is not None and (i := self.dataset.findData(current)) >= 0:
            self.dataset.setCurrentIndex(i)
        self.dataset.blockSignals(False)
        self._dataset_changed()
        self.refresh_runs()

    def _workspace_changed(self, topics: frozenset[str]) -> None:
        if topics & {"agents", "models", "datasets", "versions"} and self.job_id is None:
            self.refresh()

    def _dataset_changed(self, *_: Any) -> None:
        self.version.blockSignals(True)
        self.version.clear()
        ds_id = self.dataset.currentData()
        if ds_id is not None:
            try:
                versions = self.datasets.versions(ds_id)
                for n, v in reversed(list(enumerate(versions, 1))):
                    self.version.addItem(f"v{n} · {v.rows:,} rows", v.hash)
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
        for box in (self.ref_col, self.tools_col, self.check_col):
            box.clear()
            box.addItem(NONE)
            box.addItems(cols)
        for box, names in (
            (self.input_col, ("task", "input", "question", "prompt")),
            (self.ref_col, ("answer", "reference", "expected")),
            (self.tools_col, ("tools", "expected_tools", "tool_calls")),
            (self.check_col, ("check", "checker")),
        ):
            hit = next((c for c in cols if c.lower() in names), None)
            if hit is not None:
                box.setCurrentText(hit)

    def config(self) -> AgentEvalConfig:
        ds_id, ver = self.dataset.currentData(), self.version.currentData()
        if ds_id is None:
            raise DemoAIError("Choose a dataset of tasks (create or import one in Datasets).")

        def col(box: QComboBox) -> str | None:
            return None if box.currentText() in ("", NONE) else box.currentText()

        return AgentEvalConfig(
            agents=checked_data(self.agents),
            dataset=f"{ds_id}@{ver}" if ver else ds_id,
            input_column=self.input_col.currentText(),
            reference_column=col(self.ref_col),
            tools_column=col(self.tools_col),
            checker_column=col(self.check_col),
            model_refs=checked_data(self.models),
            limit=self.limit.value() or None,
            name=self.name.text().strip(),
        )

    def start_run(self) -> None:
        """Check the setup and every task cell off the UI thread, then the job starts."""
        self.error.hide()
        try:
            cfg = self.config()
        except DemoAIError as exc:
            self._show_error(exc.message + (f" {exc.hint}" if exc.hint else ""))
            return
        ws = self.ws
        self.run_btn.setEnabled(False)
        self.status.setText("Checking the tasks…")

        def done(job: Job) -> None:
            self.job_id = job.id
            self.progress.setValue(0)
            self.status.setText(
                f"Queued: {len(cfg.models)} agent x model pair(s). Progress also shows in Jobs."
            )
            self._set_running(True)
            self.refresh_runs(select=job.id)
            self.services.hub.tick()

        def failed(exc: BaseException) -> None:
            self._set_running(False)
            self.status.setText("")
            if isinstance(exc, DemoAIError):
                self._show_error(exc.message + (f" {exc.hint}" if exc.hint else ""))
            else:
                self._show_error(f"Could not start: {exc}")

        self.services.actions.run(
            self, "Start agent eval", lambda _p: submit_agent_eval(ws, cfg), done=done,
            failed=failed,
        )  # fmt: skip

    def cancel_run(self) -> None:
        if self.job_id is None:
            return
        try:
            self.services.supervisor.cancel(self.job_id)
        except DemoAIError as exc:
            self._show_error(str(exc))
        self.status.setText("Cancelling… finished tasks are kept (Resume in Jobs).")
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
            if ev.get("type") == "progress" and ev.get("fraction") is not None:
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
            sel = self.selected_run()
            self.refresh_runs(select=sel)

    # -- results ------------------------------------------------------------------------------
    def refresh_runs(self, select: str | None = None) -> None:
        self.runs.blockSignals(True)
        self.runs.setRowCount(0)
        target = -1
        for run in self.store.list_runs():
            if not is_agent_run(run):
                continue
            r = self.runs.rowCount()
            self.runs.insertRow(r)
            first = text_item(run.name or run.id[:12], run.id)
            first.setData(Qt.ItemDataRole.UserRole, run.id)
            self.runs.setItem(r, 0, first)
            self.runs.setItem(r, 1, text_item(run.state))
            self.runs.setItem(r, 2, text_item(run.dataset_ref.partition("@")[0]))
            self.runs.setItem(r, 3, text_item(", ".join(run.models)))
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
        """The run's aggregates (with CIs) and one row per task."""
        self.aggregates.setRowCount(0)
        self.tasks.setRowCount(0)
        if run_id is None:
            return
        run = self.store.get_run(run_id)
        agg = (run.summary or {}).get("aggregates") or self.store.aggregates(run.id)
        for subject, per in agg.items():
            for m in METRICS:
                a = per.get(m) or {}
                pts = get_metric(m).points
                r = self.aggregates.rowCount()
                self.aggregates.insertRow(r)
                self.aggregates.setItem(r, 0, text_item(subject))
                self.aggregates.setItem(r, 1, text_item(m + (" %" if pts == 100 else "")))
                self.aggregates.setItem(r, 2, num_item(_scaled(a.get("value"), pts)))
                lo, hi = _scaled(a.get("ci_low"), pts), _scaled(a.get("ci_high"), pts)
                self.aggregates.setItem(r, 3, text_item(fmt_ci(lo, hi)))
                self.aggregates.setItem(r, 4, num_item(a.get("n")))
        for s in self.store.samples(run.id):
            r = self.tasks.rowCount()
            self.tasks.insertRow(r)
            sc = s.scores
            values = [s.model_id, s.idx, s.input, sc.get("agent_success"),
                      sc.get("tool_accuracy"), sc.get("agent_steps"), sc.get("agent_tokens"),
                      sc.get("agent_time_s")]  # fmt: skip
            for c, v in enumerate(values):
                item = text_item(str(v)[:200], str(v)) if isinstance(v, str) else num_item(v)
                self.tasks.setItem(r, c, item)
            self.tasks.setItem(r, 8, text_item(s.extra.get("status"), s.error))
            rid = s.extra.get("agent_run_id")
            run_item = text_item(rid or "-", "Double-click to read the agent run")
            run_item.setData(Qt.ItemDataRole.UserRole, rid)
            self.tasks.setItem(r, 9, run_item)
        self.aggregates.resizeColumnsToContents()

    def open_task(self, row: int, _col: int = 0) -> QDialog | None:
        """A window listing the task's agent run, step by step (read-only)."""
        item = self.tasks.item(row, 9)
        rid = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        if not rid:
            return None
        runs = RunStore(self.ws.db)
        try:
            run, steps = runs.get(rid), runs.path(rid)
        except DemoAIError as exc:
            self._show_error(str(exc))
            return None
        dlg = QDialog(self)
        dlg.setWindowTitle(f"Agent run {rid[:12]} · {run.agent} v{run.agent_version}")
        view = table(["Step", "Tool", "Content"], "agentEvalSteps")
        for s in steps:
            r = view.rowCount()
            view.insertRow(r)
            view.setItem(r, 0, text_item(s.kind))
            view.setItem(r, 1, text_item(s.tool or ""))
            view.setItem(r, 2, text_item(s.content[:500], s.content[:4000]))
        lay = QVBoxLayout(dlg)
        lay.addWidget(QLabel(f"{run.status}: {run.final or run.error or ''}"[:500]))
        lay.addWidget(view)
        lay.addWidget(QLabel("This run is also in the Agents pane's run list."))
        dlg.resize(760, 480)
        dlg.show()
        self.dialogs = [d for d in self.dialogs if d.isVisible()] + [dlg]
        return dlg


__all__ = ["AgentEvalTab"]
