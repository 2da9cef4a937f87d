"""The Arena tab: blind pairwise votes between models, and the leaderboard they make.

Answers come from the model host (one host serving all chosen models) on a
background thread; each prompt becomes a blind match (:class:`ArenaService`),
shown as A and B in the match's order. Names are revealed only after the vote.
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.core.data.store import DatasetStore
from app.core.errors import DemoAIError
from app.core.eval.arena import ArenaService, BlindMatch
from app.core.eval.runner import EvalStore
from app.core.models.registry import ModelRegistry
from app.ui.panes.evaluate.qt_answers import AnswerFetcher
from app.ui.panes.evaluate.qt_eval_tab import (
    checkable,
    checked_data,
    fmt_ci,
    num_item,
    run_label,
    set_checked,
    table,
    text_item,
)
from app.ui.services import Services

VOTE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad"}


class ArenaTab(QWidget):
    """Setup on the left; the blind match in the middle; leaderboard and metrics below."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.ws = services.workspace
        self.registry = ModelRegistry(self.ws)
        self.datasets = DatasetStore(self.ws)
        self.arena = ArenaService(self.ws)
        self.evals = EvalStore(self.ws)
        self.host = services.host
        self._leases: list[Any] = []  # held while answers are fetched
        self.fetcher: AnswerFetcher | None = None
        self.queue: list[BlindMatch] = [m.blind() for m in self.arena.matches(voted=False)]
        self.match: BlindMatch | None = None
        self.revealed: dict[str, Any] | None = None
        self._metric_dataset: str | None = None
        self._total = 0

        # -- setup
        self.models = QListWidget()
        self.models.setObjectName("arenaModels")
        self.models.setMaximumHeight(120)
        self.models_hint = QLabel(
            "The arena needs two or more models: import them in the Models pane."
        )
        self.models_hint.setWordWrap(True)
        self.typed = QRadioButton("Typed prompts")
        self.typed.setChecked(True)
        self.from_dataset = QRadioButton("A dataset column")
        self.prompts = QPlainTextEdit()
        self.prompts.setObjectName("arenaPrompts")
        self.prompts.setPlaceholderText("One prompt per line")
        self.prompts.setMaximumHeight(100)
        self.dataset = QComboBox()
        self.column = QComboBox()
        self.rows = QSpinBox()
        self.rows.setRange(1, 10_000)
        self.rows.setValue(10)
        self.rows.setToolTip("How many rows of the column to use as prompts (from the start).")
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 8192)
        self.max_tokens.setValue(256)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.05)
        self.temperature.setValue(0.7)
        self.go_btn = QPushButton("Get answers")
        self.go_btn.setObjectName("arenaGo")
        self.stop_btn = QPushButton("Stop")
        self.status = QLabel("")
        self.status.setObjectName("arenaStatus")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Models (2+)", self.models)
        form.addRow(self.models_hint)
        form.addRow(self.typed)
        form.addRow(self.prompts)
        form.addRow(self.from_dataset)
        form.addRow("Dataset", self.dataset)
        form.addRow("Column", self.column)
        form.addRow("Rows", self.rows)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Temperature", self.temperature)
        setup = QWidget()
        sl = QVBoxLayout(setup)
        sl.addLayout(form)
        brow = QHBoxLayout()
        brow.addWidget(self.go_btn)
        brow.addWidget(self.stop_btn)
        sl.addLayout(brow)
        sl.addWidget(self.status)
        sl.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(setup)
        scroll.setMinimumWidth(280)

        # -- the match
        self.prompt_view = QLabel("")
        self.prompt_view.setObjectName("arenaPrompt")
        self.prompt_view.setWordWrap(True)
        self.prompt_view.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.title_a = QLabel("<b>A</b>")
        self.title_b = QLabel("<b>B</b>")
        self.answer_a = QTextBrowser()
        self.answer_a.setObjectName("arenaAnswerA")
        self.answer_b = QTextBrowser()
        self.answer_b.setObjectName("arenaAnswerB")
        box_a, box_b = QWidget(), QWidget()
        for box, title, view in (
            (box_a, self.title_a, self.answer_a),
            (box_b, self.title_b, self.answer_b),
        ):
            lay = QVBoxLayout(box)
            lay.setContentsMargins(0, 0, 0, 0)
            lay.addWidget(title)
            lay.addWidget(view, 1)
        answers = QSplitter(Qt.Orientation.Horizontal)
        answers.addWidget(box_a)
        answers.addWidget(box_b)
        self.vote_btns: dict[str, QPushButton] = {}
        vrow = QHBoxLayout()
        for key, label in VOTE_LABELS.items():
            b = QPushButton(label)
            b.setObjectName(f"arenaVote_{key}")
            b.clicked.connect(lambda _=False, k=key: self.vote(k))
            self.vote_btns[key] = b
            vrow.addWidget(b)
        self.next_btn = QPushButton("Next match")
        self.next_btn.clicked.connect(self.next_match)
        vrow.addStretch(1)
        vrow.addWidget(self.next_btn)
        self.reveal = QLabel("")
        self.reveal.setObjectName("arenaReveal")
        self.reveal.setWordWrap(True)
        self.pending = QLabel("")
        match_box = QWidget()
        ml = QVBoxLayout(match_box)
        ml.setContentsMargins(0, 0, 0, 0)
        ml.addWidget(self.prompt_view)
        ml.addWidget(answers, 1)
        ml.addLayout(vrow)
        ml.addWidget(self.reveal)
        ml.addWidget(self.pending)

        # -- leaderboard and metrics side by side
        self.board = table(
            ["#", "Model", "Rating (BT)", "95% CI", "Elo", "W", "L", "T", "Matches"],
            "arenaLeaderboard",
        )
        # best first: rank ascending until the user clicks another header (Qt's default
        # indicator is column 0 descending, which listed rank 2 above rank 1)
        self.board.horizontalHeader().setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.metrics_table = table(["Model", "Metric", "Value", "95% CI", "Run"], "arenaMetrics")
        self.metrics_label = QLabel("<b>Metric results</b>")
        board_box = QGroupBox("Leaderboard")
        QVBoxLayout(board_box).addWidget(self.board)
        metric_box = QWidget()
        mbl = QVBoxLayout(metric_box)
        mbl.setContentsMargins(0, 0, 0, 0)
        mbl.addWidget(self.metrics_label)
        mbl.addWidget(self.metrics_table, 1)
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(board_box)
        bottom.addWidget(metric_box)

        centre = QSplitter(Qt.Orientation.Vertical)
        centre.addWidget(match_box)
        centre.addWidget(bottom)
        centre.setSizes([450, 250])
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(scroll)
        split.addWidget(centre)
        split.setSizes([300, 850])
        QVBoxLayout(self).addWidget(split)

        self.dataset.currentIndexChanged.connect(self._dataset_changed)
        self.go_btn.clicked.connect(self.get_answers)
        self.stop_btn.clicked.connect(self.stop)
        services.bus.models_changed.connect(self.refresh_models)
        self.refresh_models()
        self.refresh_datasets()
        self.refresh_leaderboard()
        self._set_busy(False)
        self.next_match()

    # -- setup ------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        chosen = set(checked_data(self.models))
        self.models.clear()
        for m in self.registry.list():
            if m.format in ("gguf", "hf", "lora"):
                checkable(self.models, f"{m.name}  ({m.format})", m.id, m.id in chosen)
        self.models_hint.setVisible(self.models.count() < 2)

    def select_models(self, model_ids: list[str]) -> None:
        set_checked(self.models, model_ids)

    def refresh_datasets(self) -> None:
        current = self.dataset.currentData()
        self.dataset.blockSignals(True)
        self.dataset.clear()
        for ds in self.datasets.list_datasets():
            self.dataset.addItem(ds.name, ds.id)
        if current is not None and (i := self.dataset.findData(current)) >= 0:
            self.dataset.setCurrentIndex(i)
        self.dataset.blockSignals(False)
        self._dataset_changed()

    def _dataset_changed(self, *_: Any) -> None:
        self.column.clear()
        ds_id = self.dataset.currentData()
        if ds_id is None:
            return
        try:
            cols = [c["name"] for c in self.datasets.version(ds_id).schema]
        except DemoAIError:
            cols = []
        self.column.addItems(cols)

    def _prompt_list(self) -> list[str]:
        if self.typed.isChecked():
            return [p.strip() for p in self.prompts.toPlainText().splitlines() if p.strip()]
        ds_id, col = self.dataset.currentData(), self.column.currentText()
        if ds_id is None or not col:
            raise DemoAIError("Choose a dataset and a column for the prompts.")
        tab = self.datasets.read_table(ds_id, columns=[col]).slice(0, self.rows.value())
        return [str(v) for v in tab.column(col).to_pylist() if v is not None and str(v).strip()]

    def get_answers(self) -> AnswerFetcher | None:
        """Ask every chosen model each prompt (off the UI thread); each prompt becomes a match."""
        if self.fetcher is not None:
            return None
        model_ids = checked_data(self.models)
        try:
            if len(model_ids) < 2:
                raise DemoAIError("Choose at least two models to compare.")
            prompts = self._prompt_list()
            if not prompts:
                raise DemoAIError("Type at least one prompt (one per line).")
            specs = []
            for mid in model_ids:
                rec = self.registry.get(mid)
                specs.append(rec)
        except DemoAIError as exc:
            self.status.setText(f"<span style='color:#c0392b'>{html.escape(exc.message)}</span>")
            return None
        self._metric_dataset = None if self.typed.isChecked() else self.dataset.currentData()
        sampling = {
            "temperature": round(self.temperature.value(), 3),
            "max_tokens": self.max_tokens.value(),
        }

        def lease_all() -> tuple[str, str]:  # on the fetcher's thread
            for rec in specs:
                self._leases.append(self.host.lease(rec))
            return self._leases[0].base_url, self._leases[0].token

        fetcher = AnswerFetcher(lease_all, model_ids, prompts, sampling)
        fetcher.answered.connect(self._answered)
        fetcher.finished.connect(self._fetch_finished)
        self.fetcher = fetcher
        self._total = len(prompts)
        self.status.setText(f"Loading {len(model_ids)} models in the model host…")
        self._set_busy(True)
        fetcher.start()
        return fetcher

    def stop(self) -> None:
        if self.fetcher is not None:
            self.fetcher.stop()
            self.status.setText("Stopping after the answer in progress…")

    def _answered(
        self, i: int, prompt: str, answers: dict[str, str], errors: dict[str, str]
    ) -> None:
        self.status.setText(f"Answered {i + 1}/{self._total} prompts…")
        if errors:
            names = "; ".join(f"{self._name(m)}: {e}" for m, e in errors.items())
            self.status.setText(f"Prompt {i + 1}: some models failed ({names}).")
        if len(answers) < 2:
            return
        try:
            self.queue.append(self.arena.create_match(prompt, answers))
        except DemoAIError as exc:
            self.status.setText(exc.message)
            return
        if self.match is None:
            self.next_match()
        self._update_pending()

    def _release_leases(self) -> None:
        leases, self._leases = self._leases, []
        for lease in leases:
            self.host.release(lease)

    def _fetch_finished(self, error: str) -> None:
        self.fetcher = None
        self._release_leases()
        self._set_busy(False)
        if error:
            self.status.setText(
                f"<span style='color:#c0392b'>{html.escape(error)}</span> "
                "The matches made so far are kept."
            )
        elif not self.status.text().startswith("Prompt"):
            self.status.setText("All answers are in. Vote on each match.")
        self._update_pending()

    def _set_busy(self, busy: bool) -> None:
        self.go_btn.setEnabled(not busy)
        self.stop_btn.setEnabled(busy)
        self.models.setEnabled(not busy)

    # -- voting -------------------------------------------------------------------------------
    def _name(self, model_id: str) -> str:
        try:
            return self.registry.get(model_id).name
        except DemoAIError:
            return model_id

    def next_match(self) -> None:
        """Show the next unvoted match, blind."""
        self.match = self.queue.pop(0) if self.queue else None
        self.revealed = None
        self.title_a.setText("<b>A</b>")
        self.title_b.setText("<b>B</b>")
        self.reveal.setText("")
        m = self.match
        if m is None:
            self.prompt_view.setText(
                "<i>No match to vote on. Choose two or more models and some prompts, "
                "then press Get answers.</i>"
            )
            self.answer_a.clear()
            self.answer_b.clear()
        else:
            self.prompt_view.setText(f"<b>Prompt:</b> {html.escape(m.prompt)}")
            self.answer_a.setPlainText(m.answer_a)
            self.answer_b.setPlainText(m.answer_b)
        for b in self.vote_btns.values():
            b.setEnabled(m is not None)
        self.next_btn.setEnabled(False)
        self._update_pending()

    def vote(self, vote: str) -> None:
        """Record the vote, reveal the names, update the leaderboard."""
        if self.match is None or self.revealed is not None:
            return
        try:
            full = self.arena.vote(self.match.id, vote)
        except DemoAIError as exc:
            self.reveal.setText(exc.message)
            return
        name_a, name_b = self._name(full.model_a), self._name(full.model_b)
        self.revealed = {"a": full.model_a, "b": full.model_b, "vote": vote}
        self.title_a.setText(f"<b>A</b> — {html.escape(name_a)}")
        self.title_b.setText(f"<b>B</b> — {html.escape(name_b)}")
        self.reveal.setText(
            f"You voted <b>{VOTE_LABELS[vote]}</b>. A was <b>{html.escape(name_a)}</b>, "
            f"B was <b>{html.escape(name_b)}</b>."
        )
        for b in self.vote_btns.values():
            b.setEnabled(False)
        self.next_btn.setEnabled(bool(self.queue))
        self.refresh_leaderboard()

    def _update_pending(self) -> None:
        n = len(self.queue)
        self.pending.setText(f"{n} more match(es) waiting." if n else "")
        if self.revealed is not None:
            self.next_btn.setEnabled(n > 0)

    # -- leaderboard ----------------------------------------------------------------------------
    def refresh_leaderboard(self) -> None:
        rows = self.arena.leaderboard()
        self.board.setSortingEnabled(False)
        self.board.setRowCount(len(rows))
        for r, row in enumerate(rows):
            self.board.setItem(r, 0, num_item(row["rank"]))
            self.board.setItem(r, 1, text_item(self._name(row["model"]), row["model"]))
            self.board.setItem(r, 2, num_item(round(row["rating"], 1)))
            self.board.setItem(r, 3, text_item(f"[{row['ci_low']:.0f}, {row['ci_high']:.0f}]"))
            self.board.setItem(r, 4, num_item(round(row["elo"], 1) if row["elo"] else None))
            for c, key in ((5, "wins"), (6, "losses"), (7, "ties"), (8, "matches")):
                self.board.setItem(r, c, num_item(row[key]))
        self.board.resizeColumnsToContents()
        self.board.setSortingEnabled(True)
        models = [row["model"] for row in rows]
        self.refresh_metrics(models + [m for m in checked_data(self.models) if m not in models])

    def refresh_metrics(self, models: list[str]) -> None:
        """The newest eval results of each leaderboard model (on the prompts' dataset if any)."""
        ds = self._metric_dataset
        self.metrics_label.setText(
            "<b>Metric results</b>"
            + (f" on {html.escape(self._dataset_name(ds))}" if ds else " (newest eval run)")
        )
        self.metrics_table.setSortingEnabled(False)
        self.metrics_table.setRowCount(0)
        runs = [r for r in self.evals.list_runs() if r.state == "succeeded" and r.summary]
        if ds:
            runs = [r for r in runs if r.dataset_ref.partition("@")[0] == ds]
        for model in models:
            run = next((r for r in runs if model in (r.summary or {}).get("aggregates", {})), None)
            if run is None:
                continue
            for metric, a in run.summary["aggregates"][model].items():  # type: ignore[index]
                r = self.metrics_table.rowCount()
                self.metrics_table.insertRow(r)
                self.metrics_table.setItem(r, 0, text_item(self._name(model), model))
                self.metrics_table.setItem(r, 1, text_item(metric))
                self.metrics_table.setItem(r, 2, num_item(a.get("value")))
                self.metrics_table.setItem(
                    r, 3, text_item(fmt_ci(a.get("ci_low"), a.get("ci_high")))
                )
                self.metrics_table.setItem(r, 4, text_item(run_label(run), run.id))
        self.metrics_table.resizeColumnsToContents()
        self.metrics_table.setSortingEnabled(True)

    def _dataset_name(self, ds: str) -> str:
        try:
            return self.datasets.get(ds).name
        except DemoAIError:
            return ds

    def shutdown(self) -> None:
        if self.fetcher is not None:
            self.fetcher.stop()
            self.fetcher.wait(5)
        self._release_leases()  # the window stops the shared host
