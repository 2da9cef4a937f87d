"""The Chat pane: pick a model, talk to it through the local model host, branch freely.

The transcript is the path from the conversation's root to its shown leaf.
Editing a message or regenerating an answer adds a sibling branch; ‹ › links
under a message switch between siblings. Tokens are appended as they stream
and the view is redrawn at most every 50 ms, so the window stays responsive.
"""

from __future__ import annotations

import html
import time
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, QUrl
from PySide6.QtGui import QKeyEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
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
        self._answer_id: str | None = None
        self._answer_text = ""
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

        # -- middle: transcript + input
        self.model_combo = QComboBox()
        self.model_combo.setObjectName("chatModel")
        self.model_combo.setToolTip("Model (Ctrl+K)")
        self.model_combo.currentIndexChanged.connect(self._model_changed)
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
        mid = QWidget()
        ml = QVBoxLayout(mid)
        ml.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(QLabel("Model"))
        top.addWidget(self.model_combo, 1)
        ml.addLayout(top)
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
        services.bus.models_changed.connect(self.refresh_models)
        self.refresh_models()
        self.refresh_conversations()
        self._set_busy(False)

    # -- models -----------------------------------------------------------------------
    def refresh_models(self) -> None:
        current = self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for m in self.registry.list():
            if m.format in ("gguf", "hf", "lora"):
                self.model_combo.addItem(
                    f"{m.name}  ({m.format}{', ' + m.quantization if m.quantization else ''})", m.id
                )
        if current is not None and (i := self.model_combo.findData(current)) >= 0:
            self.model_combo.setCurrentIndex(i)
        self.model_combo.blockSignals(False)
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

    def _model_changed(self, _: int) -> None:
        m = self.current_model()
        if self.conv is not None and m is not None and self.conv.model_id != m.id:
            self.conv = self.store.update(self.conv.id, model_id=m.id, model_sha256=m.sha256)

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
        self.banner.hide()
        self.render_transcript()

    def new_chat(self) -> None:
        if self.stream is not None:
            return
        m = self.current_model()
        self.conv = self.store.create(
            "New chat",
            model_id=m.id if m else None,
            model_sha256=m.sha256 if m else None,
            system_prompt=self.system.toPlainText(),
            sampling=self.sampling(),
        )
        self.refresh_conversations()
        self.banner.hide()
        self.render_transcript()
        self.input.setFocus()

    def rename_chat(self) -> None:
        if self.conv is None:
            return
        title, ok = QInputDialog.getText(self, "Rename chat", "Title", text=self.conv.title)
        if ok:
            self.conv = self.store.rename(self.conv.id, title)
            self.refresh_conversations()

    def delete_chat(self) -> None:
        if self.conv is None or self.stream is not None:
            return
        self.store.delete(self.conv.id)
        self.conv = None
        self.refresh_conversations()
        self.render_transcript()

    def export_chat(self) -> None:
        if self.conv is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export chat", f"{self.conv.title}.json", "JSON (*.json)"
        )
        if path:
            atomic_write_json(path, self.store.export(self.conv.id))

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
        if self.conv is None:
            self.new_chat()
        assert self.conv is not None
        if self.conv.title == "New chat":
            self.conv = self.store.rename(self.conv.id, text.splitlines()[0][:60])
            self.refresh_conversations()
        path = self.store.path(self.conv.id)
        user = self.store.add(self.conv.id, path[-1].id if path else None, "user", text)
        self.input.clear()
        self._answer(user)

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
        path = self.store.path(self.conv.id)
        users = [m for m in path if m.role == "user"]
        if users:
            self._answer(users[-1])

    def edit_message(self, msg_id: str, new_text: str) -> None:
        """Edit a user message: a new branch with the new text, answered at once."""
        if self.stream is not None:
            return
        msg = self.store.edit(msg_id, new_text)
        self._answer(msg)

    def _answer(self, user: Message) -> None:
        m = self.current_model()
        assert self.conv is not None and m is not None
        sampling = self.sampling()
        self.conv = self.store.update(
            self.conv.id,
            system_prompt=self.system.toPlainText(),
            sampling=sampling,
            model_id=m.id,
            model_sha256=m.sha256,
        )
        history = self.store.path(self.conv.id, user.id)
        messages = [{"role": x.role, "content": x.content} for x in history]
        if self.conv.system_prompt.strip():
            messages.insert(0, {"role": "system", "content": self.conv.system_prompt})
        answer = self.store.add(
            self.conv.id, user.id, "assistant", "", model_id=m.id, sampling=sampling
        )
        self._answer_id = answer.id
        self._answer_text = ""
        self._t_first = None
        self.banner.hide()
        template = self.template.currentData()
        stream = ChatStream(lambda: self.host.prepare(m, template), m.id, messages, sampling)
        stream.token.connect(self._on_token)
        stream.first_token.connect(self._on_first)
        stream.finished.connect(self._on_finished)
        self.stream = stream
        self._set_busy(True)
        self.stats.setText("Loading the model…")
        self.render_transcript()
        stream.start()

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
        if self._answer_id is not None:
            self.store.finish(
                self._answer_id, self._answer_text, usage=usage or None, error=error or None
            )
        self.stream = None
        self._answer_id = None
        self._set_busy(False)
        if error:
            self._error(
                error
                + " The conversation so far is kept; your next message restarts the model host."
            )
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
        self.render_transcript()

    def _set_busy(self, busy: bool) -> None:
        has_model = self.model_combo.count() > 0
        self.send_btn.setEnabled(not busy and has_model)
        self.regen_btn.setEnabled(not busy and has_model and self.conv is not None)
        self.stop_btn.setEnabled(busy)
        self.model_combo.setEnabled(not busy)
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
        for m in self.store.path(self.conv.id):
            content = self._answer_text if m.id == self._answer_id else m.content
            who = {"user": "You", "assistant": "Assistant", "system": "System"}.get(m.role, m.role)
            parts.append(f"#### {who}\n\n{_markdown_safe(content) or '…'}\n")
            sibs = self.store.siblings(m.id)
            nav = []
            if len(sibs) > 1:
                i = [s.id for s in sibs].index(m.id)
                if i > 0:
                    nav.append(f"[‹](branch:{sibs[i - 1].id})")
                nav.append(f"{i + 1}/{len(sibs)}")
                if i < len(sibs) - 1:
                    nav.append(f"[›](branch:{sibs[i + 1].id})")
            if m.role == "user" and self.stream is None:
                nav.append(f"[edit](edit:{m.id})")
            if m.error:
                nav.append(f"*⚠ {_markdown_safe(m.error)}*")
            if nav:
                parts.append(" ".join(nav) + "\n")
        bar = self.transcript.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        self.transcript.setMarkdown("\n".join(parts))
        if at_end:
            bar.setValue(bar.maximum())

    def _link(self, url: QUrl) -> None:
        kind, _, target = url.toString().partition(":")
        if self.stream is not None:
            return
        if kind == "branch":
            self.store.switch_to(target)
            self.render_transcript()
        elif kind == "edit":
            old = self.store.message(target)
            text, ok = QInputDialog.getMultiLineText(self, "Edit message", "Message", old.content)
            if ok and text.strip() and text != old.content:
                self.edit_message(target, text)

    def shutdown(self) -> None:
        """Stop streaming and the model host (the window is closing)."""
        if self.stream is not None:
            self.stream.stop()
            self.stream.wait(5)
        self.host.stop()


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
