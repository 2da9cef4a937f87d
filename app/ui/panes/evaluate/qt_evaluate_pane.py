"""The Evaluate & Arena pane: metric runs on your datasets, and blind pairwise votes.

Nothing heavy runs in the window: eval runs are ``eval.run`` jobs (worker
processes) and arena answers come from the model host over HTTP.
"""

from __future__ import annotations

from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from app.ui.panes.evaluate.qt_agent_eval_tab import AgentEvalTab
from app.ui.panes.evaluate.qt_arena_tab import ArenaTab
from app.ui.panes.evaluate.qt_eval_tab import EvalTab
from app.ui.panes.evaluate.qt_harness_tab import HarnessTab
from app.ui.services import Services


class EvaluatePane(QWidget):
    """Two tabs: Evaluate (runs, results, comparison, export) and Arena (votes, leaderboard)."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.eval_tab = EvalTab(services)
        self.arena_tab = ArenaTab(services)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("evaluateTabs")
        self.tabs.addTab(self.eval_tab, "Evaluate")
        self.tabs.addTab(self.arena_tab, "Arena")
        self.agent_eval_tab = AgentEvalTab(services)
        self.tabs.addTab(self.agent_eval_tab, "Agent eval")
        self.harness_tab = HarnessTab(services)
        self.tabs.addTab(self.harness_tab, "Harness task")
        self.tabs.currentChanged.connect(self._tab_changed)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tabs)

    def _tab_changed(self, index: int) -> None:
        # datasets and eval results may have changed elsewhere since the tab was last shown
        if self.tabs.widget(index) is self.arena_tab:
            self.arena_tab.refresh_datasets()
            self.arena_tab.refresh_leaderboard()
        else:
            self.eval_tab.refresh_datasets()

    def showEvent(self, event: QShowEvent) -> None:
        self._tab_changed(self.tabs.currentIndex())
        super().showEvent(event)

    def shutdown(self) -> None:
        """Stop fetching arena answers and the arena's model host (the window is closing)."""
        self.arena_tab.shutdown()


__all__ = ["EvaluatePane"]
