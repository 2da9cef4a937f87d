"""Datasets › Generate…: self-instruct or paraphrase rows with a library model, as a job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPlainTextEdit,
    QSpinBox,
    QVBoxLayout,
)

from app.core.errors import DemoAIError
from app.ui.widgets.pickers import ModelPicker

if TYPE_CHECKING:
    from app.ui.panes.datasets.qt_datasets_pane import DatasetsPane


class GenerateDialog(QDialog):
    """Self-instruct or paraphrase augmentation with a library model, as a background job."""

    def __init__(self, pane: DatasetsPane) -> None:
        super().__init__(pane)
        self.setWindowTitle("Generate synthetic rows")
        self.pane = pane
        columns = pane.dataset.columns if pane.dataset else []
        self.model = ModelPicker(pane.services)  # names, not ids; follows the library
        self.model.setObjectName("genModel")
        self.mode = QComboBox()
        self.mode.setObjectName("genMode")
        self.mode.addItem("Self-instruct: new instructions from these seed tasks", "self_instruct")
        self.mode.addItem("Augment: paraphrases of a column per row", "augment")
        self.count = QSpinBox()
        self.count.setRange(1, 100_000)
        self.count.setValue(10)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.05, 2.0)
        self.temperature.setSingleStep(0.05)
        self.temperature.setValue(0.8)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(8, 4096)
        self.max_tokens.setValue(64)

        def col_box(default: str, optional: bool = False) -> QComboBox:
            box = QComboBox()
            if optional:
                box.addItem("(none)", None)
            for c in columns:
                box.addItem(c, c)
            i = box.findData(default)
            if i >= 0:
                box.setCurrentIndex(i)
            return box

        self.instruction_col = col_box("instruction")
        self.input_col = col_box("input", optional=True)
        self.output_col = col_box("output")
        # Augment: the built-in few-shot prompt, or the user's ({{text}} = the row's text).
        self.prompt_pick = QComboBox()
        self.prompt_pick.setObjectName("genPromptPick")
        self.prompt_pick.addItem("Built-in few-shot paraphrase prompt", None)
        from app.core.agents.prompts import PromptStore, variables

        for p in PromptStore(pane.services.workspace.db).list():
            if variables(p.text) == ["text"]:
                self.prompt_pick.addItem(f"Library: {p.name} v{p.version}", p.text)
        self.prompt_pick.setToolTip(
            "Library prompts whose only variable is {{text}} are listed (Agents → Prompts)."
        )
        self.prompt_text = QPlainTextEdit()
        self.prompt_text.setObjectName("genPromptText")
        self.prompt_text.setPlaceholderText(
            "Leave empty for the built-in prompt, or write one with {{text}}, e.g.\n"
            "Rewrite this support ticket in other words: {{text}}\nRewritten:"
        )
        self.prompt_text.setMaximumHeight(90)
        self.prompt_pick.currentIndexChanged.connect(
            lambda _i: self.prompt_text.setPlainText(self.prompt_pick.currentData() or "")
        )
        self.count_label = QLabel()
        self.error = QLabel()
        self.error.setStyleSheet("color:#c0392b")
        form = QFormLayout()
        form.addRow("Model", self.model)
        form.addRow("Mode", self.mode)
        form.addRow(self.count_label, self.count)
        form.addRow("Seed", self.seed)
        form.addRow("Temperature", self.temperature)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Instruction / augmented column", self.instruction_col)
        form.addRow("Input column", self.input_col)
        form.addRow("Output column", self.output_col)
        form.addRow("Paraphrase prompt", self.prompt_pick)
        form.addRow("", self.prompt_text)
        buttons = QDialogButtonBox()
        self.ok_btn = buttons.addButton("Generate", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(
            QLabel("Rows are generated in the background and land as a new version for review.")
        )
        lay.addLayout(form)
        lay.addWidget(self.error)
        lay.addWidget(buttons)
        self.mode.currentIndexChanged.connect(self._mode_changed)
        self._mode_changed()

    def _mode_changed(self, *_: object) -> None:
        synth = self.mode.currentData() == "self_instruct"
        self.count_label.setText("New instructions" if synth else "Paraphrases per row")
        self.count.setValue(10 if synth else 1)
        self.temperature.setValue(0.8 if synth else 0.9)
        self.input_col.setEnabled(synth)
        self.output_col.setEnabled(synth)
        self.prompt_pick.setEnabled(not synth)
        self.prompt_text.setEnabled(not synth)

    def job_spec(self) -> tuple[str, dict[str, Any]]:
        """(job kind, params) for the chosen settings; DemoAIError when incomplete."""
        model = self.model.currentData()
        if not model:
            raise DemoAIError("Import a model first (Models pane).")
        common: dict[str, Any] = {
            "dataset": self.pane.ref(),
            "model": model,
            "seed": self.seed.value(),
            "temperature": round(self.temperature.value(), 3),
            "max_tokens": self.max_tokens.value(),
        }
        column = self.instruction_col.currentData()
        if not column:
            raise DemoAIError("Choose the instruction column.")
        if self.mode.currentData() == "augment":
            params = {**common, "column": column, "n": self.count.value()}
            template = self.prompt_text.toPlainText().strip()
            if template:
                from app.core.data.synth import check_paraphrase_template

                check_paraphrase_template(template)
                params["prompt_template"] = template
            return "data.augment", params
        output = self.output_col.currentData()
        if not output:
            raise DemoAIError("Choose the output column.")
        return "data.self_instruct", {
            **common,
            "n_new": self.count.value(),
            "instruction_column": column,
            "input_column": self.input_col.currentData(),
            "output_column": output,
        }

    def accept(self) -> None:
        try:
            self.chosen = self.job_spec()
        except DemoAIError as exc:
            self.error.setText(str(exc))
            return
        super().accept()
