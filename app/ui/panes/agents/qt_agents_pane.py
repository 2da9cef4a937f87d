"""The Agents pane: define agents, run them with tool approvals, browse, fork and replay runs.

Three tabs. **Agents**: agents and runs (searchable) on the left, the agent form
(:mod:`qt_agent_form`) in the middle (every Save is a new version; the system
prompt can come from the prompt library), the run view (:mod:`qt_run_view`) on
the right. **Prompts**: the prompt library (versions, diff, variables, test
inputs). **Installed**: agents and prompts with their versions, bundle export and
import. A run, a fork or a replay executes on the worker thread of
:mod:`qt_agent_runner`; its steps reach the run view as the loop records them.
When the agent calls a side-effecting tool the worker waits while the approval
bar asks the user (approve once / always for this agent version / deny). The
same bar asks, before a run starts, for an MCP server or an imported tool grant
that is not approved for this exact version (its argv and environment, or its
folder, shown). Tool results are shown marked UNTRUSTED, as the model sees them.

This module keeps to layout and wiring. The model comes from the agent's library
model, leased from the window's shared model host for the run; tests set
``pane.runner.client_factory``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.agents import (
    AgentSpec,
    AgentStore,
    ReplayReport,
    RunResult,
    RunStore,
    Step,
    ToolCall,
)
from app.core.agents.approvals import Grant
from app.core.errors import DemoAIError
from app.ui.panes.agents.qt_agent_form import AgentForm
from app.ui.panes.agents.qt_agent_runner import AgentRunner
from app.ui.panes.agents.qt_agent_store import AgentStoreView, ask_export_path, export_bundle
from app.ui.panes.agents.qt_prompt_library import PromptLibrary
from app.ui.panes.agents.qt_run_steps import (
    STEP_ROLE,
    ForkDialog,
    approval_text,
    describe_step,
    format_call,
)
from app.ui.panes.agents.qt_run_view import RunView
from app.ui.qt_errors import show_error
from app.ui.services import Services


class AgentsPane(QWidget):
    """Agents and runs on the left, the agent form in the middle, the run view on the right."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        db = services.workspace.db
        self.agents = AgentStore(db)
        self.runs = RunStore(db)
        self.host = services.host
        self.fork_dialog: ForkDialog | None = None
        self.saving = False  # a save runs in the action layer
        self.last_replay: ReplayReport | None = None
        self.runner = AgentRunner(services, self.runs, self.agents, self)
        self.runner.step.connect(self._on_step)
        self.runner.approval.connect(self._on_approval)
        self.runner.done.connect(self._on_done)

        # -- left: agents and runs
        self.agent_list = QListWidget()
        self.agent_list.currentItemChanged.connect(self._agent_selected)
        self.new_btn = QPushButton("New agent")
        self.new_btn.clicked.connect(self.new_agent)
        self.run_search = QLineEdit()
        self.run_search.setPlaceholderText("Search runs…")
        self.run_search.setClearButtonEnabled(True)
        self.run_search.textChanged.connect(self.refresh_runs)
        self.run_list = QListWidget()
        self.run_list.currentItemChanged.connect(self._run_selected)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(QLabel("<b>Agents</b>"))
        ll.addWidget(self.agent_list, 2)
        ll.addWidget(self.new_btn)
        ll.addWidget(QLabel("<b>Runs</b>"))
        ll.addWidget(self.run_search)
        ll.addWidget(self.run_list, 3)

        self.form = AgentForm(services)
        self.form.save_btn.clicked.connect(lambda: self.save_agent())
        self.view = RunView(self.runs)
        self.view.run_btn.clicked.connect(self.run)
        self.view.fork_btn.clicked.connect(self.fork_selected)
        self.view.replay_btn.clicked.connect(self.replay_selected)
        self.view.export_run_btn.clicked.connect(lambda: self.export_run())
        self.view.approval_bar.decided.connect(self.answer_approval)
        self.view.step_changed.connect(lambda: self._set_busy(self.busy))

        split = QSplitter()
        for w in (left, self.form, self.view):
            split.addWidget(w)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 2)
        split.setStretchFactor(2, 3)

        # -- the prompt library and the installed agents/prompts
        self.store_view = AgentStoreView(db, actions=services.actions)
        self.prompt_library = PromptLibrary(db, actions=services.actions)
        self.prompt_library.saved.connect(lambda _: self.store_view.refresh())
        self.store_view.imported.connect(self._imported)
        self.store_view.open_agent.connect(self.open_agent)
        self.store_view.open_prompt.connect(self.open_prompt)
        self.tabs = QTabWidget()
        self.tabs.addTab(split, "Agents")
        self.tabs.addTab(self.prompt_library, "Prompts")
        self.tabs.addTab(self.store_view, "Installed")
        self.tabs.currentChanged.connect(self._tab_changed)
        lay = QVBoxLayout(self)
        lay.addWidget(self.tabs)

        services.bus.models_changed.connect(self.form.refresh_models)
        services.bus.changed.connect(self._changed)
        self.refresh_agents()
        self.refresh_runs()
        self._set_busy(False)

    def _changed(self, topics: frozenset[str]) -> None:
        """The CLI, a job or another pane changed agents or runs: show them as they are."""
        if "agents" in topics and not self.busy:
            self.refresh_agents()
        if "runs" in topics and not self.busy:
            self.refresh_runs()

    # -- agents -------------------------------------------------------------------------
    @property
    def spec(self) -> AgentSpec | None:
        """The agent version shown in the form (None: a new, unsaved agent)."""
        return self.form.spec

    @property
    def run_id(self) -> str | None:
        """The run shown."""
        return self.view.run_id

    @run_id.setter
    def run_id(self, value: str | None) -> None:
        self.view.run_id = value

    def refresh_agents(self) -> None:
        self.agent_list.blockSignals(True)
        self.agent_list.clear()
        for s in self.agents.list():
            item = QListWidgetItem(f"{s.name}  v{s.version}")
            item.setData(STEP_ROLE, s.name)
            item.setToolTip(s.description)
            self.agent_list.addItem(item)
            if self.spec is not None and s.name == self.spec.name:
                self.agent_list.setCurrentItem(item)
        self.agent_list.blockSignals(False)

    def _agent_selected(self, item: QListWidgetItem | None, _: Any = None) -> None:
        if item is not None:
            self.load_agent(self.agents.get(item.data(STEP_ROLE)))

    def new_agent(self) -> None:
        """Clear the form for a new agent."""
        self.agent_list.clearSelection()
        self.form.clear()

    def load_agent(self, spec: AgentSpec) -> None:
        """Show a saved agent version in the form."""
        self.form.load(spec)

    def save_agent(self, then: Callable[[AgentSpec], Any] | None = None) -> Any:
        """Save the form as the agent's next version through the action layer (off the UI
        thread; the error, if any, under the Save button); ``then(saved)`` afterwards.

        Returns the action's handle, None when the form is not valid."""
        try:
            spec = self.form.spec_from_form()
        except DemoAIError as exc:
            self.form.save_status.error(exc)
            return None
        self.saving = True
        self._set_busy(True)

        def done(saved: AgentSpec) -> None:
            self.saving = False
            self.form.spec = saved
            self.refresh_agents()
            self.store_view.refresh()
            self.form.show_version(saved)
            self.view.status.setText(f"Saved {saved.name} v{saved.version}.")
            self._set_busy(self.busy)
            if then is not None:
                then(saved)

        def failed(_exc: BaseException) -> None:
            self.saving = False
            self._set_busy(self.busy)

        return self.services.actions.run(
            self,
            f"Saving {spec.name}",
            lambda _progress: self.agents.save(spec),
            changes=("agents",),
            done=done,
            failed=failed,
            status=self.form.save_status,
        )

    def open_agent(self, name: str) -> None:
        """Show the agent in the form (Agents tab)."""
        self.tabs.setCurrentIndex(0)
        self.load_agent(self.agents.get(name))
        self.refresh_agents()

    def open_prompt(self, name: str) -> None:
        """Show the prompt in the library editor (Prompts tab)."""
        self.tabs.setCurrentIndex(1)
        self.prompt_library.load(name)

    def _tab_changed(self, index: int) -> None:
        # the CLI or another window may have changed the workspace since the tab was shown
        widget = self.tabs.widget(index)
        if widget is self.prompt_library:
            self.prompt_library.refresh()
        elif widget is self.store_view:
            self.store_view.refresh()
        else:
            self.refresh_agents()
            self.refresh_runs()

    def _imported(self, report: Any) -> None:
        self.store_view.approvals.refresh()
        self.refresh_agents()
        self.prompt_library.refresh()
        self.refresh_runs()

    # -- runs list ----------------------------------------------------------------------
    def refresh_runs(self) -> None:
        self.run_list.blockSignals(True)
        self.run_list.clear()
        for r in self.runs.list(text=self.run_search.text().strip() or None):
            text = " ".join(r.input.split())
            replay = f" · replay of {r.replay_of}" if r.replay_of else ""
            item = QListWidgetItem(
                f"{r.agent} v{r.agent_version} · {r.status}{replay} · {text[:50]}"
            )
            item.setData(STEP_ROLE, r.id)
            item.setToolTip(f"run {r.id}\n{r.input}")
            self.run_list.addItem(item)
            if r.id == self.run_id:
                self.run_list.setCurrentItem(item)
        self.run_list.blockSignals(False)

    def _run_selected(self, item: QListWidgetItem | None, _: Any = None) -> None:
        if item is not None:
            self.view.replay_label.hide()
            self.show_run(item.data(STEP_ROLE))

    # -- the run view -------------------------------------------------------------------
    def show_run(self, run_id: str, select: str | None = None) -> None:
        """Draw the run's whole step tree; a step with several children shows its branches."""
        self.view.show_run(run_id, select)

    def selected_step(self) -> Step | None:
        return self.view.selected_step()

    # -- running ------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A run, fork or replay is under way, or the form is being saved."""
        return self.runner.busy or self.saving

    def _set_busy(self, busy: bool) -> None:
        self.view.set_busy(busy)
        self.form.save_btn.setEnabled(not busy)

    def run(self) -> None:
        """Run the saved agent on the input text (saving the form first if it changed)."""
        if self.busy:
            return
        text = self.view.input.toPlainText().strip()
        if not text:
            self.view.status.setText("Type what the agent should do.")
            return
        try:
            form = self.form.spec_from_form()
        except DemoAIError as exc:
            show_error(self, "Cannot run the agent", exc)
            return
        spec = self.form.spec
        if spec is None or spec.content_dict() != form.content_dict():
            self.save_agent(then=lambda saved: self._run_saved(saved, text))
        else:
            self._run_saved(spec, text)

    def _run_saved(self, saved: AgentSpec, text: str) -> None:
        self.view.clear_run("Running…")
        self._start(f"Running {saved.name} v{saved.version}…")
        self.runner.run(saved, text)

    def fork_selected(self) -> ForkDialog | None:
        """Open the fork dialog for the selected step (non-blocking; see :attr:`fork_dialog`)."""
        step = self.selected_step()
        if step is None or self.busy:
            return None
        dlg = ForkDialog(step, self)
        dlg.accepted.connect(lambda: self.start_fork(step.run_id, step.id, dlg.content()))
        self.fork_dialog = dlg
        dlg.open()
        return dlg

    def start_fork(self, run_id: str, step_id: str, content: str | None) -> None:
        """Continue ``run_id`` from ``step_id`` (with edited content) on the worker thread."""
        if self.busy:
            return
        self.view.final_label.setText("Running…")
        self.run_id = run_id
        self._start(f"Forking run {run_id}…")
        self.runner.fork(run_id, step_id, content)

    def replay_selected(self) -> None:
        """Replay the shown run on the worker thread; the outcome says where it diverged."""
        if self.busy or self.run_id is None:
            return
        self.view.replay_label.hide()
        self.view.final_label.setText("Replaying…")
        self._start(f"Replaying run {self.run_id}…")
        self.runner.replay(self.run_id)

    def export_run(self, dest: Path | None = None) -> Path | None:
        """Write the shown run as a bundle (asks where when ``dest`` is None)."""
        if self.run_id is None:
            return None
        if dest is None:
            dest = ask_export_path(self, f"run-{self.run_id}")
            if dest is None:
                return None
        try:
            out = export_bundle(self.services.workspace.db, "run", self.run_id, dest)
        except DemoAIError as exc:
            show_error(self, "Cannot export the run", exc)
            return None
        self.view.status.setText(f"Exported run {self.run_id} to {out}.")
        return out

    def _show_replay(self, report: ReplayReport) -> None:
        self.last_replay = report
        self.view.show_replay(report)
        self.view.status.setText(f"Replay {report.replay.id}: {report.replay.status}.")

    def _start(self, label: str) -> None:
        self.view.status.setText(label)
        self._set_busy(True)

    def _on_approval(self, call: ToolCall | Grant) -> None:
        run = self.runs.get(self.run_id) if self.run_id else None
        self.view.approval_bar.ask(approval_text(call, run))
        if isinstance(call, Grant):
            what = "MCP server" if call.kind == "mcp_server" else "tool"
            self.view.status.setText(f"Waiting for your approval of the {what} {call.name}…")
            return
        self.view.status.setText(f"Waiting for your approval of {call.tool}…")

    def answer_approval(self, decision: str) -> None:
        """Answer the pending approval: 'once', 'always' or 'deny'."""
        self.view.approval_bar.hide()
        call = self.runner.answer(decision)
        if call is None:
            return
        name = call.name if isinstance(call, Grant) else call.tool
        self.view.status.setText(f"{name}: {decision}.")

    def _on_step(self, step: Step) -> None:
        if self.run_id != step.run_id:
            self.run_id = step.run_id
            self.refresh_runs()
        self.show_run(step.run_id, select=step.id)
        self.view.final_label.setText("Running…")

    def _on_done(self, result: RunResult | ReplayReport | None, error: str) -> None:
        self.runner.finished()
        self.view.approval_bar.hide()
        if isinstance(result, ReplayReport):
            self._show_replay(result)
        elif result is not None:
            self.run_id = result.run.id
            self.show_run(result.run.id)
            self.view.status.setText(f"Run {result.run.id}: {result.status}.")
            self.view.replay_label.hide()
        else:
            self.view.status.setText(f"The run could not go on: {error}")
            if self.run_id is not None:
                self.show_run(self.run_id)
            else:
                self.view.final_label.setText(f"Failed: {error}")
        self.refresh_runs()
        self._set_busy(False)

    def shutdown(self) -> None:
        """Deny a pending approval, wait for the worker, give back its models (the window
        stops the shared host)."""
        self.runner.shutdown()
        self.view.approval_bar.hide()


__all__ = ["AgentsPane", "ForkDialog", "describe_step", "format_call"]
