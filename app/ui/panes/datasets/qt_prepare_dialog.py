"""Datasets › Prepare…: choose a preparation step, set its parameters, preview, apply as a job."""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
)

from app.core.errors import DemoAIError

if TYPE_CHECKING:
    from app.ui.panes.datasets.qt_datasets_pane import DatasetsPane


class PrepareDialog(QDialog):
    """Choose a preparation step, edit its parameters, preview, apply as a job."""

    def __init__(self, pane: DatasetsPane) -> None:
        super().__init__(pane)
        from app.core.data import OPS

        self.setWindowTitle("Prepare dataset")
        self.resize(820, 600)
        self.pane = pane
        self.ops = OPS
        self.op = QComboBox()
        for name, spec in sorted(OPS.items(), key=lambda kv: kv[1].title):
            self.op.addItem(spec.title, name)
        self.desc = QLabel()
        self.desc.setWordWrap(True)
        self.params = QPlainTextEdit()
        self.params.setObjectName("opParams")
        self.preview_view = QTextBrowser()
        self.preview_btn = QPushButton("Preview")
        self.preview_btn.clicked.connect(self.preview)
        buttons = QDialogButtonBox()
        self.apply_btn = buttons.addButton(
            "Apply as a new version", QDialogButtonBox.ButtonRole.AcceptRole
        )
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.op)
        lay.addWidget(self.desc)
        lay.addWidget(QLabel("Parameters (JSON):"))
        lay.addWidget(self.params, 1)
        row = QHBoxLayout()
        row.addWidget(self.preview_btn)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addWidget(self.preview_view, 2)
        lay.addWidget(buttons)
        self.op.currentIndexChanged.connect(self._op_changed)
        self._op_changed()

    def _op_changed(self, *_: object) -> None:
        spec = self.ops[self.op.currentData()]
        self.desc.setText(
            spec.description + (f"  Required: {', '.join(spec.required)}." if spec.required else "")
        )
        params = {k: None for k in spec.required} | dict(spec.defaults)
        self.params.setPlainText(json.dumps(params, indent=2))
        self.preview_view.clear()

    def step(self) -> dict[str, Any]:
        try:
            params = json.loads(self.params.toPlainText() or "{}")
        except ValueError as exc:
            raise DemoAIError(f"The parameters are not valid JSON: {exc}.") from exc
        spec = self.ops[self.op.currentData()]
        spec.resolve(params)  # raises ConfigError with what is wrong
        return {"name": spec.name, "params": params}

    def preview(self) -> None:
        from app.core.data import count_pii, preview

        self.preview_view.clear()  # never leave an earlier error under a new result
        try:
            step = self.step()
            table = self.pane.store.parquet_file(self.pane.ref()).read_row_group(0)
            table = table.slice(0, 200)
            parts = []
            if step["name"] == "redact_pii":
                counts = count_pii(
                    table, step["params"].get("columns"), step["params"].get("types")
                )
                parts.append(
                    f"<p><b>PII found in the first {table.num_rows} rows:</b> {html.escape(str(counts))}</p>"
                )
            # every sampled row goes through the step, so filters show their real rows-out count
            out = preview(table, step["name"], step["params"], table.num_rows)
            parts.append(f"<p>{table.num_rows} rows in, {len(out)} rows out (first 10 shown).</p>")
            names = list(dict.fromkeys(k for row in out[:10] for k in row))
            parts.append("<table border=1 cellspacing=0 cellpadding=3><tr>")
            parts += [f"<th>{html.escape(n)}</th>" for n in names]
            parts.append("</tr>")
            for row in out[:10]:
                parts.append(
                    "<tr>"
                    + "".join(f"<td>{html.escape(str(row.get(n))[:200])}</td>" for n in names)
                    + "</tr>"
                )
            parts.append("</table>")
            self.preview_view.setHtml("".join(parts))
        except DemoAIError as exc:
            self._show_error(str(exc))
        except Exception as exc:  # a step that fails on this data: shown here, never a crash
            self._show_error(
                f"The preview failed: {type(exc).__name__}: {exc}. Check the parameters."
            )

    def _show_error(self, text: str) -> None:
        self.preview_view.setHtml(f"<p style='color:#c0392b'>{html.escape(text)}</p>")

    def accept(self) -> None:
        try:
            self.chosen = self.step()
        except DemoAIError as exc:
            self._show_error(str(exc))
            return
        super().accept()
