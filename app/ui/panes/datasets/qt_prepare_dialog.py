"""Datasets › Prepare…: choose a preparation step, fill in its form, see a live preview.

The form is generated from the operation's parameter dataclass (``app/ui/forms.py``);
"Map to a training format" shows the column-mapping widget shared with Fine-tune. Every
edit is checked field by field at once (messages under the fields); when the parameters
can run, a preview of the first rows is computed off the UI thread, debounced, and only
the newest result is shown. Apply returns the step ``{"name", "params"}`` that the pane
submits as a ``data.apply`` job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import DemoAIError
from app.ui.forms import ERROR_STYLE, DataclassForm
from app.ui.widgets.column_mapping import ColumnMappingWidget

if TYPE_CHECKING:
    import pyarrow as pa

    from app.core.data.store import DatasetStore

#: Rows of the version the preview runs the step on, and rows of the result shown.
SAMPLE_ROWS = 200
SHOWN_ROWS = 10
#: A whole-table step on the sample may give more rows (concatenate): read at most this many.
MAX_OUT_ROWS = 1000
DEBOUNCE_MS = 250


def read_sample(store: DatasetStore, ref: str, rows: int = SAMPLE_ROWS) -> pa.Table:
    """The first ``rows`` rows of a version, read as one small batch (never the whole file)."""
    import pyarrow as pa

    pf = store.parquet_file(ref)
    for batch in pf.iter_batches(batch_size=rows):
        return pa.Table.from_batches([batch])
    return pf.schema_arrow.empty_table()


def compute_preview(
    op: str,
    params: dict[str, Any],
    sample: pa.Table,
    open_version: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """The step applied to ``sample``: rows in, rows out (``more`` when capped), the first
    rows of the result, and a note (PII counts, or that a whole-table step saw a sample)."""
    import pyarrow as pa

    from app.core.data.ops import OpContext, Rows, count_pii, get_op

    spec = get_op(op)
    full = spec.resolve(dict(params))
    ctx = OpContext(open_version=open_version) if open_version else OpContext()
    note = ""
    more = False
    if spec.make is not None:
        out = spec.make(full, ctx)(sample)
    else:
        assert spec.plan is not None
        parts, n = [], 0
        for part in spec.plan(full, ctx)(Rows.of(sample)):
            parts.append(part)
            n += part.num_rows
            if n >= MAX_OUT_ROWS:
                more = True
                break
        out = pa.concat_tables(parts) if parts else sample.schema.empty_table()
        note = f"A whole-table step: shown on the first {sample.num_rows} rows only."
    if op == "redact_pii":
        counts = count_pii(sample, full.get("columns"), full.get("types"))
        found = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "nothing"
        note = f"Found in the first {sample.num_rows} rows: {found}."
    return {
        "rows_in": sample.num_rows,
        "rows_out": out.num_rows,
        "more": more,
        "rows": out.slice(0, SHOWN_ROWS).to_pylist(),
        "columns": out.column_names,
        "note": note,
    }


def cell_text(value: Any, limit: int = 300) -> str:
    """A value as the preview shows it: chat messages as "role: content" lines."""
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value):
        text = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in value)
    else:
        text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _PreviewTask(QObject, QRunnable):
    done = Signal(int, object, object)  # serial, (sample, result) or None, error text

    def __init__(
        self,
        serial: int,
        store: DatasetStore,
        ref: str,
        sample: pa.Table | None,
        op: str,
        params: dict[str, Any],
    ) -> None:
        QObject.__init__(self)
        QRunnable.__init__(self)
        self.setAutoDelete(False)
        self.serial, self.store, self.ref, self.sample = serial, store, ref, sample
        self.op, self.params = op, params

    def run(self) -> None:
        from app.core.data.ops import Rows

        try:
            sample = self.sample if self.sample is not None else read_sample(self.store, self.ref)
            result = compute_preview(
                self.op,
                self.params,
                sample,
                lambda r: Rows.of(self.store.parquet_file(r)),
            )
            self.done.emit(self.serial, (sample, result), None)
        except DemoAIError as exc:
            self.done.emit(self.serial, None, str(exc))
        except Exception as exc:  # a step that fails on this data: shown, never a crash
            self.done.emit(self.serial, None, f"The step fails on these rows: {exc}.")


class PrepareDialog(QDialog):
    """Choose a preparation step, fill in its form, preview it, apply it as a job."""

    def __init__(self, pane: Any, *, store: DatasetStore | None = None, ref: str = "") -> None:
        super().__init__(pane)
        from app.core.data import OPS
        from app.core.data.ops import text_columns

        self.store: DatasetStore = store if store is not None else pane.store
        self.source = ref or pane.ref()
        name = getattr(getattr(pane, "dataset", None), "name", "")
        self.setWindowTitle(f"Prepare {name}" if name else "Prepare dataset")
        self.resize(900, 640)
        self.ops = OPS
        schema = self.store.parquet_file(self.source).schema_arrow  # the footer only
        self.schema = schema
        self.columns = list(schema.names)
        self.text_columns = text_columns(schema)
        self.versions = self._versions()
        self._sample: pa.Table | None = None
        self._serial = 0
        self._tasks: dict[int, _PreviewTask] = {}
        self.problems: dict[str, str] = {}
        self.chosen: dict[str, Any] = {}

        self.op = QComboBox()
        self.op.setObjectName("prepareOp")
        for op_name, spec in sorted(OPS.items(), key=lambda kv: kv[1].title):
            if spec.params_type is not None:
                self.op.addItem(spec.title, op_name)
        self.desc = QLabel()
        self.desc.setWordWrap(True)
        self.form_scroll = QScrollArea()
        self.form_scroll.setWidgetResizable(True)
        self.form: DataclassForm | None = None
        self.mapping: ColumnMappingWidget | None = None

        self.preview_info = QLabel()
        self.preview_info.setObjectName("previewInfo")
        self.preview_info.setWordWrap(True)
        self.preview_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.preview_table = QTableWidget()
        self.preview_table.setObjectName("previewTable")
        self.preview_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.preview_table.setWordWrap(True)
        # The columns share the width and long texts wrap; rows follow a change of width.
        header = self.preview_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        header.sectionResized.connect(lambda *_: self.preview_table.resizeRowsToContents())
        preview_box = QWidget()
        pl = QVBoxLayout(preview_box)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.addWidget(QLabel("<b>Preview</b> (first rows of the result)"))
        pl.addWidget(self.preview_info)
        pl.addWidget(self.preview_table, 1)

        buttons = QDialogButtonBox()
        self.apply_btn = buttons.addButton(
            "Apply as a new version", QDialogButtonBox.ButtonRole.AcceptRole
        )
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.form_scroll)
        split.addWidget(preview_box)
        split.setSizes([380, 520])
        split.setChildrenCollapsible(False)
        lay = QVBoxLayout(self)
        lay.addWidget(self.op)
        lay.addWidget(self.desc)
        lay.addWidget(split, 1)
        lay.addWidget(buttons)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._start_preview)
        self.op.currentIndexChanged.connect(self._op_changed)
        self._op_changed()

    def _versions(self) -> list[tuple[str, str]]:
        """Other datasets' current versions, by name (for concatenate)."""
        out = []
        for d in self.store.list_datasets():
            ref = f"{d.id}@{d.current_version}" if d.current_version else d.id
            if not self.source.startswith(f"{d.id}@"):
                out.append((f"{d.name} ({d.rows or 0:,} rows)", ref))
        return out

    # -- the form -----------------------------------------------------------------------------
    @property
    def op_name(self) -> str:
        return str(self.op.currentData())

    def _op_changed(self, *_: object) -> None:
        spec = self.ops[self.op_name]
        self.desc.setText(spec.description)
        old = self.form_scroll.takeWidget()
        if old is not None:
            old.deleteLater()
        self.form = self.mapping = None
        if self.op_name == "map_template":
            self.mapping = ColumnMappingWidget(self.columns)
            self.mapping.changed.connect(self._edited)
            widget: QWidget = self.mapping
        else:
            assert spec.params_type is not None
            self.form = DataclassForm(
                spec.params_type,
                columns=self.columns,
                text_columns=self.text_columns,
                versions=self.versions,
            )
            self.form.changed.connect(self._edited)
            widget = self.form
        holder = QWidget()
        hl = QVBoxLayout(holder)
        hl.addWidget(widget)
        hl.addStretch(1)
        self.form_scroll.setWidget(holder)
        self._edited()

    def params(self) -> dict[str, Any]:
        if self.mapping is not None:
            return dict(self.mapping.mapping().step().params)
        assert self.form is not None
        return self.form.values()

    def set_params(self, params: dict[str, Any]) -> None:
        """Fill the form (e.g. from a recipe step)."""
        from app.core.data.recipes import mapping_of

        if self.mapping is not None:
            m = mapping_of({"name": "map_template", "params": params})
            if m is not None:
                self.mapping.set_mapping(m)
        elif self.form is not None:
            self.form.set_values(params)

    def step(self) -> dict[str, Any]:
        return {"name": self.op_name, "params": self.params()}

    def _check(self) -> dict[str, str]:
        from app.core.data.ops import field_problems

        if self.mapping is not None:
            return self.mapping.problems()  # the widget shows them itself
        assert self.form is not None
        problems = field_problems(self.op_name, self.params(), self.schema)
        self.form.set_problems(problems)
        return problems

    def _edited(self, *_: object) -> None:
        self.problems = self._check()
        self.apply_btn.setEnabled(not self.problems)
        self._serial += 1  # any result still on its way is for older parameters
        if self.problems:
            self._timer.stop()
            self._clear_preview()
            self._info("Fix the fields marked in red to see a preview.", error=False)
            return
        self._info("Computing the preview…", error=False)
        self._timer.start()

    # -- the preview -------------------------------------------------------------------------
    def _start_preview(self) -> None:
        serial = self._serial
        task = _PreviewTask(
            serial, self.store, self.source, self._sample, self.op_name, self.params()
        )
        task.done.connect(self._preview_done)
        self._tasks[serial] = task
        QThreadPool.globalInstance().start(task)

    def preview_pending(self) -> bool:
        """A preview is waiting for the debounce or computing."""
        return self._timer.isActive() or self._serial in self._tasks

    def _preview_done(self, serial: int, payload: Any, error: str | None) -> None:
        self._tasks.pop(serial, None)
        if payload is not None and self._sample is None:
            self._sample = payload[0]
        if serial != self._serial:
            return  # parameters changed since: a newer preview follows
        self._clear_preview()
        if error is not None:
            self._info(error, error=True)
            return
        _sample, r = payload
        more = "+" if r["more"] else ""
        text = (
            f"{r['rows_in']} rows in, {r['rows_out']}{more} rows out"
            f" (first {min(SHOWN_ROWS, r['rows_out'])} shown)."
        )
        self._info(text + (f" {r['note']}" if r["note"] else ""), error=False)
        cols = r["columns"]
        self.preview_table.setColumnCount(len(cols))
        self.preview_table.setHorizontalHeaderLabels(cols)
        self.preview_table.setRowCount(len(r["rows"]))
        for i, row in enumerate(r["rows"]):
            for j, c in enumerate(cols):
                self.preview_table.setItem(i, j, QTableWidgetItem(cell_text(row.get(c))))
        self.preview_table.resizeRowsToContents()

    def _clear_preview(self) -> None:
        self.preview_table.clear()
        self.preview_table.setRowCount(0)
        self.preview_table.setColumnCount(0)

    def _info(self, text: str, *, error: bool) -> None:
        self.preview_info.setText(text)
        self.preview_info.setStyleSheet(ERROR_STYLE if error else "")

    def preview_text(self) -> str:
        """What the preview shows, as text (for tests and the log)."""
        cells = []
        for j in range(self.preview_table.columnCount()):
            head = self.preview_table.horizontalHeaderItem(j)
            cells.append(head.text() if head else "")
        for i in range(self.preview_table.rowCount()):
            for j in range(self.preview_table.columnCount()):
                item = self.preview_table.item(i, j)
                cells.append(item.text() if item else "")
        return self.preview_info.text() + "\n" + "\n".join(cells)

    def accept(self) -> None:
        self.problems = self._check()
        if self.problems:
            self.apply_btn.setEnabled(False)
            return
        self.chosen = self.step()
        super().accept()

    def done(self, result: int) -> None:
        self._timer.stop()
        self._serial += 1
        super().done(result)
