"""The Fine-tune pane."""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.core.data.recipes import training_format_of
from app.core.errors import DemoAIError
from app.core.jobs.store import Job, JobState
from app.core.models.registry import ModelRegistry
from app.core.train.config import PRESETS, TrainConfig
from app.ui.panes.finetune.qt_curves import CurvesWidget
from app.ui.qt_errors import show_error
from app.ui.services import Services
from app.ui.widgets.column_mapping import ColumnMappingWidget
from app.ui.widgets.pickers import DatasetPicker, ModelPicker
from app.ui.widgets.status_line import StatusLine

KIND = "train.lora"
#: Job kind that evaluates a run's checkpoints (its events draw on the run's loss plot).
CKPT_KIND = "eval.checkpoints"
#: Fields shown in the form (others keep their defaults or come from the preset).
FORM_FIELDS = (
    "method",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "learning_rate",
    "lr_scheduler",
    "warmup_steps",
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "max_seq_len",
    "packing",
    "gradient_checkpointing",
    "auto_reduce_batch",
    "seed",
    "eval_fraction",
    "eval_every",
    "save_every",
    "device",
)
CHOICES = {
    "method": ("lora", "qlora", "lora8bit"),
    "lr_scheduler": ("linear", "cosine", "constant"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass(frozen=True)
class _Inputs:
    """The form's values, read on the UI thread."""

    base: str
    dataset: str
    values: dict[str, Any]
    mapping: dict[str, Any] | None
    turns: str
    explicit: frozenset[str]
    seq_fit: str


@dataclass(frozen=True)
class _Prepared:
    config: TrainConfig
    notes: list[str]
    problems: list[str]
    estimate: Any


def _build(ws: Any, inputs: _Inputs) -> tuple[TrainConfig, list[str]]:
    """The run's config from the libraries (writes the mapped data file once) and the notes
    on what was fitted. No Qt: runs on a worker thread."""
    from app.core.train.config import fit_to_model
    from app.core.train.library import config_from_library

    cfg = config_from_library(
        ws, inputs.base, inputs.dataset, mapping=inputs.mapping, **inputs.values
    )
    cfg, notes = fit_to_model(cfg, explicit=set(inputs.explicit))
    if inputs.seq_fit and cfg.max_seq_len == inputs.values.get("max_seq_len"):
        notes.insert(0, f"max_seq_len {inputs.seq_fit[0].lower()}{inputs.seq_fit[1:]}")
    if inputs.turns:
        notes.append(f"columns mapped for this run: {inputs.turns}")
    return cfg, notes


def _prepare(ws: Any, inputs: _Inputs) -> _Prepared:
    """Config, notes, problems against the model and the estimate (a worker thread's job)."""
    from app.core.train.config import validate_against_model
    from app.core.train.estimate import estimate_run

    cfg, notes = _build(ws, inputs)
    problems = validate_against_model(cfg)
    return _Prepared(cfg, notes, problems, None if problems else estimate_run(cfg))


class FinetunePane(QWidget):
    """Config on the left, runs and live curves on the right."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.registry = ModelRegistry(services.workspace)
        self._fields: dict[str, QWidget] = {}
        self._help = {
            f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(TrainConfig)
        }
        self._defaults: dict[str, Any] = {
            f.name: f.default for f in dataclasses.fields(TrainConfig)
        }
        #: Fields the user changed (a preset resets them): only those are kept when a
        #: default does not fit the model (e.g. max_seq_len beyond its context).
        self._user_set: set[str] = set()
        self._filling = False

        # -- config form
        self.base = ModelPicker(services, formats=("hf",))
        self.base.setObjectName("trainBase")
        self.base.setToolTip("Training needs Hugging Face weights (safetensors), not GGUF.")
        self.dataset = DatasetPicker(services)
        self.dataset.setObjectName("trainDataset")
        for picker in (self.base, self.dataset):  # the form is narrow: no horizontal scrolling
            picker.setMinimumContentsLength(6)
        self.preset = QComboBox()
        self.preset.addItem("(custom)", None)
        for name in PRESETS:
            self.preset.addItem(name.replace("_", " "), name)
        self.preset.currentIndexChanged.connect(self._apply_preset)
        self.name = QLineEdit()
        self.name.setPlaceholderText("name of the run and of the adapter")
        # A dataset whose columns are not a training format: which columns become the turns.
        self.mapping = ColumnMappingWidget()
        self.mapping.setObjectName("trainMapping")
        self.mapping_box = QWidget()
        mb = QVBoxLayout(self.mapping_box)
        mb.setContentsMargins(0, 4, 0, 4)
        mapping_title = QLabel(
            "<b>Map the columns</b>: this dataset is not in a training format. The mapping "
            "is applied for this run and recorded in its manifest."
        )
        mapping_title.setWordWrap(True)
        mb.addWidget(mapping_title)
        mb.addWidget(self.mapping)
        self.mapping_box.setVisible(False)
        self._mapped_dataset: tuple[str, tuple[str, ...]] | None = None
        #: The one-line note under max_seq_len when it was fitted to the model's context.
        self.seq_note = QLabel()
        self.seq_note.setObjectName("seqNote")
        self.seq_note.setWordWrap(True)
        self.seq_note.setVisible(False)
        self._seq_fit: str = ""
        form = QFormLayout()
        form.addRow("Base model", self.base)
        form.addRow("Dataset", self.dataset)
        form.addRow(self.mapping_box)
        form.addRow("Preset", self.preset)
        form.addRow("Name", self.name)
        for fname in FORM_FIELDS:
            w = self._make_field(fname)
            w.setToolTip(self._help.get(fname, ""))
            self._track_user_change(fname, w)
            self._fields[fname] = w
            label = fname.replace("_", " ").capitalize()
            if fname == "max_seq_len":
                box = QWidget()
                bl = QVBoxLayout(box)
                bl.setContentsMargins(0, 0, 0, 0)
                bl.setSpacing(2)
                bl.addWidget(w)
                bl.addWidget(self.seq_note)
                form.addRow(label, box)
            else:
                form.addRow(label, w)
        self.check_btn = QPushButton("Check")
        self.start_btn = QPushButton("Start training")
        self.check_btn.clicked.connect(self.check_clicked)
        self.start_btn.clicked.connect(self.start_clicked)
        self.status = StatusLine()
        self.status.setObjectName("trainStatus")
        self.report = QLabel("")
        self.report.setObjectName("trainReport")
        self.report.setWordWrap(True)
        self.report.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form_box = QWidget()
        fl = QVBoxLayout(form_box)
        fl.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.check_btn)
        row.addWidget(self.start_btn)
        fl.addLayout(row)
        fl.addWidget(self.status)
        fl.addWidget(self.report)
        fl.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(form_box)
        self.form_scroll = scroll
        self._follow_report = False
        bar = scroll.verticalScrollBar()
        bar.rangeChanged.connect(self._scroll_to_report)
        bar.actionTriggered.connect(self._stop_following_report)  # the user scrolled

        # -- runs + curves
        self.runs = QListWidget()
        self.runs.setObjectName("trainRuns")
        self.runs.setToolTip("Tick runs to overlay their curves")
        self.runs.itemChanged.connect(self._runs_ticked)
        self.runs.currentItemChanged.connect(lambda *_: self._update_buttons())
        self.cancel_btn = QPushButton("Cancel")
        self.resume_btn = QPushButton("Resume")
        self.chat_btn = QPushButton("Chat with adapter")
        self.merge_btn = QPushButton("Merge into base")
        self.ckpt_btn = QPushButton("Evaluate checkpoints")
        self.ckpt_btn.setToolTip(
            "Perplexity of the base model, each checkpoint and the final adapter on the run's "
            "held-out texts, drawn as stars on the Loss plot (log perplexity)"
        )
        self.ckpt_btn.clicked.connect(self.evaluate_checkpoints_selected)
        self.cancel_btn.clicked.connect(self.cancel_selected)
        self.resume_btn.clicked.connect(self.resume_selected)
        self.chat_btn.clicked.connect(self.chat_selected)
        self.merge_btn.clicked.connect(self.merge_selected)
        self.run_info = QLabel("")
        self.run_info.setWordWrap(True)
        self.curves = CurvesWidget()
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(self.runs, 2)
        buttons = QVBoxLayout()
        for b in (
            self.cancel_btn,
            self.resume_btn,
            self.chat_btn,
            self.merge_btn,
            self.ckpt_btn,
        ):
            buttons.addWidget(b)
        buttons.addStretch(1)
        top.addLayout(buttons)
        rl.addLayout(top, 1)
        rl.addWidget(self.run_info)
        rl.addWidget(self.curves, 3)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(scroll)
        splitter.addWidget(right)
        splitter.setSizes([380, 900])
        QVBoxLayout(self).addWidget(splitter)

        services.hub.jobs_changed.connect(self._jobs_changed)
        services.hub.job_events.connect(self._job_events)
        # The pickers refill themselves when models or datasets change (this window, the CLI
        # or a job); the form follows their selection.
        services.bus.changed.connect(self._workspace_changed)
        self.dataset.selection_changed.connect(self._dataset_changed)
        self.base.selection_changed.connect(self._fit_to_base)
        self._merge_jobs: set[str] = set()
        #: eval.checkpoints job id -> the training job it evaluates
        self._ckpt_of: dict[str, str] = {}
        #: training job id -> its warnings (e.g. a micro-batch halved after out-of-memory)
        self._warnings: dict[str, list[str]] = {}
        #: What build_config fitted to the model, a sentence each (shown by Check).
        self.fit_notes: list[str] = []
        self.refresh_inputs()
        self.refresh_runs()

    # -- form ----------------------------------------------------------------------------
    def _make_field(self, fname: str) -> QWidget:
        default = self._defaults[fname]
        if fname in CHOICES:
            w = QComboBox()
            w.addItems(CHOICES[fname])
            w.setCurrentText(str(default))
            return w
        if isinstance(default, bool):
            c = QCheckBox()
            c.setChecked(default)
            return c
        if isinstance(default, int) or fname in ("max_steps", "eval_every"):
            s = QSpinBox()
            s.setRange(0, 10_000_000)
            s.setSpecialValueText("off" if fname in ("max_steps", "eval_every") else "")
            s.setValue(int(default or 0))
            return s
        d = QDoubleSpinBox()
        d.setDecimals(6 if fname == "learning_rate" else 3)
        d.setRange(0.0, 1000.0)
        d.setSingleStep(1e-5 if fname == "learning_rate" else 0.05)
        d.setValue(float(default or 0.0))
        return d

    def _track_user_change(self, fname: str, w: QWidget) -> None:
        def changed(*_: object) -> None:
            if not self._filling:
                self._user_set.add(fname)

        if isinstance(w, QComboBox):
            w.currentTextChanged.connect(changed)
        elif isinstance(w, QCheckBox):
            w.toggled.connect(changed)
        elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
            w.valueChanged.connect(changed)

    def _set_field(self, fname: str, value: Any) -> None:
        w = self._fields.get(fname)
        if isinstance(w, QComboBox):
            w.setCurrentText(str(value))
        elif isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, QSpinBox):
            w.setValue(int(value or 0))
        elif isinstance(w, QDoubleSpinBox):
            w.setValue(float(value or 0.0))

    def _apply_preset(self, *_: object) -> None:
        name = self.preset.currentData()
        if name is None:
            return
        values = {**{k: self._defaults[k] for k in FORM_FIELDS}, **PRESETS[name]}
        self._filling = True
        try:
            for k, v in values.items():
                self._set_field(k, v)
        finally:
            self._filling = False
        self._user_set.clear()
        self._fit_to_base()

    def _fit_to_base(self, *_: object) -> None:
        """Fit max_seq_len to the chosen model's context (unless the user set it), with a note."""
        from pathlib import Path

        from app.core.train.config import model_context_length

        self._seq_fit = ""
        base_id = self.base.currentData()
        if base_id is not None and "max_seq_len" not in self._user_set:
            preset = self.preset.currentData()
            default = int(
                PRESETS[preset].get("max_seq_len", self._defaults["max_seq_len"])
                if preset
                else self._defaults["max_seq_len"]
            )
            try:
                rec = self.registry.get(base_id)
                ctx = model_context_length(Path(rec.path)) if rec.format == "hf" else None
            except (DemoAIError, OSError, ValueError):
                ctx = None
            value = default
            if ctx is not None and 8 <= ctx < default:
                value = ctx
                self._seq_fit = f"Fitted to the model's context: {ctx}"
            self._filling = True
            try:
                self._set_field("max_seq_len", value)
            finally:
                self._filling = False
        self.seq_note.setText(self._seq_fit + "." if self._seq_fit else "")
        self.seq_note.setVisible(bool(self._seq_fit))

    def _workspace_changed(self, topics: Any) -> None:
        if {"models", "datasets", "versions"} & set(topics or ()):
            self._update_ready()
            self._dataset_changed()  # its columns may have changed (a new version)

    def _dataset_changed(self, *_: object) -> None:
        """Offer the column mapping inline when the dataset is not in a training format."""
        from app.core.data.store import DatasetStore

        ds_id = self.dataset.current_id()
        columns: list[str] = []
        if ds_id is not None:
            try:
                columns = list(DatasetStore(self.services.workspace).get(ds_id).columns or [])
            except DemoAIError:  # deleted meanwhile: the picker refills
                columns = []
        needs = ds_id is not None and bool(columns) and training_format_of(columns) is None
        if needs:
            key = (str(ds_id), tuple(columns))
            if key != self._mapped_dataset:  # a new dataset: propose from its column names
                self.mapping.set_columns(columns)
                self._mapped_dataset = key
        self.mapping_box.setVisible(needs)

    def mapping_step(self) -> dict[str, Any] | None:
        """The mapping to apply for the run (a map_template step), or None when not needed."""
        if self.mapping_box.isHidden():
            return None
        problems = self.mapping.problems()
        if problems:
            raise DemoAIError(
                "Choose the columns that become the training turns (marked in red above).",
                " ".join(dict.fromkeys(problems.values())),
            )
        return self.mapping.mapping().step().to_dict()

    def form_values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fname, w in self._fields.items():
            if isinstance(w, QComboBox):
                out[fname] = w.currentText()
            elif isinstance(w, QCheckBox):
                out[fname] = w.isChecked()
            elif isinstance(w, QSpinBox):
                out[fname] = (
                    w.value() if w.value() or fname not in ("max_steps", "eval_every") else None
                )
            elif isinstance(w, QDoubleSpinBox):
                out[fname] = w.value()
        if out.get("eval_every") is None:
            out["eval_every"] = 0
        if self.name.text().strip():
            out["name"] = self.name.text().strip()
        return out

    def refresh_inputs(self) -> None:
        """Refill the pickers (they also refill themselves on the change broadcast)."""
        self.base.refresh()
        self.dataset.refresh()
        self._dataset_changed()
        self._fit_to_base()
        self._update_ready()

    def _update_ready(self) -> None:
        ready = self.base.count() > 0 and self.dataset.count() > 0
        self.start_btn.setEnabled(ready)
        self.check_btn.setEnabled(ready)
        if not ready:
            self.report.setText(
                "To fine-tune, import a Hugging Face model folder (config.json + safetensors) in "
                "<b>Models</b> — GGUF files cannot be trained — and a dataset (or the sample) in "
                "<b>Datasets</b>."
            )
        elif "To fine-tune" in self.report.text():
            self.report.clear()

    # -- checking and starting ----------------------------------------------------------------
    def _inputs(self) -> _Inputs:
        """What the form says, read on the UI thread (the work happens off it)."""
        base, ds = self.base.current_id(), self.dataset.current_id()
        if base is None or ds is None:
            raise DemoAIError("Choose a base model and a dataset.")
        mapping = self.mapping_step()
        turns = ""
        if mapping is not None:
            m = self.mapping.mapping()
            turns = f"{m.user} → user, {m.assistant} → assistant"
        return _Inputs(
            base=base,
            dataset=ds,
            values=self.form_values(),
            mapping=mapping,
            turns=turns,
            explicit=frozenset(self._user_set),
            seq_fit=self._seq_fit,
        )

    def build_config(self) -> TrainConfig:
        """The form's config; defaults the model cannot take are fitted (see :attr:`fit_notes`)."""
        cfg, self.fit_notes = _build(self.services.workspace, self._inputs())
        return cfg

    def check(self) -> TrainConfig | None:
        """Validate the whole config and show the memory and time estimate (here, at once)."""
        try:
            prepared = _prepare(self.services.workspace, self._inputs())
        except DemoAIError as exc:
            self._report_error(exc)
            return None
        return self._show_prepared(prepared)

    def _show_prepared(self, prepared: _Prepared) -> TrainConfig | None:
        self.fit_notes = prepared.notes
        if prepared.problems:
            items = "".join(f"<li>{html.escape(p)}</li>" for p in prepared.problems)
            self._show_report(f"<span style='color:#c0392b'>Cannot start:</span><ul>{items}</ul>")
            return None
        est = prepared.estimate
        notes = "".join(f"<br>Note: {html.escape(n)}." for n in prepared.notes)
        explanation = html.escape(est.explanation).replace("\n", "<br>")
        self._show_report(
            f"<b>Ready.</b> {html.escape(est.summary())}{notes}<br><small>{explanation}</small>"
        )
        return prepared.config

    def _report_error(self, exc: BaseException) -> None:
        self.status.clear()  # said once, in the report under the buttons
        self._show_report(f"<span style='color:#c0392b'>{html.escape(str(exc))}</span>")

    def check_clicked(self) -> None:
        """Check: the data is prepared and the model read off the UI thread."""
        self._run_prepared("Checking the configuration", submit=False)

    def start_clicked(self) -> None:
        """Start training: checked off the UI thread, then submitted as a job."""
        self._run_prepared("Preparing the run", submit=True)

    def _run_prepared(self, title: str, *, submit: bool) -> None:
        try:
            inputs = self._inputs()
        except DemoAIError as exc:
            self._report_error(exc)
            return
        ws = self.services.workspace
        self.check_btn.setEnabled(False)
        self.start_btn.setEnabled(False)

        def done(prepared: _Prepared) -> None:
            self._update_ready()
            cfg = self._show_prepared(prepared)
            if submit and cfg is not None:
                self._submit(cfg)

        def failed(exc: BaseException) -> None:
            self._update_ready()
            self._report_error(exc)

        self.services.actions.run(
            self,
            title,
            lambda _progress: _prepare(ws, inputs),
            done=done,
            failed=failed,
            status=self.status,
        )

    def _show_report(self, text: str) -> None:
        """Show Check's result and scroll the form so that all of it is in view."""
        self.report.setText(text)
        # The form takes the label's new height over a few posted layout passes: keep the
        # report in view as the scroll range grows, until the user scrolls themselves.
        self._follow_report = True
        QTimer.singleShot(0, self, self._scroll_to_report)

    def _scroll_to_report(self, *_: object) -> None:
        if self._follow_report:
            self.form_scroll.ensureWidgetVisible(self.report, 0, 0)

    def _stop_following_report(self, *_: object) -> None:
        self._follow_report = False

    def start(self) -> Job | None:
        """Check and submit the run (here, at once); the button does it off the UI thread."""
        cfg = self.check()
        return None if cfg is None else self._submit(cfg)

    def _submit(self, cfg: TrainConfig) -> Job:
        title = f"Fine-tune {cfg.name or self.base.currentText().split('  ')[0]}"
        job = self.services.jobs.submit(KIND, cfg.to_dict(), title=title, resource="gpu")
        self.services.hub.tick()
        self.refresh_runs(select=job.id)
        return job

    # -- runs -------------------------------------------------------------------------------------
    def _train_jobs(self) -> list[Job]:
        return [j for j in self.services.jobs.list_jobs(limit=200) if j.kind == KIND]

    def refresh_runs(self, select: str | None = None) -> None:
        ticked = self.ticked_runs() | ({select} if select else set())
        sel = self.selected_job()
        current = select or (sel.id if sel is not None else None)
        self.runs.blockSignals(True)
        self.runs.clear()
        for j in self._train_jobs():
            pct = (
                f" {j.progress * 100:.0f}%"
                if j.progress is not None and j.state == JobState.RUNNING
                else ""
            )
            item = QListWidgetItem(f"{j.title} — {j.state}{pct}")
            item.setData(Qt.ItemDataRole.UserRole, j.id)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if j.id in ticked else Qt.CheckState.Unchecked)
            self.runs.addItem(item)
            if j.id == current:
                self.runs.setCurrentItem(item)
        self.runs.blockSignals(False)
        self._runs_ticked()
        self._update_buttons()

    def ticked_runs(self) -> set[str]:
        return {
            self.runs.item(i).data(Qt.ItemDataRole.UserRole)
            for i in range(self.runs.count())
            if self.runs.item(i).checkState() == Qt.CheckState.Checked
        }

    def _runs_ticked(self, *_: object) -> None:
        ticked = self.ticked_runs()
        labels = {}
        for j in self._train_jobs():
            if j.id in ticked:
                labels[j.id] = j.title.replace("Fine-tune ", "")
        before = set(self.curves._labels)
        self.curves.set_runs(labels)
        for job_id in ticked - before:
            job = self.services.jobs.get(job_id)
            # Curves come back from the run's event log (also after a restart).
            self.curves.add_events(job_id, self.services.hub.history(job))
            if job.state in (JobState.RUNNING, JobState.CANCELLING):
                self.services.hub.watch(job)
            for ev in self._ckpt_jobs(job_id):
                self.curves.add_events(job_id, self.services.hub.history(ev))
                if ev.state in (JobState.RUNNING, JobState.CANCELLING):
                    self.services.hub.watch(ev)

    def _ckpt_jobs(self, train_id: str) -> list[Job]:
        """The eval.checkpoints jobs of one training run."""
        out = []
        for j in self.services.jobs.list_jobs(limit=200):
            if j.kind == CKPT_KIND and (j.params or {}).get("train_job") == train_id:
                self._ckpt_of[j.id] = train_id
                out.append(j)
        return out

    def selected_job(self) -> Job | None:
        item = self.runs.currentItem()
        if item is None:
            return None
        try:
            return self.services.jobs.get(item.data(Qt.ItemDataRole.UserRole))
        except DemoAIError:
            return None

    def _update_buttons(self) -> None:
        j = self.selected_job()
        self.cancel_btn.setEnabled(j is not None and j.state in (JobState.QUEUED, JobState.RUNNING))
        self.resume_btn.setEnabled(j is not None and j.resumable)
        done = (
            j is not None
            and j.state == JobState.SUCCEEDED
            and bool((j.result or {}).get("model_id"))
        )
        self.chat_btn.setEnabled(done)
        self.merge_btn.setEnabled(done)
        self.ckpt_btn.setEnabled(
            j is not None and j.state in (JobState.SUCCEEDED, JobState.CANCELLED)
        )
        if j is None:
            self.run_info.clear()
            return
        r = j.result or {}
        text = f"<b>{html.escape(j.title)}</b> — {j.state}"
        if r.get("train_loss") is not None:
            text += f" · final loss {r['train_loss']:.4f}"
        if r.get("eval_loss") is not None:
            text += f" · eval loss {r['eval_loss']:.4f}"
        warnings = self.run_warnings(j)
        if warnings:
            shown = "".join(f"<br>&#9888; {html.escape(w)}" for w in warnings[-3:])
            more = f" ({len(warnings)} in all, see the job log)" if len(warnings) > 3 else ""
            text += f"<br><span style='color:#b9770e'>Warnings{more}:{shown}</span>"
        if j.error:
            text += f"<br><span style='color:#c0392b'>{html.escape(j.error.splitlines()[0])}</span>"
            if j.hint:
                text += f"<br>{html.escape(j.hint)}"
        self.run_info.setText(text)

    def run_warnings(self, job: Job) -> list[str]:
        """The warnings a run logged (all attempts): read from its event log once, then live."""
        if job.id not in self._warnings:
            self._warnings[job.id] = []
            self._add_warnings(job.id, self.services.hub.history(job))
        return self._warnings[job.id]

    def _add_warnings(self, job_id: str, events: list[dict[str, Any]]) -> bool:
        seen = self._warnings.get(job_id)
        if seen is None:  # not shown yet: read from the log when the run is selected
            return False
        added = False
        for ev in events:
            if ev.get("type") == "log" and ev.get("level") == "warning":
                text = str(ev.get("text", ""))
                if text not in seen:  # a live batch can overlap what the log read gave
                    seen.append(text)
                    added = True
        return added

    def _jobs_changed(self, jobs: list[Job]) -> None:
        for j in jobs:
            if j.kind == KIND and j.state not in (JobState.RUNNING, JobState.CANCELLING):
                self._warnings.pop(j.id, None)  # read the whole log again: nothing missed
        if any(j.kind == KIND for j in jobs):
            self.refresh_runs()
        for j in jobs:
            if j.id in self._merge_jobs and j.state not in (JobState.QUEUED, JobState.RUNNING):
                self._merge_jobs.discard(j.id)
                if j.state == JobState.SUCCEEDED:
                    self.services.bus.models_changed.emit()
                    self.run_info.setText(
                        f"Merged: new model <b>{html.escape(str((j.result or {}).get('name')))}</b> in the library."
                    )
                else:
                    show_error(
                        self, "Merge failed", DemoAIError(j.error or "The merge failed.", j.hint)
                    )
            if j.kind == KIND and j.state == JobState.SUCCEEDED:
                self.services.bus.models_changed.emit()
            if j.kind == CKPT_KIND:
                self._ckpt_changed(j)

    def _ckpt_changed(self, j: Job) -> None:
        train_id = str((j.params or {}).get("train_job") or "")
        self._ckpt_of[j.id] = train_id
        if j.state in (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING):
            return
        if j.state == JobState.SUCCEEDED:
            if train_id in self.curves._labels:  # all points, even if some were missed live
                self.curves.add_events(train_id, self.services.hub.history(j))
            pts = (j.result or {}).get("points") or []
            self.run_info.setText(
                f"Checkpoints evaluated: {len(pts)} point(s), perplexity "
                + ", ".join(f"{p['step']}: {p['perplexity']:.3f}" for p in pts[:12])
                + " (stars on the Loss plot: log perplexity)."
            )
        elif j.state == JobState.FAILED:
            self.run_info.setText(
                "<span style='color:#c0392b'>Checkpoint evaluation failed: "
                f"{html.escape((j.error or '').splitlines()[0] if j.error else '')}</span>"
                + (f"<br>{html.escape(j.hint)}" if j.hint else "")
            )

    def _job_events(self, job_id: str, events: list[dict[str, Any]]) -> None:
        if self._add_warnings(job_id, events):
            sel = self.selected_job()
            if sel is not None and sel.id == job_id:
                self._update_buttons()
        if job_id in self.curves._labels:
            self.curves.add_events(job_id, events)
        elif self._ckpt_of.get(job_id) in self.curves._labels:
            self.curves.add_events(self._ckpt_of[job_id], events)

    # -- actions -------------------------------------------------------------------------------------
    def cancel_selected(self) -> None:
        j = self.selected_job()
        if j is not None:
            self.services.supervisor.cancel(j.id)
            self.services.hub.tick()

    def resume_selected(self) -> None:
        j = self.selected_job()
        if j is not None:
            try:
                self.services.jobs.resume(j.id)
            except DemoAIError as exc:
                show_error(self, "Resume", exc)
            self.services.hub.tick()

    def chat_selected(self) -> None:
        j = self.selected_job()
        if j is not None and (mid := (j.result or {}).get("model_id")):
            self.services.bus.chat_with_model.emit(mid)

    def merge_selected(self) -> Job | None:
        j = self.selected_job()
        if j is None or not (mid := (j.result or {}).get("model_id")):
            return None
        job = self.services.jobs.submit(
            "train.merge", {"adapter": mid}, title=f"Merge {j.title.replace('Fine-tune ', '')}"
        )
        self._merge_jobs.add(job.id)
        self.services.hub.tick()
        return job

    def evaluate_checkpoints_selected(self) -> Job | None:
        """Submit an eval.checkpoints job for the selected run; its points join the run's curves."""
        j = self.selected_job()
        if j is None or j.state not in (JobState.SUCCEEDED, JobState.CANCELLED):
            return None
        job = self.services.jobs.submit(
            CKPT_KIND,
            {"train_job": j.id, "metric": "perplexity", "max_samples": 64},
            title=f"Evaluate checkpoints of {j.title.replace('Fine-tune ', '')}",
        )
        self._ckpt_of[job.id] = j.id
        for i in range(self.runs.count()):  # show the run's curves, where the points will go
            item = self.runs.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == j.id:
                item.setCheckState(Qt.CheckState.Checked)
        self.run_info.setText("Evaluating the checkpoints…")
        self.services.hub.tick()
        return job
