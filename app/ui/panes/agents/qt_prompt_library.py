"""The prompt library tab: prompts with their versions, an editor, test inputs, a diff.

Every Save is a new version (nothing is overwritten). Variables are the
``{{name}}`` placeholders found in the text; the test-inputs table has one
column per variable and the preview shows the prompt rendered with each row.
Any two versions can be compared as a unified diff.
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.core.agents.prompts import Prompt, PromptStore, render, variables
from app.core.errors import DemoAIError
from app.core.store.db import Database
from app.ui.qt_errors import show_error
from app.ui.qt_prompt_picker import monospace
from app.ui.widgets.status_line import StatusLine

NAME_ROLE = Qt.ItemDataRole.UserRole


def diff_html(diff: str) -> str:
    """A unified diff as HTML: removed lines red, added lines green."""
    if not diff:
        return "<p><i>The two versions have the same text.</i></p>"
    out = []
    for line in diff.splitlines():
        esc = html.escape(line) or "&nbsp;"
        if line.startswith(("+++", "---")):
            out.append(f"<b>{esc}</b>")
        elif line.startswith("@@"):
            out.append(f"<span style='color:#6a5acd'>{esc}</span>")
        elif line.startswith("+"):
            out.append(f"<span style='background:#e6ffec;color:#116329'>{esc}</span>")
        elif line.startswith("-"):
            out.append(f"<span style='background:#ffebe9;color:#b00020'>{esc}</span>")
        else:
            out.append(esc)
    return "<pre style='margin:0'>" + "\n".join(out) + "</pre>"


class PromptLibrary(QWidget):
    """Prompt list on the left; editor, test inputs, preview and version diff on the right."""

    saved = Signal(object)  # Prompt

    def __init__(self, db: Database, parent: QWidget | None = None, *, actions: Any = None) -> None:
        super().__init__(parent)
        #: The window's action layer: Save runs through it when given.
        self.action_runner = actions
        self.saving = False
        self.store = PromptStore(db)
        self.current: Prompt | None = None  # the version shown in the editor
        self.diff_text = ""  # the unified diff shown
        self._cols: list[str] = []  # the test table's columns (variables)

        # -- left: prompts
        self.list = QListWidget()
        self.list.currentItemChanged.connect(self._selected)
        self.new_btn = QPushButton("New prompt")
        self.new_btn.clicked.connect(self.new_prompt)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(QLabel("<b>Prompts</b>"))
        ll.addWidget(self.list, 1)
        ll.addWidget(self.new_btn)

        # -- right: the editor
        self.name = QLineEdit()
        self.name.setPlaceholderText("letters, digits, . _ -")
        self.description = QLineEdit()
        self.version_combo = QComboBox()
        self.version_combo.setToolTip("Open an older version (saving it makes a new version).")
        self.version_combo.currentIndexChanged.connect(self._version_chosen)
        self.text = QPlainTextEdit()
        self.text.setFont(monospace())
        self.text.setPlaceholderText("Prompt text; {{name}} marks a variable.")
        self.text.textChanged.connect(self._text_changed)
        self.vars_label = QLabel("")
        self.vars_label.setWordWrap(True)
        self.save_btn = QPushButton("Save (new version)")
        self.save_btn.clicked.connect(lambda: self.save())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Name", self.name)
        form.addRow("Description", self.description)
        form.addRow("Version", self.version_combo)
        editor = QWidget()
        el = QVBoxLayout(editor)
        el.setContentsMargins(0, 0, 0, 0)
        el.addLayout(form)
        el.addWidget(self.text, 1)
        el.addWidget(self.vars_label)
        srow = QHBoxLayout()
        srow.addWidget(self.save_btn)
        srow.addWidget(self.status, 1)
        el.addLayout(srow)
        self.save_status = StatusLine(self)
        el.addWidget(self.save_status)

        # -- test inputs and preview
        self.tests = QTableWidget(0, 0)
        self.tests.setToolTip("One row per test input: a value for every variable.")
        self.tests.itemChanged.connect(self.update_preview)
        self.add_test_btn = QPushButton("Add test input")
        self.add_test_btn.clicked.connect(self.add_test_row)
        self.remove_test_btn = QPushButton("Remove")
        self.remove_test_btn.clicked.connect(self.remove_test_row)
        self.preview = QPlainTextEdit()
        self.preview.setReadOnly(True)
        self.preview.setFont(monospace())
        tests = QWidget()
        tl = QVBoxLayout(tests)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(QLabel("<b>Test inputs</b>"))
        tl.addWidget(self.tests, 1)
        trow = QHBoxLayout()
        trow.addWidget(self.add_test_btn)
        trow.addWidget(self.remove_test_btn)
        trow.addStretch(1)
        tl.addLayout(trow)
        prev = QWidget()
        pl = QVBoxLayout(prev)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.addWidget(QLabel("<b>Preview</b> (rendered with each test input)"))
        pl.addWidget(self.preview, 1)
        tp = QSplitter(Qt.Orientation.Horizontal)
        tp.addWidget(tests)
        tp.addWidget(prev)

        # -- diff between two versions
        self.diff_a = QComboBox()
        self.diff_b = QComboBox()
        self.diff_a.currentIndexChanged.connect(self.update_diff)
        self.diff_b.currentIndexChanged.connect(self.update_diff)
        self.diff_view = QTextBrowser()
        self.diff_view.setFont(monospace())
        diff = QWidget()
        dl = QVBoxLayout(diff)
        dl.setContentsMargins(0, 0, 0, 0)
        drow = QHBoxLayout()
        drow.addWidget(QLabel("<b>Compare</b>"))
        drow.addWidget(self.diff_a)
        drow.addWidget(QLabel("with"))
        drow.addWidget(self.diff_b)
        drow.addStretch(1)
        dl.addLayout(drow)
        dl.addWidget(self.diff_view, 1)

        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(editor)
        right.addWidget(tp)
        right.addWidget(diff)
        right.setStretchFactor(0, 3)
        right.setStretchFactor(1, 2)
        right.setStretchFactor(2, 2)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 4)
        split.setSizes([260, 1000])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)

        self.refresh()
        if self.list.count():
            self.list.setCurrentRow(0)
        else:
            self.new_prompt()

    # -- list -----------------------------------------------------------------------
    def refresh(self, select: str | None = None) -> None:
        """Reload the list (after a save or an import elsewhere)."""
        select = select or (self.current.name if self.current else None)
        self.list.blockSignals(True)
        self.list.clear()
        for p in self.store.list():
            n = len(self.store.versions(p.name))
            item = QListWidgetItem(
                f"{p.name}  v{p.version}" + (f"  ({n} versions)" if n > 1 else "")
            )
            item.setData(NAME_ROLE, p.name)
            item.setToolTip(p.description)
            self.list.addItem(item)
            if p.name == select:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)

    def _selected(self, item: QListWidgetItem | None, _: Any = None) -> None:
        if item is not None:
            self.load(item.data(NAME_ROLE))

    def names(self) -> list[str]:
        return [self.list.item(i).data(NAME_ROLE) for i in range(self.list.count())]

    # -- editor -----------------------------------------------------------------------
    def new_prompt(self) -> None:
        """An empty editor for a new prompt."""
        self.current = None
        self.list.clearSelection()
        self.name.clear()
        self.description.clear()
        self.text.clear()
        self._set_versions(None)
        self._set_tests([])
        self.status.setText("")
        self.name.setFocus()

    def load(self, name: str, version: int | None = None) -> None:
        """Show a saved version (default: the latest) in the editor."""
        try:
            p = self.store.get(name, version)
        except DemoAIError as exc:
            show_error(self, "Cannot open the prompt", exc)
            return
        self.current = p
        self.refresh(select=name)
        self.name.setText(p.name)
        self.description.setText(p.description)
        self.text.setPlainText(p.text)
        self._set_versions(p)
        self._set_tests(p.test_inputs)

    def _set_versions(self, p: Prompt | None) -> None:
        versions = self.store.versions(p.name) if p is not None else []
        for box in (self.version_combo, self.diff_a, self.diff_b):
            box.blockSignals(True)
            box.clear()
            for v in versions:
                box.addItem(f"v{v}", v)
            box.blockSignals(False)
        if p is None:
            self.version_combo.addItem("not saved", None)
            self.diff_view.setHtml("<p><i>Save a prompt twice to compare versions.</i></p>")
            return
        self.version_combo.blockSignals(True)
        self.version_combo.setCurrentIndex(self.version_combo.findData(p.version))
        self.version_combo.blockSignals(False)
        # compare the shown version with the one before it (or with itself if it is the first)
        i = versions.index(p.version)
        self.diff_a.blockSignals(True)
        self.diff_a.setCurrentIndex(max(i - 1, 0))
        self.diff_a.blockSignals(False)
        self.diff_b.setCurrentIndex(i)
        self.update_diff()

    def _version_chosen(self, *_: object) -> None:
        v = self.version_combo.currentData()
        if self.current is not None and v is not None and v != self.current.version:
            self.load(self.current.name, v)

    def versions(self) -> list[int]:
        return [self.version_combo.itemData(i) for i in range(self.version_combo.count())]

    # -- variables, test inputs, preview ----------------------------------------------
    def variables(self) -> list[str]:
        return variables(self.text.toPlainText())

    def _columns(self) -> list[str]:
        return list(self._cols)

    def _text_changed(self) -> None:
        names = self.variables()
        self.vars_label.setText(
            "Variables: " + ", ".join(f"{{{{{n}}}}}" for n in names)
            if names
            else "No variables. Write {{name}} in the text to add one."
        )
        if names != self._columns():
            self._set_tests(self.test_inputs(keep_empty=True))
        else:
            self.update_preview()

    def _set_tests(self, rows: list[dict[str, Any]]) -> None:
        """Fill the table: one column per variable of the current text, values kept by name."""
        names = self.variables()
        self._cols = names
        self.tests.blockSignals(True)
        self.tests.clear()
        self.tests.setColumnCount(len(names))
        self.tests.setHorizontalHeaderLabels(names)
        self.tests.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, n in enumerate(names):
                self.tests.setItem(r, c, QTableWidgetItem(str(row.get(n, ""))))
        self.tests.blockSignals(False)
        self.add_test_btn.setEnabled(bool(names))
        self.update_preview()

    def test_inputs(self, *, keep_empty: bool = False) -> list[dict[str, str]]:
        """The table's rows as {variable: value}; rows left entirely empty are skipped."""
        cols = self._columns()
        out = []
        for r in range(self.tests.rowCount()):
            row = {}
            for c, n in enumerate(cols):
                item = self.tests.item(r, c)
                row[n] = item.text() if item is not None else ""
            if keep_empty or any(v.strip() for v in row.values()):
                out.append(row)
        return out

    def add_test_row(self) -> int:
        """Append an empty test input row; returns its index."""
        r = self.tests.rowCount()
        self.tests.blockSignals(True)
        self.tests.insertRow(r)
        for c in range(self.tests.columnCount()):
            self.tests.setItem(r, c, QTableWidgetItem(""))
        self.tests.blockSignals(False)
        if self.tests.columnCount():
            self.tests.setCurrentCell(r, 0)
        self.update_preview()
        return r

    def set_test_value(self, row: int, variable: str, value: str) -> None:
        self.tests.setItem(row, self._columns().index(variable), QTableWidgetItem(value))

    def remove_test_row(self) -> None:
        r = self.tests.currentRow()
        if r >= 0:
            self.tests.removeRow(r)
            self.update_preview()

    def update_preview(self, *_: object) -> None:
        text = self.text.toPlainText()
        names = self.variables()
        tests = self.test_inputs()
        if not names:
            self.preview.setPlainText(text)
            return
        if not tests:
            self.preview.setPlainText(
                "Add a test input (a value for each variable) to see the prompt rendered."
            )
            return
        parts = []
        for i, t in enumerate(tests, 1):
            empty = [n for n in names if not t.get(n, "").strip()]
            head = f"── test input {i}" + (f" (empty: {', '.join(empty)})" if empty else "")
            parts.append(f"{head} ──\n{render(text, t)}")
        self.preview.setPlainText("\n\n".join(parts))

    # -- save and diff ----------------------------------------------------------------
    def save(self) -> Any:
        """Save the editor as the prompt's next version.

        With the action layer it runs off the UI thread (errors under Save) and returns
        the action's handle; without, it returns the saved prompt or None."""
        name, text = self.name.text().strip(), self.text.toPlainText()
        description, inputs = self.description.text().strip(), self.test_inputs()

        def write(_progress: Any = None) -> Prompt:
            return self.store.save(name, text, description=description, test_inputs=inputs)

        if self.action_runner is not None:
            self.saving = True
            self.save_btn.setEnabled(False)

            def finished() -> None:
                self.saving = False
                self.save_btn.setEnabled(True)

            def done(p: Prompt) -> None:
                finished()
                self._saved(p)

            return self.action_runner.run(
                self, f"Saving {name or 'the prompt'}", write, changes=("prompts",),
                done=done, failed=lambda _exc: finished(), status=self.save_status,
            )  # fmt: skip
        try:
            p = write()
        except DemoAIError as exc:
            show_error(self, "Cannot save the prompt", exc)
            return None
        self._saved(p)
        return p

    def _saved(self, p: Prompt) -> None:
        self.load(p.name, p.version)
        self.status.setText(f"Saved {p.name} v{p.version}.")
        self.saved.emit(p)

    def update_diff(self, *_: object) -> None:
        a, b = self.diff_a.currentData(), self.diff_b.currentData()
        if self.current is None or a is None or b is None:
            self.diff_text = ""
            return
        try:
            diff = self.store.diff(self.current.name, a, b)
        except DemoAIError as exc:
            self.diff_view.setPlainText(str(exc))
            return
        self.diff_view.setHtml(diff_html(diff))
        self.diff_text = diff


__all__ = ["PromptLibrary", "diff_html"]
