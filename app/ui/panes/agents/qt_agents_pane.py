"""The Agents pane: define agents, run them with tool approvals, browse, fork and replay runs.

Three tabs. **Agents**: agents and runs (searchable) on the left, the agent form
in the middle (every Save is a new version; the system prompt can come from the
prompt library), the run view on the right. **Prompts**: the prompt library
(versions, diff, variables, test inputs). **Installed**: agents and prompts with
their versions, bundle export and import. A run, a fork or a replay executes on a worker thread;
its steps reach the UI through Qt signals as the loop records them. When the
agent calls a side-effecting tool the worker blocks on a ``threading.Event``
while an in-pane approval bar asks the user (approve once / always for this
agent version / deny). The same bar asks, before a run starts, for an MCP server
or an imported tool grant that is not approved for this exact version (its argv
and environment, or its folder, shown). Tool results are shown marked
UNTRUSTED, as the model sees them.

The model client comes from the agent's library model through a model host
process (like ``demoai agent run``); tests set :attr:`AgentsPane.client_factory`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.agents import (
    AgentSpec,
    AgentStore,
    ChatClient,
    Limits,
    OpenAIChatClient,
    ReplayReport,
    RunResult,
    RunStore,
    Step,
    ToolCall,
    ToolGrant,
    agent_tools,
    fork_run,
    replay_run,
    run_agent,
)
from app.core.agents.approvals import ApprovalStore, Grant
from app.core.agents.builtin_tools import (
    BUILTIN_TOOLS,
    ToolContext,
    builtin_tool,
    resolve_inside,
    unavailable,
)
from app.core.agents.docindex import OpenAIEmbedder
from app.core.agents.loop import embedding_models
from app.core.agents.runs import STOPPED_STATES
from app.core.agents.tools import ToolError
from app.core.errors import ConfigError, DemoAIError
from app.core.infer.templates import TEMPLATE_CHOICES
from app.core.models.registry import ModelRegistry
from app.ui.panes.agents.qt_agent_store import AgentStoreView, ask_export_path, export_bundle
from app.ui.panes.agents.qt_prompt_library import PromptLibrary
from app.ui.qt_errors import show_error
from app.ui.services import Services

#: Built-in tools that work inside the granted folder.
FILE_TOOLS = {"read_file", "list_files", "search_files", "search_documents", "write_file"}
STEP_ROLE = Qt.ItemDataRole.UserRole
EDITABLE_KINDS = ("user", "model", "tool_result")
ERROR_COLOR = "#b00020"
STOP_COLOR = "#44546a"  # a run that reached a limit: neutral, not the error red


def format_call(tool: str, arguments: dict[str, Any] | None, width: int = 80) -> str:
    """``write_file(path='a.txt', content='hello…')`` with long values shortened."""
    parts = []
    for k, v in (arguments or {}).items():
        r = repr(v)
        parts.append(f"{k}={r if len(r) <= width else r[: width - 1] + '…'}")
    return f"{tool}({', '.join(parts)})"


def describe_step(step: Step) -> tuple[str, str]:
    """(label, one-line content) of a step for the run view."""
    first = " ".join(step.content.split())[:300]
    if step.kind == "system":
        n = len(step.data.get("tools") or [])
        mode = {"native": " · native tool calls", "json": " · JSON tool protocol"}
        return "system", f"system prompt and {n} tool(s){mode.get(step.data.get('tool_mode'), '')}"
    if step.kind == "model":
        reply = step.data.get("reply")
        if isinstance(reply, dict) and "final" in reply:
            return "final answer", str(reply["final"])
        if isinstance(reply, dict) and reply.get("tool"):
            calls = [reply, *(step.data.get("more_calls") or [])]
            label = "tool call" if len(calls) == 1 else f"tool calls ({len(calls)})"
            return label, "; ".join(format_call(str(c["tool"]), c.get("arguments")) for c in calls)
        return "model (unusable reply)", f"{step.data.get('problem', '')}: {first}"
    if step.kind == "approval":
        who = step.data.get("by", "")
        return (
            f"approval: {step.content}",
            f"{format_call(step.tool or '?', step.arguments)} ({who})",
        )
    if step.kind == "tool_result":
        if step.data.get("repeated"):
            n = step.data["repeated"]
            return f"repeated call #{n} · not run", f"[{step.tool}] {first}"
        flag = " · error" if step.data.get("error") else ""
        return f"tool result · UNTRUSTED{flag}", f"[{step.tool}] {first}"
    if step.kind == "stop":
        return "stopped", first
    return step.kind, first


def call_effect(spec: AgentSpec, call: ToolCall) -> str | None:
    """What a side-effecting call will do, for the approval bar; None when we cannot tell.

    For ``write_file``: "creates X" or "OVERWRITES existing X (N bytes)", X resolved in
    the agent's granted folder as the tool resolves it.
    """
    if call.tool != "write_file":
        return None
    grant = next((t for t in spec.tools if t.name == "write_file"), None)
    rel = call.arguments.get("path")
    if grant is None or not grant.folder or not isinstance(rel, str):
        return None
    root = Path(grant.folder).expanduser()
    try:
        target = resolve_inside(root, rel)
    except ToolError as exc:
        return f"call will be refused: {exc.message}"
    shown = target.relative_to(root.resolve()).as_posix()
    if target.is_dir():
        return f"call will fail: {shown} is a folder"
    if target.exists():
        size = target.stat().st_size
        return f"OVERWRITES existing {shown} ({size} bytes) in {root}"
    return f"creates {shown} in {root}"


class _Bridge(QObject):
    """Signals emitted from the worker thread, delivered on the UI thread."""

    step = Signal(object)  # Step
    approval = Signal(object)  # ToolCall, or a Grant to approve before the run starts
    done = Signal(object, str)  # RunResult | ReplayReport | None, error text


class ForkDialog(QDialog):
    """Edit a step's content before forking (or keep it to continue from the step)."""

    def __init__(self, step: Step, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.step = step
        self.setWindowTitle("Fork from this step")
        lay = QVBoxLayout(self)
        label, _ = describe_step(step)
        self.editable = step.kind in EDITABLE_KINDS
        lay.addWidget(
            QLabel(
                f"Fork from <b>{label}</b>. Edit the content; the run continues after it "
                "on a new branch."
                if self.editable
                else f"Continue the run from <b>{label}</b> on a new branch."
            )
        )
        self.editor = QPlainTextEdit(step.content)
        self.editor.setReadOnly(not self.editable)
        lay.addWidget(self.editor)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setText("Fork and run")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)
        self.resize(560, 320)

    def content(self) -> str | None:
        """The edited content, or None to continue from the step unchanged."""
        text = self.editor.toPlainText()
        if not self.editable or text == self.step.content:
            return None
        return text


class AgentsPane(QWidget):
    """Agents and runs on the left, the agent form in the middle, the run view on the right."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        db = services.workspace.db
        self.agents = AgentStore(db)
        self.runs = RunStore(db)
        self.registry = ModelRegistry(services.workspace)
        self.host = services.host
        self._leases: list[Any] = []  # the models a run holds in the shared host
        #: spec -> model client; None uses the agent's library model through a host process.
        self.client_factory: Callable[[AgentSpec], ChatClient] | None = None
        #: Tests: embedding functions by model id (else the pane's model host serves them).
        self.embedder_factory: Callable[[str], Any] | None = None
        self._embedder_for: Callable[[str], Any] | None = None
        self.spec: AgentSpec | None = None  # the loaded (saved) version
        self.run_id: str | None = None  # the run shown
        self.fork_dialog: ForkDialog | None = None
        self.prompt_picker: QDialog | None = None
        self.last_replay: ReplayReport | None = None
        self._worker: threading.Thread | None = None
        self._closing = threading.Event()
        self._pending: tuple[ToolCall | Grant, threading.Event, list[str]] | None = None
        self._bridge = _Bridge(self)
        self._bridge.step.connect(self._on_step)
        self._bridge.approval.connect(self._on_approval)
        self._bridge.done.connect(self._on_done)

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

        # -- middle: the agent form
        self.name = QLineEdit()
        self.name.setPlaceholderText("letters, digits, . _ -")
        self.description = QLineEdit()
        self.model_combo = QComboBox()
        self.system_prompt = QPlainTextEdit("You are a helpful assistant.")
        self.system_prompt.setMaximumHeight(110)
        self.prompt_btn = QPushButton("From library…")
        self.prompt_btn.setToolTip("Replace the system prompt with a prompt from the library.")
        self.prompt_btn.clicked.connect(self.pick_system_prompt)
        prompt_box = QVBoxLayout()
        prompt_box.addWidget(self.system_prompt)
        prompt_row = QHBoxLayout()
        prompt_row.addStretch(1)
        prompt_row.addWidget(self.prompt_btn)
        prompt_box.addLayout(prompt_row)
        self.tool_list = QListWidget()
        self.tool_list.setMaximumHeight(160)
        for name in BUILTIN_TOOLS:
            tool = builtin_tool(name, ToolContext())
            kind = "side effect: asks approval" if tool.side_effect else "read-only"
            where = ", in the granted folder" if name in FILE_TOOLS else ""
            item = QListWidgetItem(f"{name}  ({kind}{where})")
            item.setData(STEP_ROLE, name)
            item.setToolTip(tool.description)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
            if tool.side_effect:
                item.setForeground(QBrush(QColor("#a15c00")))
            reason = unavailable(name)
            if reason is not None:  # shown, greyed, with what to install; never run weaker
                item.setText(f"{name}  (unavailable here)")
                item.setToolTip(reason)
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled)
            self.tool_list.addItem(item)
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("folder the file tools may use (nothing outside it)")
        self.folder_btn = QPushButton("Choose…")
        self.folder_btn.clicked.connect(self._choose_folder)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(self.folder_btn)
        # run_python gets its own folder (mounted at /data in the sandbox), read-only
        # unless "writable" is ticked.
        self.py_folder = QLineEdit()
        self.py_folder.setPlaceholderText("folder run_python sees at /data (optional)")
        self.py_folder_btn = QPushButton("Choose…")
        self.py_folder_btn.clicked.connect(self._choose_py_folder)
        self.py_writable = QCheckBox("writable")
        self.py_writable.setToolTip(
            "Unticked, the code can only read the folder. Ticked, it can create, change "
            "and delete files there (a side effect: approved like write_file)."
        )
        py_row = QHBoxLayout()
        py_row.addWidget(self.py_folder, 1)
        py_row.addWidget(self.py_folder_btn)
        py_row.addWidget(self.py_writable)
        self.max_steps = _spin(1, 200, Limits.max_steps, "model turns per run")
        self.max_tokens = _spin(1, 32768, Limits.max_tokens, "tokens per model reply")
        self.timeout = QDoubleSpinBox()
        self.timeout.setRange(1.0, 24 * 3600.0)
        self.timeout.setValue(Limits.timeout_s)
        self.timeout.setSuffix(" s")
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.seed = _spin(-1, 2**31 - 1, 0, "sampling seed; 'random' picks one per run")
        self.seed.setSpecialValueText("random")
        self.embedding_combo = QComboBox()
        self.embedding_combo.setToolTip(
            "search_documents: with an embedding model it finds passages by meaning "
            "(embeddings fused with keyword ranking); without, by keywords (BM25) only."
        )
        self.tool_mode = QComboBox()
        for label, mode in (
            ("Automatic: native when the model's template has a tool format", "auto"),
            ("Native (the chat template's own tool format)", "native"),
            ("Constrained JSON (works with every model)", "json"),
        ):
            self.tool_mode.addItem(label, mode)
        self.tool_mode.setToolTip(
            "How the model calls tools. Native needs a chat template with tools "
            "(e.g. Qwen, Llama 3.1, or the ChatML-with-tools template below)."
        )
        self.template = QComboBox()
        for label, preset_name in TEMPLATE_CHOICES:
            self.template.addItem(label, preset_name)
        self.template.setToolTip("The chat template the local model host uses for this agent.")
        self.version_label = QLabel("not saved")
        self.save_btn = QPushButton("Save (new version)")
        self.save_btn.clicked.connect(self.save_agent)
        form = QFormLayout()
        form.addRow("Name", self.name)
        form.addRow("Description", self.description)
        form.addRow("Model", self.model_combo)
        form.addRow("System prompt", prompt_box)
        form.addRow("Tools", self.tool_list)
        form.addRow("Granted folder", folder_row)
        form.addRow("Python folder", py_row)
        form.addRow("Document search", self.embedding_combo)
        form.addRow("Max steps", self.max_steps)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Timeout", self.timeout)
        form.addRow("Temperature", self.temperature)
        form.addRow("Seed", self.seed)
        form.addRow("Tool calling", self.tool_mode)
        form.addRow("Chat template", self.template)
        form.addRow("Version", self.version_label)
        middle = QWidget()
        ml = QVBoxLayout(middle)
        ml.setContentsMargins(0, 0, 0, 0)
        ml.addLayout(form)
        ml.addWidget(self.save_btn)
        ml.addStretch(1)

        # -- right: run input, approval bar, run view
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("What should the agent do?")
        self.input.setMaximumHeight(80)
        self.run_btn = QPushButton("Run")
        self.run_btn.clicked.connect(self.run)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.approval_bar = QFrame()
        self.approval_bar.setFrameShape(QFrame.Shape.StyledPanel)
        self.approval_bar.setStyleSheet("QFrame { background: #fff4d6; }")
        self.approval_text = QLabel("")
        self.approval_text.setWordWrap(True)
        self.approval_text.setTextFormat(Qt.TextFormat.PlainText)
        self.approve_once_btn = QPushButton("Approve once")
        self.approve_always_btn = QPushButton("Always for this version")
        self.approve_always_btn.setToolTip(
            "Remember for this agent and this exact version; any change of the agent asks again."
        )
        self.deny_btn = QPushButton("Deny")
        self.approve_once_btn.clicked.connect(lambda: self.answer_approval("once"))
        self.approve_always_btn.clicked.connect(lambda: self.answer_approval("always"))
        self.deny_btn.clicked.connect(lambda: self.answer_approval("deny"))
        bar = QVBoxLayout(self.approval_bar)
        bar.addWidget(self.approval_text)
        buttons = QHBoxLayout()
        for b in (self.approve_once_btn, self.approve_always_btn, self.deny_btn):
            buttons.addWidget(b)
        buttons.addStretch(1)
        bar.addLayout(buttons)
        self.approval_bar.hide()
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Step", "Content"])
        self.tree.setColumnWidth(0, 220)
        self.tree.currentItemChanged.connect(self._step_selected)
        self.detail = QPlainTextEdit()
        self.detail.setReadOnly(True)
        self.detail.setMaximumHeight(140)
        self.fork_btn = QPushButton("Fork from here…")
        self.fork_btn.clicked.connect(self.fork_selected)
        self.replay_btn = QPushButton("Replay")
        self.replay_btn.setToolTip(
            "Run the same agent version again with the same seed, answering tool calls from "
            "the recording, and show whether it went the same way."
        )
        self.replay_btn.clicked.connect(self.replay_selected)
        self.export_run_btn = QPushButton("Export run…")
        self.export_run_btn.setToolTip("Write this run (every branch) as a bundle.")
        self.export_run_btn.clicked.connect(lambda: self.export_run())
        self.replay_label = QLabel("")
        self.replay_label.setWordWrap(True)
        self.replay_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.replay_label.hide()
        self.final_label = QLabel("")
        self.final_label.setWordWrap(True)
        self.final_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.input)
        row = QHBoxLayout()
        row.addWidget(self.run_btn)
        row.addWidget(self.status, 1)
        rl.addLayout(row)
        rl.addWidget(self.approval_bar)
        rl.addWidget(self.tree, 3)
        rl.addWidget(self.detail, 1)
        frow = QHBoxLayout()
        frow.addWidget(self.fork_btn)
        frow.addWidget(self.replay_btn)
        frow.addStretch(1)
        frow.addWidget(self.export_run_btn)
        rl.addLayout(frow)
        rl.addWidget(self.replay_label)
        rl.addWidget(self.final_label)

        split = QSplitter()
        for w in (left, middle, right):
            split.addWidget(w)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 2)
        split.setStretchFactor(2, 3)

        # -- the prompt library and the installed agents/prompts
        self.store_view = AgentStoreView(db)
        self.prompt_library = PromptLibrary(db)
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

        services.bus.models_changed.connect(self.refresh_models)
        self.refresh_models()
        self.refresh_agents()
        self.refresh_runs()
        self._set_busy(False)

    # -- models -------------------------------------------------------------------------
    def refresh_models(self) -> None:
        emb_current = self.embedding_combo.currentData()
        self.embedding_combo.blockSignals(True)
        self.embedding_combo.clear()
        self.embedding_combo.addItem("Keywords only (BM25)", None)
        for m in self.registry.list():
            if m.format in ("gguf", "hf"):
                self.embedding_combo.addItem(f"Meaning + keywords: {m.name}  ({m.format})", m.id)
        self._select_embedding(emb_current)
        self.embedding_combo.blockSignals(False)
        current = self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem("(no model)", None)
        for m in self.registry.list():
            if m.format in ("gguf", "hf", "lora"):
                self.model_combo.addItem(f"{m.name}  ({m.format})", m.id)
        self._select_model(current)
        self.model_combo.blockSignals(False)

    @staticmethod
    def _select_in(combo: QComboBox, model_id: str | None) -> None:
        """Select ``model_id`` in a model combo (listed as missing when not in the library)."""
        i = combo.findData(model_id) if model_id is not None else 0
        if i < 0 and model_id is not None:
            combo.addItem(f"{model_id}  (not in the library)", model_id)
            i = combo.count() - 1
        combo.setCurrentIndex(max(i, 0))

    def _select_embedding(self, model_id: str | None) -> None:
        self._select_in(self.embedding_combo, model_id)

    def _select_model(self, model_id: str | None) -> None:
        self._select_in(self.model_combo, model_id)

    # -- agents -------------------------------------------------------------------------
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
        self.spec = None
        self.agent_list.clearSelection()
        self.name.clear()
        self.name.setReadOnly(False)
        self.description.clear()
        self.system_prompt.setPlainText("You are a helpful assistant.")
        self._select_model(None)
        for i in range(self.tool_list.count()):
            self.tool_list.item(i).setCheckState(Qt.CheckState.Unchecked)
        self.folder.clear()
        self.py_folder.clear()
        self.py_writable.setChecked(False)
        lim = Limits()
        self.max_steps.setValue(lim.max_steps)
        self.max_tokens.setValue(lim.max_tokens)
        self.timeout.setValue(lim.timeout_s)
        self.temperature.setValue(0.0)
        self.seed.setValue(0)
        self.tool_mode.setCurrentIndex(0)
        self.embedding_combo.setCurrentIndex(0)
        self.template.setCurrentIndex(0)
        self.version_label.setText("not saved")
        self.name.setFocus()

    def load_agent(self, spec: AgentSpec) -> None:
        """Show a saved agent version in the form."""
        self.spec = spec
        self.name.setText(spec.name)
        self.description.setText(spec.description)
        self.system_prompt.setPlainText(spec.system_prompt)
        self._select_model(spec.model_id)
        granted = {t.name: t for t in spec.tools}
        folders = [t.folder for t in spec.tools if t.folder and t.name in FILE_TOOLS]
        self.folder.setText(folders[0] if folders else "")
        py = granted.get("run_python")
        self.py_folder.setText((py.folder or "") if py else "")
        self.py_writable.setChecked(bool(py and py.writable))
        search = granted.get("search_documents")
        self._select_embedding(search.embedding_model if search else None)
        for i in range(self.tool_list.count()):
            it = self.tool_list.item(i)
            on = it.data(STEP_ROLE) in granted
            it.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
        self.max_steps.setValue(spec.limits.max_steps)
        self.max_tokens.setValue(spec.limits.max_tokens)
        self.timeout.setValue(spec.limits.timeout_s)
        self.temperature.setValue(float(spec.sampling.get("temperature", 0.0) or 0.0))
        self.seed.setValue(spec.seed if spec.seed is not None else -1)
        self.tool_mode.setCurrentIndex(max(0, self.tool_mode.findData(spec.tool_mode)))
        self.template.setCurrentIndex(max(0, self.template.findData(spec.template)))
        self._show_version(spec)

    def _show_version(self, spec: AgentSpec) -> None:
        versions = self.agents.versions(spec.name)
        extra = f" (versions: {', '.join(map(str, versions))})" if len(versions) > 1 else ""
        mcp = f" · MCP servers: {', '.join(s.name for s in spec.mcp_servers)}"
        self.version_label.setText(f"v{spec.version}{extra}{mcp if spec.mcp_servers else ''}")

    def spec_from_form(self) -> AgentSpec:
        """An unsaved spec from the form; ConfigError says what is wrong."""
        same = self.spec if self.spec and self.spec.name == self.name.text().strip() else None
        folder = self.folder.text().strip() or None
        tools = []
        for i in range(self.tool_list.count()):
            it = self.tool_list.item(i)
            if it.checkState() == Qt.CheckState.Checked:
                name = str(it.data(STEP_ROLE))
                if name in FILE_TOOLS and folder is None:
                    raise ConfigError(
                        f"The tool {name} needs a granted folder.", "Choose the folder it may use."
                    )
                if name == "run_python":
                    tools.append(self._python_grant())
                    continue
                emb = self.embedding_combo.currentData() if name == "search_documents" else None
                tools.append(ToolGrant(name, folder if name in FILE_TOOLS else None, emb))
        model_id = self.model_combo.currentData()
        sha = None
        if model_id is not None:
            try:
                sha = self.registry.get(model_id).sha256
            except DemoAIError:
                sha = self.spec.model_sha256 if self.spec is not None else None
        sampling: dict[str, Any] = dict(self.spec.sampling) if self.spec is not None else {}
        sampling["temperature"] = round(self.temperature.value(), 3)
        if self.seed.value() >= 0:
            sampling["seed"] = self.seed.value()
        else:
            sampling.pop("seed", None)
        return AgentSpec(
            name=self.name.text().strip(),
            description=self.description.text().strip(),
            model_id=model_id,
            model_sha256=sha,
            system_prompt=self.system_prompt.toPlainText(),
            sampling=sampling,
            tools=tuple(tools),
            limits=Limits(self.max_steps.value(), self.max_tokens.value(), self.timeout.value()),
            mcp_servers=same.mcp_servers if same is not None else (),
            tool_mode=str(self.tool_mode.currentData()),
            template=self.template.currentData(),
        )

    def _python_grant(self) -> ToolGrant:
        folder = self.py_folder.text().strip() or None
        writable = self.py_writable.isChecked()
        if writable and folder is None:
            raise ConfigError(
                "run_python is writable but has no folder.",
                "Choose the Python folder it may write in, or untick 'writable'.",
            )
        return ToolGrant("run_python", folder, writable=writable)

    def save_agent(self) -> AgentSpec | None:
        """Save the form as the agent's next version."""
        try:
            saved = self.agents.save(self.spec_from_form())
        except DemoAIError as exc:
            show_error(self, "Cannot save the agent", exc)
            return None
        self.spec = saved
        self.refresh_agents()
        self.store_view.refresh()
        self._show_version(saved)
        self.status.setText(f"Saved {saved.name} v{saved.version}.")
        return saved

    def pick_system_prompt(self) -> QDialog:
        """Open the prompt picker; its rendered text replaces the system prompt."""
        from app.ui.qt_prompt_picker import open_prompt_picker

        self.prompt_picker = open_prompt_picker(
            self,
            self.services.workspace.db,
            self.system_prompt.setPlainText,
            title="System prompt from the library",
            action="Use as system prompt",
        )
        return self.prompt_picker

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

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(
            self, "Folder the agent may use", self.folder.text()
        )
        if path:
            self.folder.setText(path)

    def _choose_py_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(
            self, "Folder run_python sees at /data", self.py_folder.text()
        )
        if path:
            self.py_folder.setText(path)

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
            self.replay_label.hide()
            self.show_run(item.data(STEP_ROLE))

    # -- the run view -------------------------------------------------------------------
    def show_run(self, run_id: str, select: str | None = None) -> None:
        """Draw the run's whole step tree; a step with several children shows its branches."""
        self.run_id = run_id
        run = self.runs.get(run_id)
        steps = self.runs.steps(run_id)
        kids: dict[str | None, list[Step]] = {}
        for s in steps:
            kids.setdefault(s.parent_id, []).append(s)
        on_leaf_path = {s.id for s in self.runs.path(run_id)} if run.leaf_id else set()
        self.tree.blockSignals(True)
        self.tree.clear()
        items: dict[str, QTreeWidgetItem] = {}

        def chain(parent: QTreeWidgetItem | None, step: Step) -> None:
            cur: Step | None = step
            while cur is not None:
                label, text = describe_step(cur)
                item = QTreeWidgetItem([label, text])
                item.setData(0, STEP_ROLE, cur.id)
                item.setToolTip(1, cur.content[:2000])
                if cur.kind == "tool_result" and not cur.data.get("repeated"):
                    for col in (0, 1):
                        item.setForeground(col, QBrush(QColor("#a15c00")))
                elif cur.kind == "error":
                    item.setForeground(0, QBrush(QColor(ERROR_COLOR)))
                elif cur.kind in ("stop", "tool_result"):  # a limit reached, a loop noticed
                    item.setForeground(0, QBrush(QColor(STOP_COLOR)))
                if parent is None:
                    self.tree.addTopLevelItem(item)
                else:
                    parent.addChild(item)
                items[cur.id] = item
                children = kids.get(cur.id, [])
                if len(children) == 1:
                    cur = children[0]
                    continue
                for n, child in enumerate(children, 1):
                    shown = " (shown)" if child.id in on_leaf_path else ""
                    branch = QTreeWidgetItem([f"branch {n}/{len(children)}{shown}", ""])
                    item.addChild(branch)
                    chain(branch, child)
                    branch.setExpanded(True)
                cur = None

        for root in kids.get(None, []):
            chain(None, root)
        self.tree.expandAll()
        target = items.get(select or run.leaf_id or "")
        if target is not None:
            self.tree.setCurrentItem(target)
            self.tree.scrollToItem(target)
        self.tree.blockSignals(False)
        self._step_selected(self.tree.currentItem())
        self._show_outcome(run.status, run.final, run.error)

    def _show_outcome(self, status: str, final: str | None, error: str | None) -> None:
        self.final_label.setStyleSheet("")
        if status == "running":
            self.final_label.setText("Running…")
        elif final is not None:
            self.final_label.setText(f"Final answer: {final}")
        elif status in STOPPED_STATES:
            self.final_label.setText(f"Run stopped: {error or 'it reached a limit'}.")
            self.final_label.setStyleSheet(f"color: {STOP_COLOR}")
        else:
            self.final_label.setText(f"Run {status}: {error or ''}")
            self.final_label.setStyleSheet(f"color: {ERROR_COLOR}")

    def selected_step(self) -> Step | None:
        item = self.tree.currentItem()
        sid = item.data(0, STEP_ROLE) if item is not None else None
        if not sid or self.run_id is None:
            return None
        return self.runs.step(sid, run_id=self.run_id)

    def _step_selected(self, item: QTreeWidgetItem | None, _: Any = None) -> None:
        step = self.selected_step()
        if step is None:
            self.detail.clear()
        else:
            head = describe_step(step)[0]
            if step.tool:
                head += f"  {format_call(step.tool, step.arguments, 200)}"
            self.detail.setPlainText(f"[{head}]\n{step.content}")
        self._set_busy(self.busy)

    # -- running ------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _set_busy(self, busy: bool) -> None:
        self.run_btn.setEnabled(not busy)
        self.fork_btn.setEnabled(not busy and self.selected_step() is not None)
        self.save_btn.setEnabled(not busy)
        self.replay_btn.setEnabled(not busy and self.run_id is not None)
        self.export_run_btn.setEnabled(self.run_id is not None)

    def make_client(self, spec: AgentSpec) -> ChatClient:
        """The model client for ``spec`` (called on the worker thread)."""
        if self.client_factory is not None:
            return self.client_factory(spec)
        if not spec.model_id:
            raise ConfigError(
                f"Agent {spec.name} names no model.", "Choose a library model and save."
            )
        rec = self.registry.get(spec.model_id)
        if spec.model_sha256 and rec.sha256 != spec.model_sha256:
            raise ConfigError(
                f"The library model {rec.id} is not the one agent {spec.name} was made with.",
                "Import the exact model, or save a new agent version for this one.",
            )
        # Leased for the run (released when it ends): the shared host keeps them loaded.
        leases = [self.host.lease(rec, spec.template)]
        self._leases.extend(leases)
        for mid in embedding_models(spec):
            self._leases.append(self.host.lease(self.registry.get(mid)))
        lease = leases[0]
        self._embedder_for = lambda mid: OpenAIEmbedder(lease.base_url, lease.token, mid)
        return OpenAIChatClient(lease.base_url, lease.token, model=lease.model)

    def _release_leases(self) -> None:
        leases, self._leases = self._leases, []
        for lease in leases:
            self.host.release(lease)

    def make_tools(self, spec: AgentSpec) -> Any:
        """The agent's tools (a context manager); call after :meth:`make_client`.

        An MCP server or tool grant not approved for this exact version is asked
        in the approval bar first; denied, it stays inactive for this run.
        """
        gate = ApprovalStore(self.services.workspace.db).gate(spec, self._approve_grant)
        return agent_tools(
            spec,
            embedder_for=self.embedder_factory or self._embedder_for,
            index_dir=self.services.workspace.root / "agents" / "index",
            gate=gate,
        )

    def run(self) -> None:
        """Run the saved agent on the input text (saving the form first if it changed)."""
        if self.busy:
            return
        text = self.input.toPlainText().strip()
        if not text:
            self.status.setText("Type what the agent should do.")
            return
        try:
            form = self.spec_from_form()
        except DemoAIError as exc:
            show_error(self, "Cannot run the agent", exc)
            return
        spec = self.spec
        if spec is None or spec.content_dict() != form.content_dict():
            spec = self.save_agent()
            if spec is None:
                return
        self.run_id = None
        self.replay_label.hide()
        self.tree.clear()
        self.detail.clear()
        self.final_label.setText("Running…")
        saved = spec

        def work(approve: Callable[[ToolCall], str], on_step: Callable[[Step], None]) -> Any:
            client = self.make_client(saved)
            with self.make_tools(saved) as tools:
                return run_agent(
                    saved, text, client=client, runs=self.runs, tools=tools,
                    approve=approve, agents=self.agents, on_step=on_step,
                )  # fmt: skip

        self._start(f"Running {spec.name} v{spec.version}…", work)

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
        spec = self.runs.get(run_id).agent_spec()
        self.final_label.setText("Running…")

        def work(approve: Callable[[ToolCall], str], on_step: Callable[[Step], None]) -> Any:
            client = self.make_client(spec)
            with self.make_tools(spec) as tools:
                return fork_run(
                    run_id, step_id, client=client, runs=self.runs, tools=tools,
                    content=content, approve=approve, agents=self.agents, on_step=on_step,
                )  # fmt: skip

        self.run_id = run_id
        self._start(f"Forking run {run_id}…", work)

    def replay_selected(self) -> None:
        """Replay the shown run on the worker thread; the outcome says where it diverged."""
        if self.busy or self.run_id is None:
            return
        run_id = self.run_id
        spec = self.runs.get(run_id).agent_spec()
        self.replay_label.hide()
        self.final_label.setText("Replaying…")

        def work(approve: Callable[[ToolCall], str], on_step: Callable[[Step], None]) -> Any:
            return replay_run(run_id, client=self.make_client(spec), runs=self.runs)

        self._start(f"Replaying run {run_id}…", work)

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
        self.status.setText(f"Exported run {self.run_id} to {out}.")
        return out

    def _show_replay(self, report: ReplayReport) -> None:
        self.last_replay = report
        original = report.original.id
        if report.identical:
            text = f"Replay of run {original}: identical, every step matches the recording."
            color = "#116329"
        else:
            assert report.divergence is not None
            text = f"Replay of run {original} diverged at {report.divergence.describe()}"
            color = "#b00020"
        self.replay_label.setText(text)
        self.replay_label.setStyleSheet(f"color: {color}")
        self.replay_label.show()
        self.run_id = report.replay.id
        div = report.divergence
        select = div.actual.id if div is not None and div.actual is not None else None
        self.show_run(report.replay.id, select=select)
        self.status.setText(f"Replay {report.replay.id}: {report.replay.status}.")

    def _start(self, label: str, work: Callable[..., Any]) -> None:
        bridge = self._bridge

        def main() -> None:
            try:
                result = work(self._approve, bridge.step.emit)
            except DemoAIError as exc:
                bridge.done.emit(None, exc.message + (f" {exc.hint}" if exc.hint else ""))
            except Exception as exc:  # shown in the pane, never lost
                bridge.done.emit(None, f"{type(exc).__name__}: {exc}")
            else:
                bridge.done.emit(result, "")

        self.status.setText(label)
        self._closing.clear()
        self._worker = threading.Thread(target=main, name="agent-run", daemon=True)
        self._set_busy(True)
        self._worker.start()

    def _approve(self, call: ToolCall | Grant) -> str:
        """The loop's approver (worker thread): ask the UI and wait for the answer."""
        event = threading.Event()
        answer: list[str] = []
        self._pending = (call, event, answer)
        self._bridge.approval.emit(call)
        while not event.wait(0.1):
            if self._closing.is_set():
                return "deny"
        return answer[0] if answer else "deny"

    def _approve_grant(self, grant: Grant) -> str:
        """The gate's asker (worker thread): an MCP server or a tool grant, before the run."""
        return self._approve(grant)

    def _on_approval(self, call: ToolCall | Grant) -> None:
        if isinstance(call, Grant):
            self.approval_text.setText(
                f"This agent version needs your approval before it can use this:\n"
                f"{call.describe()}\n"
                "Approve once (this run), always for this version, or deny (it stays inactive)."
            )
            self.approval_bar.show()
            what = "MCP server" if call.kind == "mcp_server" else "tool"
            self.status.setText(f"Waiting for your approval of the {what} {call.name}…")
            self.approve_once_btn.setFocus()
            return
        run = self.runs.get(self.run_id) if self.run_id else None
        agent = run.agent if run is not None else "The agent"
        effect = call_effect(run.agent_spec(), call) if run is not None else None
        lines = [f"Agent {agent} wants to call {format_call(call.tool, call.arguments, 400)}"]
        if effect:
            lines.append(f"This {effect}.")
        lines.append("This tool changes things outside the conversation.")
        self.approval_text.setText("\n".join(lines))
        self.approval_bar.show()
        self.status.setText(f"Waiting for your approval of {call.tool}…")
        self.approve_once_btn.setFocus()

    def answer_approval(self, decision: str) -> None:
        """Answer the pending approval: 'once', 'always' or 'deny'."""
        pending, self._pending = self._pending, None
        self.approval_bar.hide()
        if pending is None:
            return
        call, event, answer = pending
        answer.append(decision)
        event.set()
        name = call.name if isinstance(call, Grant) else call.tool
        self.status.setText(f"{name}: {decision}.")

    def _on_step(self, step: Step) -> None:
        if self.run_id != step.run_id:
            self.run_id = step.run_id
            self.refresh_runs()
        self.show_run(step.run_id, select=step.id)
        self.final_label.setText("Running…")

    def _on_done(self, result: RunResult | ReplayReport | None, error: str) -> None:
        if self._worker is not None:
            self._worker.join(timeout=5)
        self._worker = None
        self._release_leases()
        self.approval_bar.hide()
        self._pending = None
        if isinstance(result, ReplayReport):
            self._show_replay(result)
        elif result is not None:
            self.run_id = result.run.id
            self.show_run(result.run.id)
            self.status.setText(f"Run {result.run.id}: {result.status}.")
            self.replay_label.hide()
        else:
            self.status.setText(f"The run could not go on: {error}")
            if self.run_id is not None:
                self.show_run(self.run_id)
            else:
                self.final_label.setText(f"Failed: {error}")
        self.refresh_runs()
        self._set_busy(False)

    def shutdown(self) -> None:
        """Deny a pending approval, wait for the worker, give back its models (the window
        stops the shared host)."""
        self._closing.set()
        worker = self._worker
        if worker is not None:
            worker.join(timeout=10)
            if not worker.is_alive():
                self._worker = None
        self.approval_bar.hide()
        self._pending = None
        self._release_leases()


def _spin(lo: int, hi: int, value: int, tip: str) -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setValue(value)
    s.setToolTip(tip)
    return s


__all__ = ["AgentsPane", "ForkDialog", "describe_step", "format_call"]
