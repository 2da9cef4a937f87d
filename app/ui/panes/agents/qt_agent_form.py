"""The agent form of the Agents pane: name, model, system prompt, tools and their
folders, limits, sampling, tool-calling mode and chat template.

``spec_from_form()`` turns it into an unsaved :class:`AgentSpec` (a ConfigError
says what is wrong); ``load(spec)`` shows a saved version; the pane saves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.core.agents import AgentSpec, AgentStore, Limits, ToolGrant
from app.core.agents.builtin_tools import BUILTIN_TOOLS, ToolContext, builtin_tool, unavailable
from app.core.errors import ConfigError, DemoAIError
from app.core.infer.templates import TEMPLATE_CHOICES
from app.core.models.registry import ModelRegistry
from app.ui.panes.agents.qt_run_steps import STEP_ROLE
from app.ui.services import Services
from app.ui.widgets.pickers import ModelPicker
from app.ui.widgets.status_line import StatusLine

#: Built-in tools that work inside the granted folder.
FILE_TOOLS = {"read_file", "list_files", "search_files", "search_documents", "write_file"}


class AgentModelPicker(ModelPicker):
    """A library model picker with a "none" choice first; a model the library no longer
    has (an imported agent's) stays shown as "(not in the library)"."""

    def __init__(
        self, services: Services, formats: Iterable[str], none_label: str, prefix: str = ""
    ) -> None:
        self.none_label = none_label
        self.prefix = prefix
        super().__init__(services, formats)

    def items(self) -> Iterable[tuple[str, Any, str]]:
        yield self.none_label, None, ""
        for label, model_id, tip in super().items():
            yield self.prefix + label, model_id, tip

    def refresh(self) -> None:
        current = self.current_id()
        super().refresh()
        if current is not None and self.current_id() != current:
            self.select_or_note(current)

    def select_or_note(self, model_id: str | None) -> None:
        """Select ``model_id`` (None: the first choice), listed as missing when not a choice."""
        i = self.findData(model_id) if model_id is not None else 0
        if i < 0 and model_id is not None:
            self.addItem(f"{model_id}  (not in the library)", model_id)
            i = self.count() - 1
        self.setCurrentIndex(max(i, 0))


class AgentForm(QWidget):
    """The middle of the Agents tab: one agent version as a form."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.agents = AgentStore(services.workspace.db)
        self.registry = ModelRegistry(services.workspace)
        self.spec: AgentSpec | None = None  # the loaded (saved) version
        self.prompt_picker: QDialog | None = None
        self.name = QLineEdit()
        self.name.setPlaceholderText("letters, digits, . _ -")
        self.description = QLineEdit()
        self.model_combo = AgentModelPicker(services, ("gguf", "hf", "lora"), "(no model)")
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
        self.embedding_combo = AgentModelPicker(
            services, ("gguf", "hf"), "Keywords only (BM25)", prefix="Meaning + keywords: "
        )
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
        self.save_status = StatusLine(self)
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
        ml = QVBoxLayout(self)
        ml.setContentsMargins(0, 0, 0, 0)
        ml.addLayout(form)
        ml.addWidget(self.save_btn)
        ml.addWidget(self.save_status)
        ml.addStretch(1)

    # -- models -------------------------------------------------------------------------
    def refresh_models(self) -> None:
        """Refill both model pickers (the selections are kept)."""
        self.model_combo.refresh()
        self.embedding_combo.refresh()

    def _select_embedding(self, model_id: str | None) -> None:
        self.embedding_combo.select_or_note(model_id)

    def _select_model(self, model_id: str | None) -> None:
        self.model_combo.select_or_note(model_id)

    def clear(self) -> None:
        """Empty the form for a new agent."""
        self.spec = None
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

    def load(self, spec: AgentSpec) -> None:
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
        self.show_version(spec)

    def show_version(self, spec: AgentSpec) -> None:
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


def _spin(lo: int, hi: int, value: int, tip: str) -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setValue(value)
    s.setToolTip(tip)
    return s
