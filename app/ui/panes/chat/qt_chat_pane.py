"""The Chat pane: pick a model, talk to it through the local model host, branch freely.

The transcript is the path from the conversation's root to its shown leaf.
Editing a message or regenerating an answer adds a sibling branch; "‹ previous"
and "next ›" links under a message switch between siblings. Tokens are appended
as they stream and the view is redrawn at most every 50 ms, so the window stays
responsive.

A base model (no chat template of its own) gets a one-line note and starts in
Completion mode: the transcript is sent as plain text to ``/v1/completions`` and
the model continues it. Chat mode renders the messages with a chat template.
Stop keeps the partial answer, marked "— stopped" (``usage.stopped`` in the
saved message). The pane leases its model from the window's shared model host.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, QUrl
from PySide6.QtGui import QFont, QKeyEvent, QKeySequence, QShortcut, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
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
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.core.chat import Conversation, ConversationStore, Message
from app.core.errors import DemoAIError
from app.core.infer.templates import TEMPLATE_CHOICES
from app.core.models.registry import ModelRecord, ModelRegistry
from app.core.store.files import atomic_write_json
from app.ui.panes.chat.qt_stream import ChatStream
from app.ui.services import Services
from app.ui.widgets.pickers import ModelPicker
from app.ui.widgets.status_line import StatusLine

#: Chat: messages through the chat template. Completion: the transcript as plain text.
MODES = (("Chat", "chat"), ("Completion", "completion"))
STOPPED_MARK = "— stopped"


class _EnterToSend(QObject):
    """Enter sends, Shift+Enter inserts a newline, Esc stops."""

    def __init__(self, pane: ChatPane) -> None:
        super().__init__(pane)
        self.pane = pane

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
            if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (
                event.modifiers() & Qt.KeyboardModifier.ShiftModifier
            ):
                self.pane.send()
                return True
            if event.key() == Qt.Key.Key_Escape:
                self.pane.stop()
                return True
        return False


class ChatPane(QWidget):
    """Conversations on the left, transcript and input in the middle, settings on the right."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.store = ConversationStore(services.workspace.db)
        self.registry = ModelRegistry(services.workspace)
        self.host = services.host
        self.conv: Conversation | None = None
        self.stream: ChatStream | None = None
        self.edit_dialog: QDialog | None = None
        self._lease: Any = None  # the host lease of the last answer, held until the next
        #: model id -> True when the model has no chat template of its own (a base model)
        self._base: dict[str, bool] = {}
        self._answer_id: str | None = None
        self._answer_text = ""
        #: reply id -> what feedback was saved for it in this session (shown under the reply)
        self.feedback_given: dict[str, str] = {}
        self.better_dialog: QDialog | None = None
        self._t_first: float | None = None
        self._redraw = QTimer(self)
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(50)
        self._redraw.timeout.connect(self.render_transcript)

        # -- left: conversations
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search chats…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.refresh_conversations)
        self.conv_list = QListWidget()
        self.conv_list.setObjectName("conversations")
        self.conv_list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.conv_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.conv_list.currentItemChanged.connect(self._conv_selected)
        self.new_btn = QPushButton("New chat")
        self.rename_btn = QPushButton("Rename")
        self.delete_btn = QPushButton("Delete")
        self.export_btn = QPushButton("Export…")
        self.new_btn.clicked.connect(self.new_chat)
        self.rename_btn.clicked.connect(self.rename_chat)
        self.delete_btn.clicked.connect(self.delete_chat)
        self.export_btn.clicked.connect(self.export_chat)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.new_btn)
        ll.addWidget(self.search)
        ll.addWidget(self.conv_list, 1)
        row = QHBoxLayout()
        for b in (self.rename_btn, self.delete_btn, self.export_btn):
            row.addWidget(b)
        ll.addLayout(row)
        self.action_status = StatusLine()  # rename, delete, export: progress and errors here
        self.action_status.setObjectName("chatActionStatus")
        ll.addWidget(self.action_status)

        # -- middle: transcript + input
        self.model_combo = ModelPicker(services, formats=("gguf", "hf", "lora"))
        self.model_combo.setObjectName("chatModel")
        self.model_combo.setToolTip("Model (Ctrl+K)")
        self.model_combo.selection_changed.connect(self._model_changed)
        self.mode = QComboBox()
        self.mode.setObjectName("chatMode")
        for mode_label, mode in MODES:
            self.mode.addItem(mode_label, mode)
        self.mode.setToolTip(
            "Chat: your messages go through the model's chat template.\n"
            "Completion: the conversation is sent as plain text and the model continues it "
            "(for base models, which have no chat template)."
        )
        self.mode.currentIndexChanged.connect(self._mode_changed)
        self.model_note = QLabel("")
        self.model_note.setObjectName("chatModelNote")
        self.model_note.setWordWrap(True)
        self.model_note.setStyleSheet(
            "background: palette(alternate-base); border: 1px solid palette(midlight);"
            " border-radius: 4px; padding: 4px 8px"
        )
        self.model_note.hide()
        self.transcript = QTextBrowser()
        self.transcript.setObjectName("transcript")
        self.transcript.setOpenLinks(False)
        self.transcript.anchorClicked.connect(self._link)
        self.banner = QLabel("")
        self.banner.setObjectName("chatBanner")
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("color: #c0392b")
        self.banner.hide()
        self.input = QPlainTextEdit()
        self.input.setObjectName("chatInput")
        self.input.setPlaceholderText(
            "Message (Enter to send, Shift+Enter for a new line, Esc to stop)"
        )
        self.input.setMaximumHeight(110)
        self.input.installEventFilter(_EnterToSend(self))
        self.prompt_btn = QPushButton("Prompt…")
        self.prompt_btn.setToolTip("Insert a prompt from the library (variables filled in).")
        self.prompt_btn.clicked.connect(self.insert_prompt)
        self.prompt_picker: QWidget | None = None
        self.send_btn = QPushButton("Send")
        self.stop_btn = QPushButton("Stop")
        self.regen_btn = QPushButton("Regenerate")
        self.send_btn.clicked.connect(self.send)
        self.stop_btn.clicked.connect(self.stop)
        self.regen_btn.clicked.connect(self.regenerate)
        self.stats = QLabel("")
        self.stats.setObjectName("chatStats")
        # Long figures are cut, never widen the pane (the full text is the tooltip).
        self.stats.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        mid = QWidget()
        ml = QVBoxLayout(mid)
        ml.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(QLabel("Model"))
        top.addWidget(self.model_combo, 1)
        top.addWidget(QLabel("Mode"))
        top.addWidget(self.mode)
        ml.addLayout(top)
        ml.addWidget(self.model_note)
        ml.addWidget(self.transcript, 1)
        ml.addWidget(self.banner)
        ml.addWidget(self.input)
        brow = QHBoxLayout()
        brow.addWidget(self.prompt_btn)
        brow.addWidget(self.stats, 1)
        for b in (self.regen_btn, self.stop_btn, self.send_btn):
            brow.addWidget(b)
        ml.addLayout(brow)

        # -- right: system prompt and sampling
        self.system = QPlainTextEdit()
        self.system.setPlaceholderText("System prompt (optional)")
        self.system.setMaximumHeight(120)
        self.template = QComboBox()
        self.template.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.template.setMinimumContentsLength(12)
        for label, value in TEMPLATE_CHOICES:
            self.template.addItem(label, value)
        self.temperature = _dspin(
            0.0, 2.0, 0.7, 0.05, "Higher is more varied; 0 always picks the likeliest token."
        )
        self.top_p = _dspin(
            0.0,
            1.0,
            0.95,
            0.01,
            "Sample only from the smallest set of tokens reaching this probability.",
        )
        self.top_k = _spin(0, 1000, 40, "Sample only from the k likeliest tokens (0 = no limit).")
        self.repeat = _dspin(0.5, 2.0, 1.1, 0.01, "Penalty for repeating tokens (1 = none).")
        self.max_tokens = _spin(1, 32768, 512, "Most tokens in one answer.")
        self.seed = _spin(
            -1, 2**31 - 1, -1, "Same seed + same settings = same answer (-1 = random)."
        )
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(QLabel("<b>System prompt</b>"))
        rl.addWidget(self.system)
        form = QFormLayout()
        form.addRow("Template", self.template)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Top-k", self.top_k)
        form.addRow("Repeat penalty", self.repeat)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Seed", self.seed)
        rl.addLayout(form)
        rl.addStretch(1)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(mid)
        self.splitter.addWidget(right)
        self.splitter.setSizes([220, 700, 260])
        QVBoxLayout(self).addWidget(self.splitter)

        for keys, slot in (
            ("Ctrl+N", self.new_chat),
            ("Ctrl+K", self._focus_model),
            ("Escape", self.stop),
        ):
            QShortcut(QKeySequence(keys), self).activated.connect(slot)
        services.bus.changed.connect(self._bus_changed)
        self.refresh_models()
        self._set_mode(self._default_mode())
        self.refresh_conversations()
        self._set_busy(False)

    # -- models -----------------------------------------------------------------------
    def _bus_changed(self, topics: frozenset[str]) -> None:
        if "models" in topics:  # the picker has refilled itself already
            self._models_shown()
        if "conversations" in topics and self.stream is None:
            self.refresh_conversations()

    def refresh_models(self) -> None:
        self.model_combo.refresh()
        self._models_shown()

    def _models_shown(self) -> None:
        self._update_model_note()
        if self.model_combo.count() == 0:
            self.transcript.setHtml(
                "<h3>No model to chat with yet</h3><p>Import a GGUF file or a Hugging Face "
                "folder in the <b>Models</b> pane, then come back here.</p>"
            )
        self._set_busy(self.stream is not None)

    def current_model(self) -> ModelRecord | None:
        mid = self.model_combo.currentData()
        if mid is None:
            return None
        try:
            return self.registry.get(mid)
        except DemoAIError:
            return None

    def _focus_model(self) -> None:
        self.model_combo.setFocus()
        self.model_combo.showPopup()

    def _model_changed(self, _: object = None) -> None:
        # The conversation records the model with its next answer.
        self._set_mode(self._default_mode())
        self._update_model_note()

    # -- base models and the mode ---------------------------------------------------------
    def is_base_model(self, m: ModelRecord | None = None) -> bool:
        """True when the model has no chat template of its own (its file says so, or the
        model host reported it)."""
        m = m or self.current_model()
        if m is None:
            return False
        return self._base.get(m.id, not m.has_chat_template)

    def _default_mode(self) -> str:
        return "completion" if self.is_base_model() else "chat"

    def _set_mode(self, mode: str) -> None:
        i = self.mode.findData(mode)
        if i >= 0 and i != self.mode.currentIndex():
            self.mode.blockSignals(True)
            self.mode.setCurrentIndex(i)
            self.mode.blockSignals(False)
        self._update_model_note()

    def _mode_changed(self, _: int) -> None:
        self._update_model_note()

    def current_mode(self) -> str:
        return str(self.mode.currentData())

    def _update_model_note(self) -> None:
        m = self.current_model()
        if m is None or not self.is_base_model(m):
            self.model_note.hide()
            return
        if self.current_mode() == "completion":
            text = f"{m.name} is a base model (no chat template), so Completion mode is on."
        else:
            text = f"{m.name} is a base model (no chat template): Completion mode suits it."
        self.model_note.setText(text)
        self.model_note.setToolTip(
            "A base model was trained to continue text, not to follow a chat. Completion mode "
            "sends the conversation as plain text and the model carries on writing it; Chat "
            "mode wraps it in a guessed chat template."
        )
        self.model_note.show()

    def _on_capabilities(self, model_id: str, caps: dict[str, Any]) -> None:
        """The model host's word on the template (``capabilities.chat_template``)."""
        template = caps.get("chat_template")
        if isinstance(template, str) and self.template.currentData() is None:
            self._base[model_id] = template != "model"
            self._update_model_note()

    def chat_with(self, model_id: str) -> None:
        """Start a new chat with ``model_id`` (from the Models pane)."""
        self.refresh_models()
        i = self.model_combo.findData(model_id)
        if i >= 0:
            self.model_combo.setCurrentIndex(i)
        self.new_chat()

    # -- conversations --------------------------------------------------------------------
    def refresh_conversations(self) -> None:
        self.conv_list.blockSignals(True)
        self.conv_list.clear()
        for c in self.store.list_conversations(self.search.text().strip() or None):
            item = QListWidgetItem(c.title)
            item.setToolTip(c.title)
            item.setData(Qt.ItemDataRole.UserRole, c.id)
            self.conv_list.addItem(item)
            if self.conv is not None and c.id == self.conv.id:
                self.conv_list.setCurrentItem(item)
        self.conv_list.blockSignals(False)

    def _conv_selected(self, item: QListWidgetItem | None, _: Any = None) -> None:
        if item is not None and self.stream is None:
            self.open_conversation(item.data(Qt.ItemDataRole.UserRole))

    def open_conversation(self, conv_id: str) -> None:
        self.conv = self.store.get(conv_id)
        self.system.setPlainText(self.conv.system_prompt)
        if self.conv.model_id and (i := self.model_combo.findData(self.conv.model_id)) >= 0:
            self.model_combo.blockSignals(True)
            self.model_combo.setCurrentIndex(i)
            self.model_combo.blockSignals(False)
        s = self.conv.sampling
        self.temperature.setValue(s.get("temperature", self.temperature.value()))
        self.top_p.setValue(s.get("top_p", self.top_p.value()))
        self.top_k.setValue(s.get("top_k", self.top_k.value()))
        self.repeat.setValue(s.get("repeat_penalty", self.repeat.value()))
        self.max_tokens.setValue(s.get("max_tokens", self.max_tokens.value()))
        self.seed.setValue(s.get("seed", -1) if s.get("seed") is not None else -1)
        self._set_mode(s.get("mode") or self._default_mode())
        self.banner.hide()
        self.render_transcript()
        self._load_feedback(conv_id)

    def _load_feedback(self, conv_id: str) -> None:
        """Read which replies of this chat have feedback in Collected (off the UI thread)."""
        from app.core.data.collected import collected, saved_labels

        ws = self.services.workspace

        def done(labels: dict[str, str]) -> None:
            if labels and self.conv is not None and self.conv.id == conv_id:
                self.feedback_given.update(labels)
                self.render_transcript()

        self.services.actions.run(
            self,
            "Reading feedback",
            lambda _p: saved_labels(collected(ws), conv_id),
            done=done,
        )

    def new_chat(self) -> None:
        """An empty transcript; the conversation is saved with its first message."""
        if self.stream is not None:
            return
        self.conv = None
        self.conv_list.blockSignals(True)
        self.conv_list.clearSelection()
        self.conv_list.setCurrentRow(-1)
        self.conv_list.blockSignals(False)
        self.banner.hide()
        self._set_busy(False)
        self.render_transcript()
        self.input.setFocus()

    def rename_chat(self) -> None:
        if self.conv is None:
            return
        title, ok = QInputDialog.getText(self, "Rename chat", "Title", text=self.conv.title)
        if ok and title.strip():
            self.rename_to(title.strip())

    def rename_to(self, title: str) -> None:
        """Rename the open chat (an action: off the UI thread, errors next to the buttons)."""
        if self.conv is None:
            return
        conv_id, store = self.conv.id, self.store

        def done(conv: Conversation) -> None:
            if self.conv is not None and self.conv.id == conv.id:
                self.conv = conv
            self.refresh_conversations()

        self.services.actions.run(
            self,
            "Renaming the chat",
            lambda _p: store.rename(conv_id, title),
            changes={"conversations"},
            status=self.action_status,
            done=done,
        )

    def delete_chat(self) -> None:
        if self.conv is None or self.stream is not None:
            return
        conv_id, store, title = self.conv.id, self.store, self.conv.title

        def done(_: object) -> None:
            if self.conv is not None and self.conv.id == conv_id:
                self.conv = None
                self.render_transcript()
            self.refresh_conversations()
            self.action_status.ok(f"Deleted “{title}”.")

        self.services.actions.run(
            self,
            f"Deleting “{title}”",
            lambda _p: store.delete(conv_id),
            changes={"conversations"},
            status=self.action_status,
            done=done,
        )

    def export_chat(self) -> None:
        if self.conv is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export chat", f"{self.conv.title}.json", "JSON (*.json)"
        )
        if path:
            self.export_to(path)

    def export_to(self, path: str) -> None:
        """Write the open chat (all branches) as JSON, atomically, off the UI thread."""
        if self.conv is None:
            return
        conv_id, store = self.conv.id, self.store

        def write(_p: object) -> None:
            data = store.export(conv_id)
            try:
                atomic_write_json(path, data)
            except OSError as exc:
                raise DemoAIError(
                    f"Cannot write {path}: {exc.strerror or exc}.",
                    "Choose another folder or file name.",
                ) from exc

        self.services.actions.run(
            self,
            "Exporting the chat",
            write,
            status=self.action_status,
            done=lambda _r: self.action_status.ok(f"Exported to {path}"),
        )

    # -- sending ----------------------------------------------------------------------------
    def sampling(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "temperature": round(self.temperature.value(), 3),
            "top_p": round(self.top_p.value(), 3),
            "top_k": self.top_k.value(),
            "repeat_penalty": round(self.repeat.value(), 3),
            "max_tokens": self.max_tokens.value(),
        }
        if self.seed.value() >= 0:
            d["seed"] = self.seed.value()
        return d

    def send(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or self.stream is not None:
            return
        if self.current_model() is None:
            self._error("Choose a model first (import one in the Models pane).")
            return

        def user(store: ConversationStore, conv: Conversation) -> Message:
            path = store.path(conv.id)
            return store.add(conv.id, path[-1].id if path else None, "user", text)

        self.input.clear()
        self._answer(user, restore=text)

    def insert_prompt(self) -> QWidget:
        """Open the prompt picker; the rendered prompt goes into the composer at the cursor."""
        from app.ui.qt_prompt_picker import open_prompt_picker

        def insert(text: str) -> None:
            self.input.insertPlainText(text)
            self.input.setFocus()

        self.prompt_picker = open_prompt_picker(self, self.services.workspace.db, insert)
        return self.prompt_picker

    def regenerate(self) -> None:
        """A new answer to the last user message, kept as a sibling of the old one."""
        if self.conv is None or self.stream is not None:
            return

        def last_user(store: ConversationStore, conv: Conversation) -> Message | None:
            users = [m for m in store.path(conv.id) if m.role == "user"]
            return users[-1] if users else None

        self._answer(last_user)

    def edit_message(self, msg_id: str, new_text: str) -> None:
        """Edit a user message: a new branch with the new text, answered at once."""
        if self.stream is not None:
            return
        self._answer(lambda store, _conv: store.edit(msg_id, new_text))

    def _answer(
        self,
        make_user: Callable[[ConversationStore, Conversation], Message | None],
        *,
        restore: str = "",
    ) -> None:
        """Save the user's message and an empty answer (an action, off the UI thread), then
        stream the answer into it. ``self.stream`` is set at once: the pane is busy from
        the click until the answer is saved."""
        m = self.current_model()
        assert m is not None
        sampling = self.sampling()
        mode = self.current_mode()
        system = self.system.toPlainText()
        template = self.template.currentData()
        conv_id = self.conv.id if self.conv is not None else None
        store, host = self.store, self.host
        saved = {**sampling, "mode": mode}
        stream = ChatStream(
            lambda: host.lease(m, template),
            [],
            sampling,
            ask_capabilities=m.id not in self._base and template is None,
        )
        stream.leased.connect(self._on_leased)
        stream.capabilities.connect(self._on_capabilities)
        stream.token.connect(self._on_token)
        stream.first_token.connect(self._on_first)
        stream.finished.connect(self._on_finished)
        self.stream = stream
        self._answer_id = None
        self._answer_text = ""
        self._t_first = None
        self._set_busy(True)
        self.banner.hide()
        self.stats.setText("Saving…")

        def write(_p: object) -> tuple[Conversation, str, list[dict[str, str]]] | None:
            if conv_id is None:
                conv = store.create(
                    "New chat",
                    model_id=m.id,
                    model_sha256=m.sha256,
                    system_prompt=system,
                    sampling=saved,
                )
            else:
                conv = store.get(conv_id)
            user = make_user(store, conv)
            if user is None:
                return None
            if conv.title == "New chat":
                conv = store.rename(conv.id, user.content.strip().splitlines()[0][:60])
            conv = store.update(
                conv.id, system_prompt=system, sampling=saved, model_id=m.id, model_sha256=m.sha256
            )
            messages = [
                {"role": x.role, "content": x.content} for x in store.path(conv.id, user.id)
            ]
            if system.strip():
                messages.insert(0, {"role": "system", "content": system})
            answer = store.add(conv.id, user.id, "assistant", "", model_id=m.id, sampling=saved)
            return conv, answer.id, messages

        def done(result: tuple[Conversation, str, list[dict[str, str]]] | None) -> None:
            if self.stream is not stream:
                return
            if result is None:
                self.stream = None
                self._set_busy(False)
                self.stats.setText("")
                return
            self.conv, self._answer_id, messages = result
            stream.messages = messages
            stream.prompt = completion_prompt(messages) if mode == "completion" else None
            self.refresh_conversations()
            if stream.stopped:  # Stop before the message was even saved
                self._on_finished({"stopped": True}, "")
                return
            self.stats.setText("Loading the model…")
            self.render_transcript()
            stream.start()

        def failed(exc: BaseException) -> None:
            if self.stream is stream:
                self.stream = None
                self._set_busy(False)
            if restore and not self.input.toPlainText().strip():
                self.input.setPlainText(restore)
            self.stats.setText("")
            self._error(f"Your message was not saved: {exc}")

        self.services.actions.run(
            self,
            "Saving the message",
            write,
            changes={"conversations"},
            done=done,
            failed=failed,
        )

    def _on_leased(self, lease: Any) -> None:
        """Hold the new lease (the model stays loaded while this pane uses it), drop the old."""
        old, self._lease = self._lease, lease
        if old is not None and old is not lease:
            self.host.release(old)

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.stop()

    def _on_first(self, seconds: float) -> None:
        self._t_first = time.monotonic()
        self.stats.setText(f"First token after {seconds:.2f} s…")

    def _on_token(self, text: str) -> None:
        self._answer_text += text
        if not self._redraw.isActive():
            self._redraw.start()

    def _on_finished(self, usage: dict[str, Any], error: str) -> None:
        """Save the answer (an action), then show it; the pane stays busy until it is saved."""
        self._redraw.stop()
        stream, answer_id, text, store = self.stream, self._answer_id, self._answer_text, self.store

        def write(_p: object) -> None:
            if answer_id is not None:
                store.finish(answer_id, text, usage=usage or None, error=error or None)

        def done(_: object = None) -> None:
            if self.stream is stream:
                self.stream = None
                self._answer_id = None
                self._set_busy(False)
            if error:
                self._error(
                    error + " The conversation so far is kept; your next message restarts the model"
                    " host."
                )
            self._show_stats(usage)
            self.render_transcript()

        def failed(exc: BaseException) -> None:
            done()
            self._error(f"The answer was not saved: {exc}")

        self.services.actions.run(
            self, "Saving the answer", write, changes={"conversations"}, done=done, failed=failed
        )

    def _show_stats(self, usage: dict[str, Any]) -> None:
        comp = usage.get("completion_tokens")
        gen_s = time.monotonic() - self._t_first if self._t_first else None
        parts = []
        if comp and gen_s and gen_s > 0:
            parts.append(f"{comp / gen_s:.1f} tokens/s")
        if usage.get("prompt_tokens") is not None:
            used = int(usage.get("prompt_tokens", 0)) + int(comp or 0)
            m = self.current_model()
            ctx = (m.context_length if m else None) or 0
            n_ctx = min(ctx, 4096) if ctx else None
            parts.append(f"context {used:,}" + (f" / {n_ctx:,} tokens" if n_ctx else " tokens"))
        self.stats.setText(" · ".join(parts))
        self.stats.setToolTip(self.stats.text())

    def _set_busy(self, busy: bool) -> None:
        has_model = self.model_combo.count() > 0
        self.send_btn.setEnabled(not busy and has_model)
        self.regen_btn.setEnabled(not busy and has_model and self.conv is not None)
        self.stop_btn.setEnabled(busy)
        self.model_combo.setEnabled(not busy)
        self.mode.setEnabled(not busy)
        self.template.setEnabled(not busy)
        for b in (self.new_btn, self.delete_btn):
            b.setEnabled(not busy)

    def _error(self, text: str) -> None:
        self.banner.setText(text)
        self.banner.show()

    # -- rendering ---------------------------------------------------------------------------
    def render_transcript(self) -> None:
        if self.conv is None:
            if self.model_combo.count():
                self.transcript.setHtml("<p>Start typing below, or pick a chat on the left.</p>")
            return
        parts: list[str] = []
        tips: dict[str, str] = {}
        for m in self.store.path(self.conv.id):
            content = self._answer_text if m.id == self._answer_id else m.content
            who = {"user": "You", "assistant": "Assistant", "system": "System"}.get(m.role, m.role)
            body = _markdown_safe(content) or ("" if (m.usage or {}).get("stopped") else "…")
            if (m.usage or {}).get("stopped"):
                body += f" *{STOPPED_MARK}*"
            parts.append(f"#### {who}\n\n{body}\n")
            sibs = self.store.siblings(m.id)
            nav = []
            if len(sibs) > 1:
                i = [s.id for s in sibs].index(m.id)
                if i > 0:
                    href = f"branch:{sibs[i - 1].id}"
                    tips[href] = f"previous version {i}/{len(sibs)}"
                    nav.append(f"[‹ previous]({href})")
                nav.append(f"{i + 1}/{len(sibs)}")
                if i < len(sibs) - 1:
                    href = f"branch:{sibs[i + 1].id}"
                    tips[href] = f"next version {i + 2}/{len(sibs)}"
                    nav.append(f"[next ›]({href})")
            if m.role == "user" and self.stream is None:
                tips[f"edit:{m.id}"] = "Edit this message (the answer is kept as another version)"
                nav.append(f"[edit](edit:{m.id})")
            if m.error:
                nav.append(f"*⚠ {_markdown_safe(m.error)}*")
            elif m.role == "assistant" and self.stream is None and m.content.strip():
                nav.extend(self._feedback_links(m.id, tips))
            if nav:
                parts.append(" \u2003 ".join(nav) + "\n")
        bar = self.transcript.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        self.transcript.setMarkdown("\n".join(parts))
        self._style_links(tips)
        if at_end:
            bar.setValue(bar.maximum())

    def _style_links(self, tips: dict[str, str]) -> None:
        """Tooltips on branch and edit links; the branch links in a larger, bold face."""
        doc = self.transcript.document()
        block = doc.begin()
        spans: list[tuple[int, int, str]] = []
        while block.isValid():
            it = block.begin()
            while not it.atEnd():
                frag = it.fragment()
                href = frag.charFormat().anchorHref()
                if href in tips:
                    spans.append((frag.position(), frag.position() + frag.length(), href))
                it += 1
            block = block.next()
        cursor = QTextCursor(doc)
        for start, end, href in spans:
            fmt = QTextCharFormat()
            fmt.setToolTip(tips[href])
            if href.startswith("branch:"):
                fmt.setFontWeight(QFont.Weight.DemiBold)
                base = self.transcript.font().pointSizeF()
                if base > 0:
                    fmt.setFontPointSize(base * 1.1)
            cursor.setPosition(start)
            cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
            cursor.mergeCharFormat(fmt)

    # -- feedback (rows of the Collected dataset) ------------------------------------------
    def _feedback_links(self, msg_id: str, tips: dict[str, str]) -> list[str]:
        given = self.feedback_given.get(msg_id)
        links = []
        if given:
            links.append(f"*✓ {given}*")
        for kind, label, tip in (
            ("good", "👍", "A good answer: collect it as a training example"),
            ("bad", "👎", "A bad answer: collect it as a rejected example"),
            ("better", "better answer…", "Write the answer it should have given"),
        ):
            tips[f"{kind}:{msg_id}"] = tip + " (saved to the dataset Collected)"
            links.append(f"[{label}]({kind}:{msg_id})")
        return links

    def give_feedback(
        self, msg_id: str, *, rating: str | None = None, better: str | None = None
    ) -> None:
        """Save feedback on a reply as a row of the dataset Collected (off the UI thread)."""
        from app.core.data.collected import COLLECTED, record_feedback

        ws = self.services.workspace
        label = {"up": "👍 saved", "down": "👎 saved"}.get(rating or "", "")
        if better:
            label = (label + " · " if label else "") + "better answer saved"
        before = self.feedback_given.get(msg_id, "")
        if rating and not better and label in before.split(" · "):
            return  # the same rating again (a double click): one row is enough

        def write(_p: object) -> Any:
            return record_feedback(ws, msg_id, rating=rating, better=better)  # type: ignore[arg-type]

        def done(result: Any) -> None:
            parts = [p for p in self.feedback_given.get(msg_id, "").split(" · ") if p]
            parts += [p for p in label.split(" · ") if p not in parts]
            self.feedback_given[msg_id] = " · ".join(parts)
            self.stats.setText(f"Feedback saved: row {result[1].rows} of the dataset {COLLECTED}")
            self.render_transcript()

        self.services.actions.run(
            self,
            "Saving feedback",
            write,
            changes={"datasets", "versions"},
            done=done,
            failed=lambda exc: self._error(f"The feedback was not saved: {exc}"),
        )

    def _message_editor(
        self,
        msg_id: str,
        *,
        title: str,
        name: str,
        note: str,
        ok_text: str,
        attr: str,
        accept: Callable[[str, str], bool],
        then: Callable[[str], None],
    ) -> QDialog:
        """A resizable editor sized to message ``msg_id``, kept in ``self.<attr>`` while open;
        OK calls ``then(text)`` when ``accept(text, old text)`` holds."""
        old = self.store.message(msg_id)
        dlg = QDialog(self)
        dlg.setWindowTitle(title)
        dlg.setObjectName(f"{name}Dialog")
        dlg.setSizeGripEnabled(True)
        editor = QPlainTextEdit(old.content)
        editor.setObjectName(f"{name}Text")
        label = QLabel(note)
        label.setWordWrap(True)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText(ok_text)
        buttons.accepted.connect(dlg.accept)
        buttons.rejected.connect(dlg.reject)
        lay = QVBoxLayout(dlg)
        lay.addWidget(editor, 1)
        lay.addWidget(label)
        lay.addWidget(buttons)
        dlg.resize(*_editor_size(editor, old.content, self))

        def done() -> None:
            text = editor.toPlainText()
            if accept(text, old.content):
                then(text)

        dlg.accepted.connect(done)
        dlg.finished.connect(lambda _r: setattr(self, attr, None))
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        setattr(self, attr, dlg)
        editor.setFocus()
        dlg.open()
        return dlg

    def open_better_dialog(self, msg_id: str) -> QDialog:
        """An editor holding the reply; OK saves the edited text as the better answer."""
        return self._message_editor(
            msg_id,
            title="Write a better answer",
            name="betterAnswer",
            note="Saved with the prompt, the model and its settings to the dataset Collected, "
            "for fine-tuning (chat examples) and preference pairs (this answer chosen, the "
            "model's rejected). The conversation is not changed.",
            ok_text="Save answer",
            attr="better_dialog",
            accept=lambda text, old: bool(text.strip()) and text.strip() != old.strip(),
            then=lambda text: self.give_feedback(msg_id, better=text),
        )

    def _link(self, url: QUrl) -> None:
        kind, _, target = url.toString().partition(":")
        if self.stream is not None:
            return
        if kind == "branch":
            store = self.store
            self.services.actions.run(
                self,
                "Switching version",
                lambda _p: store.switch_to(target),
                changes={"conversations"},
                done=lambda _r: self.render_transcript(),
                failed=lambda exc: self._error(str(exc)),
            )
        elif kind == "edit":
            self.open_edit_dialog(target)
        elif kind in ("good", "bad"):
            self.give_feedback(target, rating="up" if kind == "good" else "down")
        elif kind == "better":
            self.open_better_dialog(target)

    def open_edit_dialog(self, msg_id: str) -> QDialog:
        """A resizable editor sized to the message; OK makes a new branch, answered at once."""
        return self._message_editor(
            msg_id,
            title="Edit message",
            name="editMessage",
            note="The edited message starts a new version; the old one stays one click away.",
            ok_text="Send edited",
            attr="edit_dialog",
            accept=lambda text, old: bool(text.strip()) and text != old,
            then=lambda text: self.edit_message(msg_id, text),
        )

    def shutdown(self) -> None:
        """Stop streaming and give the model back (the window stops the shared host)."""
        if self.stream is not None:
            self.stream.stop()
            self.stream.wait(5)
        lease, self._lease = self._lease, None
        self.host.release(lease)


def completion_prompt(messages: list[dict[str, str]]) -> str:
    """The conversation as one plain text for a base model to continue.

    A system prompt leads, followed by a blank line; each answer continues the
    text before it directly; a new message after an answer starts on a new line.
    """
    out = ""
    for i, msg in enumerate(messages):
        text = msg["content"]
        if msg["role"] == "system":
            out += text.rstrip() + "\n\n" if text.strip() else ""
        elif msg["role"] == "user" and i > 0 and messages[i - 1]["role"] == "assistant":
            out += text if not out or out[-1].isspace() else "\n" + text
        else:
            out += text
    return out


def _editor_size(editor: QPlainTextEdit, text: str, anchor: QWidget) -> tuple[int, int]:
    """At least 560x300, grown to the text's longest line and line count, within the screen."""
    fm = editor.fontMetrics()
    lines = text.split("\n") or [""]
    width = max(fm.horizontalAdvance(line) for line in lines[:500]) + 80
    height = fm.lineSpacing() * (len(lines) + 2) + 110
    screen = anchor.screen()
    avail = screen.availableGeometry() if screen is not None else None
    max_w = int(avail.width() * 0.8) if avail is not None else 1200
    max_h = int(avail.height() * 0.8) if avail is not None else 900
    return max(560, min(width, max_w)), max(300, min(height, max_h))


def _markdown_safe(text: str) -> str:
    """Model output as Markdown: never raw HTML, and line breaks kept as typed.

    Inside fenced code blocks the text is left alone (it is shown literally).
    """
    out: list[str] = []
    in_code = False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            out.append(line)
        elif in_code:
            out.append(line)
        else:
            out.append(html.escape(line, quote=False) + "  ")
    return "\n".join(out).rstrip()


def _dspin(lo: float, hi: float, value: float, step: float, tip: str) -> QDoubleSpinBox:
    w = QDoubleSpinBox()
    w.setRange(lo, hi)
    w.setSingleStep(step)
    w.setDecimals(2)
    w.setValue(value)
    w.setToolTip(tip)
    return w


def _spin(lo: int, hi: int, value: int, tip: str) -> QSpinBox:
    w = QSpinBox()
    w.setRange(lo, hi)
    w.setValue(value)
    w.setToolTip(tip)
    return w


__all__ = ["ChatPane"]
