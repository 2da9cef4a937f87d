"""What agents may do: approvals (approve what waits, revoke what was approved).

Each row is bound to one agent and the exact content of one spec version
(``app.core.agents.approvals``): an MCP server with its argv and environment,
a side-effecting tool with its folder, or 'always' for a tool's calls. Rows
that wait for approval are the grants of each agent's latest version that are
inactive (an imported agent's servers and tools, any MCP server).
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.agents import AgentStore
from app.core.agents.approvals import ApprovalStore, Grant
from app.core.errors import DemoAIError
from app.core.store.db import Database
from app.ui.qt_errors import show_error
from app.ui.widgets.status_line import StatusLine

ROLE = Qt.ItemDataRole.UserRole
KIND_LABELS = {
    "mcp_server": "start MCP server",
    "tool": "use tool",
    "always": "run calls unasked",
}


class ApprovalsView(QWidget):
    """Approved and waiting grants of every agent; Approve and Revoke buttons."""

    changed = Signal()

    def __init__(self, db: Database, parent: QWidget | None = None, *, actions: Any = None) -> None:
        super().__init__(parent)
        #: The window's action layer: approve and revoke run through it when given.
        self.action_runner = actions
        self.busy = False
        self.agents = AgentStore(db)
        self.store = ApprovalStore(db)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Agent", "Version", "Allows", "Status"])
        self.tree.setColumnWidth(0, 130)
        self.tree.setColumnWidth(1, 70)
        self.tree.setColumnWidth(2, 520)
        self.tree.setWordWrap(True)
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(False)
        self.tree.currentItemChanged.connect(lambda *_: self._update_buttons())
        self.detail = QPlainTextEdit()
        self.detail.setReadOnly(True)
        self.detail.setMaximumHeight(110)
        self.detail.setPlaceholderText("Select a row to see exactly what it allows.")
        self.approve_btn = QPushButton("Approve for this version")
        self.approve_btn.setToolTip(
            "Allow exactly what the selected row shows, for this agent version only. "
            "Any change of the agent asks again."
        )
        self.approve_btn.clicked.connect(lambda: self.approve_selected())
        self.revoke_btn = QPushButton("Revoke")
        self.revoke_btn.clicked.connect(lambda: self.revoke_selected())
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        about = QLabel(
            "<b>Approvals</b> — what each agent version may do. An approval holds for one "
            "agent and the exact content of one version; MCP servers and the tools of an "
            "imported agent stay inactive until approved here (or on the command line)."
        )
        about.setWordWrap(True)
        lay.addWidget(about)
        lay.addWidget(self.tree, 1)
        lay.addWidget(self.detail)
        row = QHBoxLayout()
        row.addWidget(self.approve_btn)
        row.addWidget(self.revoke_btn)
        row.addStretch(1)
        lay.addLayout(row)
        self.status = StatusLine(self)
        lay.addWidget(self.status)
        self.refresh()

    def refresh(self) -> None:
        self.tree.clear()
        for spec in self.agents.list():
            for g in self.store.pending(spec):
                item = QTreeWidgetItem(
                    [
                        spec.name,
                        f"v{spec.version}",
                        self._what(g.kind, g.describe()),
                        "waiting for approval (inactive)",
                    ]
                )
                item.setData(0, ROLE, ("pending", spec.name, spec.version, g))
                item.setToolTip(2, f"grant {g.digest}")
                item.setForeground(3, QBrush(QColor("#a15c00")))
                self.tree.addTopLevelItem(item)
        for a in self.store.list():
            versions = ", ".join(f"v{v}" for v in a.versions) or "(none stored)"
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(a.created_at))
            item = QTreeWidgetItem(
                [
                    a.agent,
                    versions,
                    self._what(a.kind, a.describe()),
                    f"approved · {a.approved_by} · {when}",
                ]
            )
            item.setData(0, ROLE, ("approved", a.id))
            item.setToolTip(2, f"spec {a.spec_hash}\ngrant {a.grant_hash or '-'}")
            self.tree.addTopLevelItem(item)
        self._update_buttons()

    @staticmethod
    def _what(kind: str, description: str) -> str:
        if kind == "mcp_server":  # the description starts with "MCP server ..."
            return description
        return f"{KIND_LABELS.get(kind, kind)}: {description}"

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(agent, version, allows, status) of every row, as shown."""
        out = []
        for i in range(self.tree.topLevelItemCount()):
            it = self.tree.topLevelItem(i)
            if it is not None:
                out.append((it.text(0), it.text(1), it.text(2), it.text(3)))
        return out

    def select_row(self, n: int) -> bool:
        item = self.tree.topLevelItem(n)
        if item is None:
            return False
        self.tree.setCurrentItem(item)
        return True

    def _selected(self) -> tuple[Any, ...] | None:
        item = self.tree.currentItem()
        data = item.data(0, ROLE) if item is not None else None
        return tuple(data) if data else None

    def _update_buttons(self) -> None:
        item = self.tree.currentItem()
        self.detail.setPlainText(
            ""
            if item is None
            else f"{item.text(0)} {item.text(1)} · {item.text(3)}\n"
            f"{item.text(2)}\n{item.toolTip(2)}".strip()
        )
        sel = self._selected()
        self.approve_btn.setEnabled(sel is not None and sel[0] == "pending")
        self.revoke_btn.setEnabled(sel is not None and sel[0] == "approved")

    def approve_selected(self) -> bool:
        sel = self._selected()
        if sel is None or sel[0] != "pending":
            return False
        _, name, version, grant = sel
        assert isinstance(grant, Grant)
        spec = self.agents.get(name, version)
        return self._write(
            "Cannot approve",
            f"Approving {grant.name} for {name} v{version}",
            lambda: self.store.approve(spec, grant, by="user (Agents pane)"),
        )

    def revoke_selected(self) -> bool:
        sel = self._selected()
        if sel is None or sel[0] != "approved":
            return False
        approval_id = int(sel[1])
        return self._write("Cannot revoke", "Revoking", lambda: self.store.revoke(approval_id))

    def _write(self, failure: str, title: str, fn: Any) -> bool:
        """Run a change through the action layer (synchronously without one); refresh after."""

        def done(_result: Any = None) -> None:
            self.busy = False
            self.refresh()
            self.changed.emit()

        if self.action_runner is not None:
            self.busy = True
            self.approve_btn.setEnabled(False)
            self.revoke_btn.setEnabled(False)

            def failed(_exc: BaseException) -> None:
                self.busy = False
                self.refresh()

            self.action_runner.run(
                self, title, lambda _progress: fn(), changes=("approvals",),
                done=done, failed=failed, status=self.status,
            )  # fmt: skip
            return True
        try:
            fn()
        except DemoAIError as exc:
            show_error(self, failure, exc)
            return False
        done()
        return True


__all__ = ["ApprovalsView"]
