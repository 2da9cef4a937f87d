"""The Datasets pane: datasets, a virtual table editor, version history and preparation."""

from __future__ import annotations

import html
import json
import time
from typing import Any

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.core.data.store import DatasetRecord, DatasetStore, VersionRecord
from app.core.errors import DemoAIError
from app.core.format import relative_time
from app.core.jobs.store import Job, JobState
from app.ui.panes.datasets.qt_arrow_model import (
    ArrowCellDelegate,
    ArrowTableModel,
    configure_table_view,
)
from app.ui.panes.datasets.qt_prepare_dialog import PrepareDialog
from app.ui.panes.datasets.view_query import ViewQuery, compute_view
from app.ui.qt_errors import show_error
from app.ui.services import Services

IMPORT_FILTER = "Data files (*.csv *.tsv *.json *.jsonl *.parquet *.txt);;All files (*)"


class _ViewTask(QObject, QRunnable):
    """Computes a sort/filter/search view off the UI thread."""

    done = Signal(int, object, str)

    def __init__(self, serial: int, pf: Any, query: ViewQuery) -> None:
        QObject.__init__(self)
        QRunnable.__init__(self)
        self.setAutoDelete(False)
        self.serial, self.pf, self.query = serial, pf, query

    def run(self) -> None:
        try:
            self.done.emit(self.serial, compute_view(self.pf, self.query), "")
        except DemoAIError as exc:
            self.done.emit(self.serial, None, str(exc))
        except Exception as exc:  # shown in the pane, never a crash
            self.done.emit(self.serial, None, f"{type(exc).__name__}: {exc}")


class GenerateDialog(QDialog):
    """Self-instruct or paraphrase augmentation with a library model, as a background job."""

    def __init__(self, pane: DatasetsPane) -> None:
        super().__init__(pane)
        from app.core.models.registry import ModelRegistry

        self.setWindowTitle("Generate synthetic rows")
        self.pane = pane
        columns = pane.dataset.columns if pane.dataset else []
        self.model = QComboBox()
        self.model.setObjectName("genModel")
        for m in ModelRegistry(pane.services.workspace).list():
            self.model.addItem(f"{m.name}  ({m.id})", m.id)
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


class DatasetsPane(QWidget):
    """Datasets on the left; the table editor; versions and preparation on the right."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.store = DatasetStore(services.workspace)
        self.dataset: DatasetRecord | None = None
        self.version: VersionRecord | None = None
        self.model: ArrowTableModel | None = None
        self.query = ViewQuery()
        self._serial = 0
        self._tasks: dict[int, _ViewTask] = {}
        self._jobs: set[str] = set()

        # -- left
        self.ds_list = QListWidget()
        self.ds_list.setObjectName("datasets")
        self.ds_list.currentItemChanged.connect(self._ds_selected)
        self.import_btn = QPushButton("Import…")
        self.export_btn = QPushButton("Export…")
        self.delete_ds_btn = QPushButton("Delete")
        self.sample_btn = QPushButton("Add sample dataset")
        self.import_btn.clicked.connect(self.import_file)
        self.export_btn.clicked.connect(self.export_version)
        self.delete_ds_btn.clicked.connect(self.delete_dataset)
        self.sample_btn.clicked.connect(self.add_sample)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.import_btn)
        ll.addWidget(self.ds_list, 1)
        ll.addWidget(self.sample_btn)
        row = QHBoxLayout()
        row.addWidget(self.export_btn)
        row.addWidget(self.delete_ds_btn)
        ll.addLayout(row)

        # -- middle: editor
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search all text columns…")
        self.search.setClearButtonEnabled(True)
        self.search.returnPressed.connect(self.apply_query)
        self.expr = QLineEdit()
        self.expr.setPlaceholderText(
            'Filter, e.g. len(output) > 200 and contains(instruction, "email")'
        )
        self.expr.returnPressed.connect(self.apply_query)
        self.sort_col = QComboBox()
        self.sort_order = QComboBox()
        self.sort_order.addItems(["ascending", "descending"])
        apply_btn = QPushButton("Apply")
        apply_btn.clicked.connect(self.apply_query)
        clear_btn = QPushButton("Clear")
        clear_btn.clicked.connect(self.clear_query)
        q1 = QHBoxLayout()
        q1.addWidget(self.search, 2)
        q1.addWidget(QLabel("Sort"))
        q1.addWidget(self.sort_col, 1)
        q1.addWidget(self.sort_order)
        q2 = QHBoxLayout()
        q2.addWidget(self.expr, 1)
        q2.addWidget(apply_btn)
        q2.addWidget(clear_btn)
        self.table = QTableView()
        self.table.setObjectName("datasetTable")
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectItems)
        configure_table_view(self.table)
        self.cell_delegate = ArrowCellDelegate(None, self.table)
        self.table.setItemDelegate(self.cell_delegate)
        header = self.table.horizontalHeader()
        header.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        header.customContextMenuRequested.connect(
            lambda pos: self.header_menu(header.logicalIndexAt(pos)).exec(header.mapToGlobal(pos))
        )
        header.setToolTip("Right-click a column header to sort or filter by that column")
        header.sectionResized.connect(self._column_resized)
        self.column_filters: dict[str, str] = {}
        self.info = QLabel("")
        self.info.setObjectName("datasetInfo")
        self.undo_btn = QPushButton("Undo")
        self.redo_btn = QPushButton("Redo")
        self.add_row_btn = QPushButton("Add row")
        self.del_rows_btn = QPushButton("Delete rows")
        self.add_col_btn = QPushButton("Add column…")
        self.ren_col_btn = QPushButton("Rename column…")
        self.del_col_btn = QPushButton("Delete column")
        self.save_btn = QPushButton("Save version…")
        self.prepare_btn = QPushButton("Prepare…")
        self.generate_btn = QPushButton("Generate…")
        self.generate_btn.setToolTip("Self-instruct or paraphrase rows with a library model")
        for b, fn in (
            (self.undo_btn, self.undo),
            (self.redo_btn, self.redo),
            (self.add_row_btn, self.add_row),
            (self.del_rows_btn, self.delete_rows),
            (self.add_col_btn, self.add_column),
            (self.ren_col_btn, self.rename_column),
            (self.del_col_btn, self.delete_column),
            (self.save_btn, self.save_version),
            (self.prepare_btn, self.prepare),
            (self.generate_btn, self.generate),
        ):
            b.clicked.connect(fn)
        edit_row = QHBoxLayout()
        for b in (
            self.add_row_btn,
            self.del_rows_btn,
            self.add_col_btn,
            self.ren_col_btn,
            self.del_col_btn,
        ):
            edit_row.addWidget(b)
        edit_row.addStretch(1)
        # two rows: one row of ten buttons made the pane wider than a laptop screen
        self.info.setWordWrap(True)
        act_row = QHBoxLayout()
        act_row.addWidget(self.undo_btn)
        act_row.addWidget(self.redo_btn)
        act_row.addWidget(self.info, 1)
        act_row.addWidget(self.generate_btn)
        act_row.addWidget(self.prepare_btn)
        act_row.addWidget(self.save_btn)
        self.empty = QLabel(
            "<h3>No datasets yet</h3><p><b>Import…</b> reads CSV, TSV, JSON, JSONL, Parquet, "
            "plain text, or a Hugging Face dataset folder (large files stream in the background).</p>"
            "<p>Or add the <b>sample instruction dataset</b> to try the editor, a fine-tune and an "
            "evaluation without your own data.</p>"
        )
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        mid = QWidget()
        ml = QVBoxLayout(mid)
        ml.setContentsMargins(0, 0, 0, 0)
        ml.addLayout(q1)
        ml.addLayout(q2)
        ml.addWidget(self.empty)
        ml.addWidget(self.table, 1)
        ml.addLayout(edit_row)
        ml.addLayout(act_row)

        # -- right: versions
        self.versions = QListWidget()
        self.versions.setObjectName("versions")
        self.versions.currentItemChanged.connect(self._version_selected)
        self.version_details = QTextBrowser()
        self.diff_btn = QPushButton("Diff with current")
        self.revert_btn = QPushButton("Revert to this")
        self.diff_btn.clicked.connect(self.diff_selected)
        self.revert_btn.clicked.connect(self.revert_selected)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(QLabel("<b>Versions</b> (newest first)"))
        rl.addWidget(self.versions, 2)
        rr = QHBoxLayout()
        rr.addWidget(self.diff_btn)
        rr.addWidget(self.revert_btn)
        rl.addLayout(rr)
        rl.addWidget(self.version_details, 1)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        for w in (left, mid, right):
            self.splitter.addWidget(w)
        self.splitter.setSizes([200, 760, 280])
        QVBoxLayout(self).addWidget(self.splitter)
        QShortcut(QKeySequence.StandardKey.Undo, self).activated.connect(self.undo)
        QShortcut(QKeySequence.StandardKey.Redo, self).activated.connect(self.redo)
        QShortcut(QKeySequence.StandardKey.Save, self).activated.connect(self.save_version)
        services.hub.jobs_changed.connect(self._jobs_changed)
        self.refresh_datasets()

    # -- datasets ------------------------------------------------------------------------
    def refresh_datasets(self, select: str | None = None) -> None:
        current = select or (self.dataset.id if self.dataset else None)
        self.ds_list.blockSignals(True)
        self.ds_list.clear()
        for d in self.store.list_datasets():
            item = QListWidgetItem(f"{d.name}  ({d.rows:,} rows)" if d.rows is not None else d.name)
            item.setData(Qt.ItemDataRole.UserRole, d.id)
            self.ds_list.addItem(item)
            if d.id == current:
                self.ds_list.setCurrentItem(item)
        self.ds_list.blockSignals(False)
        has = self.ds_list.count() > 0
        self.empty.setVisible(not has)
        self.table.setVisible(has)
        self.sample_btn.setVisible(
            not any((d.source or "").startswith("sample:") for d in self.store.list_datasets())
        )
        if current and self.ds_list.currentItem() is not None:
            self.open_dataset(current)
        elif has and self.dataset is None:
            self.ds_list.setCurrentRow(0)
        self._update_buttons()

    def _ds_selected(self, item: QListWidgetItem | None, _: Any = None) -> None:
        if item is None:
            return
        if self.model is not None and self.model.has_changes and not self._discard_ok():
            return
        self.open_dataset(item.data(Qt.ItemDataRole.UserRole))

    def _discard_ok(self) -> bool:
        return (
            QMessageBox.question(
                self, "Unsaved changes", "Discard the unsaved edits of this dataset?"
            )
            == QMessageBox.StandardButton.Yes
        )

    def ref(self) -> str:
        assert self.dataset is not None and self.version is not None
        return f"{self.dataset.id}@{self.version.hash}"

    def open_dataset(self, ds_id: str, version: str | None = None) -> None:
        """Show ``ds_id`` at ``version`` (default: current): first rows at once."""
        t0 = time.perf_counter()
        self.dataset = self.store.get(ds_id)
        self.version = self.store.version(ds_id, version)
        pf = self.store.parquet_file(self.ref())
        self.model = ArrowTableModel(pf)
        self.model.changed.connect(self._update_buttons)
        self.cell_delegate.model = self.model
        self.table.setModel(self.model)
        self._fit_display_widths()
        self.query = ViewQuery()
        self.column_filters = {}
        self.sort_col.clear()
        self.sort_col.addItem("(file order)", None)
        for c in self.model.columns:
            self.sort_col.addItem(c.name, c.src)
        self.refresh_versions()
        self.open_ms = (time.perf_counter() - t0) * 1000
        self._update_info()
        self._update_buttons()

    def refresh_versions(self) -> None:
        if self.dataset is None:
            return
        self.versions.blockSignals(True)
        self.versions.clear()
        current = self.store.get(self.dataset.id).current_version
        for v in reversed(self.store.versions(self.dataset.id)):
            op = v.operation.get("name", "")
            mark = "● " if v.hash == current else ""
            item = QListWidgetItem(
                f"{mark}{v.short}  {v.message or op}  ·  {v.rows:,} rows  ·  {relative_time(v.created_at)}"
            )
            item.setData(Qt.ItemDataRole.UserRole, v.hash)
            item.setToolTip(json.dumps(v.operation, indent=1)[:2000])
            self.versions.addItem(item)
        self.versions.blockSignals(False)

    def _version_selected(self, item: QListWidgetItem | None, _: Any = None) -> None:
        if item is None or self.dataset is None:
            return
        v = self.store.version(self.dataset.id, item.data(Qt.ItemDataRole.UserRole))
        cols = ", ".join(f"{c.get('name')}: {c.get('type')}" for c in v.schema)
        self.version_details.setHtml(
            f"<b>{v.short}</b> — {html.escape(v.message)}<br>"
            f"Operation: <code>{html.escape(json.dumps(v.operation))[:800]}</code><br>"
            f"Parent: {v.parent_hash[:12] if v.parent_hash else '-'}<br>Rows: {v.rows:,}<br>Columns: {html.escape(cols)}"
        )
        self._update_buttons()

    def selected_version(self) -> str | None:
        item = self.versions.currentItem()
        return str(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None

    # -- view ---------------------------------------------------------------------------
    def _column_resized(self, column: int, _old: int, new: int) -> None:
        if self.model is not None:
            self.model.set_display_width(column, new, self.table.fontMetrics().averageCharWidth())

    def _fit_display_widths(self) -> None:
        """Cells carry only as much text as their column can show (painting stays cheap)."""
        if self.model is None:
            return
        header = self.table.horizontalHeader()
        char = self.table.fontMetrics().averageCharWidth()
        for c in range(len(self.model.columns)):
            self.model.set_display_width(c, header.sectionSize(c), char)

    def header_menu(self, section: int) -> QMenu:
        """The column header's menu: sort by it, filter it (contains text), clear its filter."""
        menu = QMenu(self)
        if self.model is None or not 0 <= section < len(self.model.columns):
            return menu
        col = self.model.columns[section]
        if col.src is None:  # added in this session: not in the file yet
            menu.addAction("Save a version to sort or filter by this column").setEnabled(False)
            return menu
        src = col.src
        menu.addAction("Sort ascending", lambda: self.sort_by(src, descending=False))
        menu.addAction("Sort descending", lambda: self.sort_by(src, descending=True))
        menu.addSeparator()
        menu.addAction(f"Filter {col.name}…", lambda: self.ask_column_filter(src, col.name))
        if src in self.column_filters:
            menu.addAction(
                f"Clear the filter on {col.name}", lambda: self.set_column_filter(src, "")
            )
        if self.column_filters:
            menu.addAction("Clear all column filters", self.clear_column_filters)
        return menu

    def sort_by(self, column: str, *, descending: bool) -> None:
        i = self.sort_col.findData(column)
        if i >= 0:
            self.sort_col.setCurrentIndex(i)
        self.sort_order.setCurrentText("descending" if descending else "ascending")
        self.apply_query()

    def ask_column_filter(self, column: str, label: str) -> None:
        text, ok = QInputDialog.getText(
            self,
            f"Filter {label}",
            f"Show rows whose {label} contains (case-insensitive; empty clears):",
            text=self.column_filters.get(column, ""),
        )
        if ok:
            self.set_column_filter(column, text)

    def set_column_filter(self, column: str, text: str) -> None:
        """Keep rows whose ``column`` contains ``text`` (empty: remove the filter)."""
        if text.strip():
            self.column_filters[column] = text.strip()
        else:
            self.column_filters.pop(column, None)
        self.apply_query()

    def clear_column_filters(self) -> None:
        self.column_filters.clear()
        self.apply_query()

    def apply_query(self) -> None:
        if self.model is None:
            return
        self.query = ViewQuery(
            sort_column=self.sort_col.currentData(),
            descending=self.sort_order.currentText() == "descending",
            search=self.search.text().strip(),
            column_filters=dict(self.column_filters),
            expression=self.expr.text().strip(),
        )
        self._serial += 1
        task = _ViewTask(self._serial, self.model.pf, self.query)
        task.done.connect(self._view_ready)
        self._tasks[self._serial] = task
        self.info.setText("Working…")
        QThreadPool.globalInstance().start(task)

    def clear_query(self) -> None:
        self.search.clear()
        self.expr.clear()
        self.column_filters.clear()
        self.sort_col.setCurrentIndex(0)
        if self.model is not None:
            self.query = ViewQuery()
            self.model.set_view(None)
            self._update_info()

    def _view_ready(self, serial: int, view: Any, error: str) -> None:
        self._tasks.pop(serial, None)
        if serial != self._serial or self.model is None:
            return
        if error:
            self.info.setText(f"<span style='color:#c0392b'>{html.escape(error)}</span>")
            return
        self.model.set_view(view)
        self._update_info()

    def _update_info(self) -> None:
        if self.model is None or self.version is None:
            self.info.clear()
            return
        shown = self.model.rowCount()
        text = f"{shown:,} of {self.version.rows:,} rows shown · version {self.version.short}"
        if self.query.column_filters:
            text += " · " + ", ".join(
                f"{c} contains “{t}”" for c, t in sorted(self.query.column_filters.items())
            )
        if self.model.has_changes:
            s = self.model.summary()
            text += f" · unsaved: {s['cells_edited']} cell(s), +{s['rows_added']} / -{s['rows_deleted']} rows"
        self.info.setText(text)

    def _update_buttons(self) -> None:
        m = self.model
        has = m is not None
        self._update_info()
        for b in (
            self.add_row_btn,
            self.del_rows_btn,
            self.add_col_btn,
            self.ren_col_btn,
            self.del_col_btn,
            self.prepare_btn,
            self.generate_btn,
            self.export_btn,
            self.delete_ds_btn,
        ):
            b.setEnabled(has)
        self.undo_btn.setEnabled(bool(m and m.undo_stack))
        self.redo_btn.setEnabled(bool(m and m.redo_stack))
        self.save_btn.setEnabled(bool(m and m.has_changes))
        sel = self.selected_version()
        self.diff_btn.setEnabled(
            sel is not None and self.version is not None and sel != self.version.hash
        )
        self.revert_btn.setEnabled(
            sel is not None and self.version is not None and sel != self.version.hash
        )

    # -- edits ----------------------------------------------------------------------------
    def undo(self) -> None:
        if self.model is not None:
            self.model.undo()

    def redo(self) -> None:
        if self.model is not None:
            self.model.redo()

    def add_row(self) -> None:
        if self.model is not None:
            row = self.model.add_row()
            self.table.scrollToBottom()
            self.table.setCurrentIndex(self.model.index(row, 0))

    def delete_rows(self) -> None:
        if self.model is None:
            return
        rows = sorted({i.row() for i in self.table.selectionModel().selectedIndexes()})
        if rows:
            self.model.delete_rows(rows)

    def _column(self) -> int | None:
        i = self.table.currentIndex()
        return i.column() if i.isValid() else None

    def add_column(self) -> None:
        if self.model is None:
            return
        name, ok = QInputDialog.getText(self, "Add column", "Name of the new (text) column")
        if ok:
            try:
                self.model.add_column(name.strip())
            except ValueError as exc:
                show_error(self, "Add column", DemoAIError(str(exc)))

    def rename_column(self) -> None:
        c = self._column()
        if self.model is None or c is None:
            return
        name, ok = QInputDialog.getText(
            self, "Rename column", "New name", text=self.model.columns[c].name
        )
        if ok:
            try:
                self.model.rename_column(c, name.strip())
            except ValueError as exc:
                show_error(self, "Rename column", DemoAIError(str(exc)))

    def delete_column(self) -> None:
        c = self._column()
        if self.model is not None and c is not None:
            self.model.delete_column(c)

    def save_version(self, message: str | None = None) -> VersionRecord | None:
        """Save the unsaved edits as a new version (streamed; the old version stays)."""
        if self.model is None or self.dataset is None or not self.model.has_changes:
            return None
        if not isinstance(message, str):
            message, ok = QInputDialog.getText(
                self, "Save version", "What changed?", text="edited in the table"
            )
            if not ok:
                return None
        summary = self.model.summary()
        try:
            v = self.store.create_version(
                self.dataset.id,
                self.model.batches(),
                message=message or "edited in the table",
                operation={"name": "edit", "params": summary},
                parent=self.version.hash if self.version else None,
                schema=self.model.output_schema(),
            )
        except DemoAIError as exc:
            show_error(self, "Save version", exc)
            return None
        self.refresh_datasets(select=self.dataset.id)
        self.open_dataset(self.dataset.id, v.hash)
        return v

    # -- versions ------------------------------------------------------------------------------
    def diff_selected(self) -> None:
        sel = self.selected_version()
        if sel is None or self.dataset is None or self.version is None:
            return
        from app.core.data import diff_versions

        try:
            d = diff_versions(self.services.workspace, self.dataset.id, sel, self.version.hash)
        except DemoAIError as exc:
            show_error(self, "Diff", exc)
            return
        info = d.to_dict() if hasattr(d, "to_dict") else d.__dict__
        self.version_details.setHtml(
            f"<b>{sel[:12]} → {self.version.short}</b><pre>{html.escape(json.dumps(info, indent=1, default=str))[:4000]}</pre>"
        )

    def revert_selected(self) -> None:
        sel = self.selected_version()
        if sel is None or self.dataset is None:
            return
        if self.model is not None and self.model.has_changes and not self._discard_ok():
            return
        self.store.revert(self.dataset.id, sel)
        self.open_dataset(self.dataset.id)

    # -- import / export / prepare --------------------------------------------------------------
    def import_file(self, path: str | None = None) -> Job | None:
        if not path:
            path, _ = QFileDialog.getOpenFileName(self, "Import data", "", IMPORT_FILTER)
        if not path:
            return None
        job = self.services.jobs.submit(
            "data.import", {"path": path}, title=f"Import {path.rsplit('/', 1)[-1]}"
        )
        self._jobs.add(job.id)
        self.services.hub.tick()
        return job

    def add_sample(self) -> None:
        from app.core.data import ensure_sample_dataset

        v = ensure_sample_dataset(self.services.workspace)
        if v is not None:
            self.refresh_datasets(select=v.dataset_id)

    def export_version(self) -> None:
        if self.dataset is None:
            return
        path, chosen = QFileDialog.getSaveFileName(
            self,
            "Export version",
            self.dataset.name,
            "JSONL (*.jsonl);;CSV (*.csv);;Parquet (*.parquet)",
        )
        if not path:
            return
        fmt = "csv" if "CSV" in chosen else "parquet" if "Parquet" in chosen else "jsonl"
        from app.core.data import export_version

        try:
            export_version(self.services.workspace, self.ref(), fmt, path, overwrite=True)
        except DemoAIError as exc:
            show_error(self, "Export", exc)

    def delete_dataset(self) -> None:
        if self.dataset is None:
            return
        if (
            QMessageBox.question(
                self, "Delete dataset", f"Delete '{self.dataset.name}' and all its versions?"
            )
            != QMessageBox.StandardButton.Yes
        ):
            return
        self.store.delete(self.dataset.id)
        self.dataset = self.version = self.model = None
        self.table.setModel(None)
        self.refresh_datasets()

    def prepare(self, step: dict[str, Any] | None = None) -> Job | None:
        """Apply a preparation step as a background job; the result is a new version."""
        if self.dataset is None:
            return None
        if not isinstance(step, dict):
            dlg = PrepareDialog(self)
            if not dlg.exec():
                return None
            step = dlg.chosen
        job = self.services.jobs.submit(
            "data.apply",
            {"dataset": self.ref(), "steps": [step]},
            title=f"Prepare {self.dataset.name}: {step['name']}",
        )
        self._jobs.add(job.id)
        self.services.hub.tick()
        return job

    def generate(self, spec: tuple[str, dict[str, Any]] | None = None) -> Job | None:
        """Self-instruct or augmentation as a background job; the result is a new version."""
        if self.dataset is None:
            return None
        if not isinstance(spec, tuple):
            dlg = GenerateDialog(self)
            if not dlg.exec():
                return None
            spec = dlg.chosen
        kind, params = spec
        what = "self-instruct" if kind == "data.self_instruct" else "augment"
        job = self.services.jobs.submit(kind, params, title=f"Generate {self.dataset.name}: {what}")
        self._jobs.add(job.id)
        self.services.hub.tick()
        return job

    def _jobs_changed(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.id not in self._jobs or job.state in (
                JobState.QUEUED,
                JobState.RUNNING,
                JobState.CANCELLING,
            ):
                continue
            self._jobs.discard(job.id)
            if job.state == JobState.SUCCEEDED:
                ds = (
                    (job.result or {}).get("dataset_id")
                    or (job.result or {}).get("dataset", {}).get("id")
                    if job.result
                    else None
                )
                self.refresh_datasets(select=ds)
                if ds:
                    self.open_dataset(ds)
            elif job.state == JobState.FAILED:
                show_error(self, job.title, DemoAIError(job.error or "The job failed.", job.hint))
