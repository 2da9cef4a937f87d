"""The run side of the Agents tab: what to do, Run, the approval bar, the step tree
of the shown run (branches included), the selected step in full, fork, replay and
export buttons, and the run's outcome."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.agents import ReplayReport, RunStore, Step
from app.core.agents.runs import STOPPED_STATES
from app.ui.panes.agents.qt_run_steps import (
    ERROR_COLOR,
    STEP_ROLE,
    STOP_COLOR,
    describe_step,
    format_call,
)


class ApprovalBar(QFrame):
    """Asks the user about one side-effecting call or grant: once, always, or deny."""

    decided = Signal(str)  # "once" | "always" | "deny"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet("QFrame { background: #fff4d6; }")
        self.text = QLabel("")
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.TextFormat.PlainText)
        self.once_btn = QPushButton("Approve once")
        self.always_btn = QPushButton("Always for this version")
        self.always_btn.setToolTip(
            "Remember for this agent and this exact version; any change of the agent asks again."
        )
        self.deny_btn = QPushButton("Deny")
        self.once_btn.clicked.connect(lambda: self.decided.emit("once"))
        self.always_btn.clicked.connect(lambda: self.decided.emit("always"))
        self.deny_btn.clicked.connect(lambda: self.decided.emit("deny"))
        bar = QVBoxLayout(self)
        bar.addWidget(self.text)
        buttons = QHBoxLayout()
        for b in (self.once_btn, self.always_btn, self.deny_btn):
            buttons.addWidget(b)
        buttons.addStretch(1)
        bar.addLayout(buttons)
        self.hide()

    def ask(self, text: str) -> None:
        self.text.setText(text)
        self.show()
        self.once_btn.setFocus()


class RunView(QWidget):
    """One run's steps as a tree; ``step_changed`` when the selected step changes."""

    step_changed = Signal()

    def __init__(self, runs: RunStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs = runs
        self.run_id: str | None = None  # the run shown
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("What should the agent do?")
        self.input.setMaximumHeight(80)
        self.run_btn = QPushButton("Run")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.approval_bar = ApprovalBar()
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Step", "Content"])
        self.tree.setColumnWidth(0, 220)
        self.tree.currentItemChanged.connect(self._step_selected)
        self.detail = QPlainTextEdit()
        self.detail.setReadOnly(True)
        self.detail.setMaximumHeight(140)
        self.fork_btn = QPushButton("Fork from here…")
        self.replay_btn = QPushButton("Replay")
        self.replay_btn.setToolTip(
            "Run the same agent version again with the same seed, answering tool calls from "
            "the recording, and show whether it went the same way."
        )
        self.export_run_btn = QPushButton("Export run…")
        self.export_run_btn.setToolTip("Write this run (every branch) as a bundle.")
        self.replay_label = QLabel("")
        self.replay_label.setWordWrap(True)
        self.replay_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.replay_label.hide()
        self.final_label = QLabel("")
        self.final_label.setWordWrap(True)
        self.final_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        rl = QVBoxLayout(self)
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
        self.show_outcome(run.status, run.final, run.error)

    def show_outcome(self, status: str, final: str | None, error: str | None) -> None:
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
        self.step_changed.emit()

    def show_replay(self, report: ReplayReport) -> None:
        """The replay's verdict above its steps, the first divergent step selected."""
        original = report.original.id
        if report.identical:
            text = f"Replay of run {original}: identical, every step matches the recording."
            color = "#116329"
        else:
            assert report.divergence is not None
            text = f"Replay of run {original} diverged at {report.divergence.describe()}"
            color = ERROR_COLOR
        self.replay_label.setText(text)
        self.replay_label.setStyleSheet(f"color: {color}")
        self.replay_label.show()
        div = report.divergence
        select = div.actual.id if div is not None and div.actual is not None else None
        self.show_run(report.replay.id, select=select)

    def clear_run(self, label: str) -> None:
        """Empty the view for a run that is starting."""
        self.run_id = None
        self.replay_label.hide()
        self.tree.clear()
        self.detail.clear()
        self.final_label.setText(label)

    def set_busy(self, busy: bool) -> None:
        self.run_btn.setEnabled(not busy)
        self.fork_btn.setEnabled(not busy and self.selected_step() is not None)
        self.replay_btn.setEnabled(not busy and self.run_id is not None)
        self.export_run_btn.setEnabled(self.run_id is not None)
