"""The local agent store: installed agents and prompts with their versions; bundle export/import.

A bundle is a folder or a ``.tar.gz`` with ``SHA256SUMS`` (see
``app.core.agents.bundle``). Import verifies every checksum before anything is
written: a changed file refuses the whole bundle. The report says what was
imported, what the agent can do (computed from its spec: tools, folders, MCP
servers with argv and environment, models), what stays inactive until approved
(the approvals list below it) and which required models the library lacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.agents import AgentStore, PromptStore
from app.core.agents.approvals import describe_capabilities
from app.core.agents.bundle import ImportReport, export_agent, export_prompt, export_run
from app.core.agents.bundle import import_bundle as core_import_bundle
from app.core.errors import DemoAIError
from app.core.store.db import Database
from app.ui.panes.agents.qt_approvals import ApprovalsView
from app.ui.qt_errors import show_error
from app.ui.widgets.status_line import StatusLine

ROLE = Qt.ItemDataRole.UserRole
ARCHIVE_FILTER = "Bundle archive (*.tar.gz)"
FOLDER_FILTER = "Bundle folder (a new folder)"


def ask_export_path(parent: QWidget, suggested: str) -> Path | None:
    """Ask where to write a bundle: a ``.tar.gz`` file, or a new folder (by filter)."""
    path, chosen = QFileDialog.getSaveFileName(
        parent, "Export bundle", f"{suggested}.tar.gz", f"{ARCHIVE_FILTER};;{FOLDER_FILTER}"
    )
    if not path:
        return None
    if chosen == FOLDER_FILTER:
        return Path(path.removesuffix(".tar.gz").removesuffix(".tgz"))
    if not path.endswith((".tar.gz", ".tgz")):
        path += ".tar.gz"
    return Path(path)


def ask_import_path(parent: QWidget, folder: bool) -> Path | None:
    if folder:
        path = QFileDialog.getExistingDirectory(parent, "Import a bundle folder")
    else:
        path, _ = QFileDialog.getOpenFileName(
            parent, "Import a bundle", "", f"{ARCHIVE_FILTER};;All files (*)"
        )
    return Path(path) if path else None


def export_bundle(db: Database, kind: str, name: str, dest: Path) -> Path:
    """Write an agent (latest version), a prompt (all versions) or a run as a bundle."""
    if kind == "agent":
        return export_agent(db, name, dest)
    if kind == "prompt":
        return export_prompt(db, name, dest)
    if kind == "run":
        return export_run(db, name, dest)
    raise DemoAIError(f"Cannot export a {kind}.")


def describe_report(rep: ImportReport) -> str:
    """What an import did and what the imported agent can do, in plain words.

    Computed from the spec in the bundle (never from the bundle's own summary).
    """
    lines = [f"Imported the {rep.kind} bundle {rep.name!r}:"]
    lines += [f"  • {x}" for x in rep.imported]
    for what in rep.undeclared:
        lines.append(f"WARNING: the bundle's own summary does not mention {what}.")
    if rep.capabilities is not None:
        lines += describe_capabilities(rep.capabilities)
    if rep.pending:
        lines.append(
            "Inactive until you approve them in the list below (for exactly this version; "
            "any change asks again):"
        )
        for g in rep.pending:
            first, *rest = g["description"].splitlines()
            lines += [f"  • {first}", *(f"    {line.strip()}" for line in rest)]
    models = rep.requires.get("models") or []
    if rep.missing_models:
        lines.append("Missing models (import them into the model library before running):")
        for m in rep.missing_models:
            sha = f" (sha256 {m['sha256'][:16]}…)" if m.get("sha256") else ""
            lines.append(f"  • {m.get('id') or '?'}{sha}")
    elif models:
        ids = ", ".join(str(m.get("id") or m.get("sha256")) for m in models)
        lines.append(f"Required models, all in the library: {ids}.")
    return "\n".join(lines)


class AgentStoreView(QWidget):
    """Installed agents and prompts (with versions); export the selected one; import bundles."""

    imported = Signal(object)  # ImportReport
    open_agent = Signal(str)
    open_prompt = Signal(str)

    def __init__(self, db: Database, parent: QWidget | None = None, *, actions: Any = None) -> None:
        super().__init__(parent)
        self.db = db
        #: The window's action layer: imports run through it (off the UI thread).
        self.action_runner = actions
        self.importing = False
        self.agents = AgentStore(db)
        self.prompts = PromptStore(db)
        self.last_report: ImportReport | None = None

        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Name", "Versions", "About"])
        self.tree.setColumnWidth(0, 220)
        self.tree.setColumnWidth(1, 140)
        self.tree.currentItemChanged.connect(lambda *_: self._update_buttons())
        self.tree.itemDoubleClicked.connect(self._open)
        self.export_btn = QPushButton("Export…")
        self.export_btn.setToolTip("Write the selected agent or prompt as a bundle.")
        self.export_btn.clicked.connect(lambda: self.export_selected())
        self.import_btn = QPushButton("Import…")
        menu = QMenu(self.import_btn)
        menu.addAction("A bundle file (.tar.gz)…", lambda: self.import_bundle(folder=False))
        menu.addAction("A bundle folder…", lambda: self.import_bundle(folder=True))
        self.import_btn.setMenu(menu)
        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.report.setMinimumHeight(120)
        self.approvals = ApprovalsView(db, actions=actions)
        self.report.setPlaceholderText(
            "Import a bundle (an agent, a prompt or a run) shared by someone: every file's "
            "checksum is verified before anything is added."
        )
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(
            QLabel("<b>Installed</b> — double-click to open an agent or a prompt for editing.")
        )
        lay.addWidget(self.tree, 1)
        row = QHBoxLayout()
        row.addWidget(self.export_btn)
        row.addWidget(self.import_btn)
        row.addStretch(1)
        lay.addLayout(row)
        self.status = StatusLine(self)
        lay.addWidget(self.status)
        lay.addWidget(self.report, 2)
        lay.addWidget(self.approvals, 2)
        self.refresh()

    def refresh(self) -> None:
        selected = self.selected()
        self.tree.blockSignals(True)
        self.tree.clear()
        agents = self.agents.list()
        prompts = self.prompts.list()
        sections = (
            ("agent", f"Agents ({len(agents)})", agents, self.agents.versions),
            ("prompt", f"Prompts ({len(prompts)})", prompts, self.prompts.versions),
        )
        for kind, title, items, versions in sections:
            top = QTreeWidgetItem([title, "", ""])
            top.setFlags(top.flags() & ~Qt.ItemFlag.ItemIsSelectable)
            self.tree.addTopLevelItem(top)
            for obj in items:
                vs = versions(obj.name)
                about = obj.description
                if kind == "agent":
                    about = f"model {obj.model_id or '(none)'}" + (f" · {about}" if about else "")
                item = QTreeWidgetItem(
                    [obj.name, ", ".join(f"v{v}" for v in vs), " ".join(about.split())]
                )
                item.setData(0, ROLE, (kind, obj.name))
                item.setToolTip(0, f"{kind} {obj.name}, latest v{obj.version}")
                top.addChild(item)
                if selected == (kind, obj.name):
                    self.tree.setCurrentItem(item)
            top.setExpanded(True)
        self.tree.blockSignals(False)
        self._update_buttons()
        self.approvals.refresh()

    def _entries(self) -> list[QTreeWidgetItem]:
        """The agent and prompt rows (not the section headers)."""
        out = []
        for i in range(self.tree.topLevelItemCount()):
            top = self.tree.topLevelItem(i)
            if top is not None:
                out += [c for j in range(top.childCount()) if (c := top.child(j)) is not None]
        return out

    def rows(self, kind: str) -> list[tuple[str, str]]:
        """(name, versions) of the listed agents or prompts."""
        return [
            (it.data(0, ROLE)[1], it.text(1))
            for it in self._entries()
            if it.data(0, ROLE)[0] == kind
        ]

    def select(self, kind: str, name: str) -> bool:
        for it in self._entries():
            if tuple(it.data(0, ROLE)) == (kind, name):
                self.tree.setCurrentItem(it)
                return True
        return False

    def selected(self) -> tuple[str, str] | None:
        item = self.tree.currentItem()
        data = item.data(0, ROLE) if item is not None else None
        return (str(data[0]), str(data[1])) if data else None

    def _update_buttons(self) -> None:
        self.export_btn.setEnabled(self.selected() is not None)

    def _open(self, item: QTreeWidgetItem, _: Any = None) -> None:
        data = item.data(0, ROLE)
        if not data:
            return
        kind, name = data
        (self.open_agent if kind == "agent" else self.open_prompt).emit(name)

    # -- bundles ------------------------------------------------------------------------
    def export_selected(self, dest: Path | None = None) -> Path | None:
        """Export the selected agent or prompt (asks where when ``dest`` is None)."""
        sel = self.selected()
        if sel is None:
            return None
        kind, name = sel
        if dest is None:
            dest = ask_export_path(self, f"{name}-{kind}")
            if dest is None:
                return None
        try:
            out = export_bundle(self.db, kind, name, dest)
        except DemoAIError as exc:
            show_error(self, f"Cannot export the {kind}", exc)
            return None
        self.report.setPlainText(f"Exported {kind} {name} to {out}.")
        return out

    def import_bundle(self, path: Path | None = None, *, folder: bool = False) -> Any:
        """Verify and import a bundle; the report is shown below the list.

        With the action layer (the pane's view) it runs off the UI thread and returns
        the action's handle (:attr:`last_report` once done; errors under the buttons);
        without, it returns the report, or None when the bundle was refused."""
        if path is None:
            path = ask_import_path(self, folder)
            if path is None:
                return None
        chosen = path
        if self.action_runner is not None:
            self.importing = True
            self.import_btn.setEnabled(False)
            self.last_report = None

            def done(rep: ImportReport) -> None:
                self._import_finished()
                self._show_imported(rep)

            def failed(exc: BaseException) -> None:
                self._import_finished()
                self._show_refused(chosen, exc)

            return self.action_runner.run(
                self,
                f"Importing {chosen.name}",
                lambda _progress: core_import_bundle(self.db, chosen),
                changes=("agents", "prompts", "runs", "approvals"),
                done=done,
                failed=failed,
                status=self.status,
            )
        try:
            rep = core_import_bundle(self.db, path)
        except Exception as exc:  # a damaged bundle can fail in many ways: shown, never raised
            self._show_refused(path, exc)
            show_error(self, "The bundle was not imported", exc)
            return None
        self._show_imported(rep)
        return rep

    def _import_finished(self) -> None:
        self.importing = False
        self.import_btn.setEnabled(True)

    def _show_refused(self, path: Path, exc: BaseException) -> None:
        what = exc.message if isinstance(exc, DemoAIError) else f"{type(exc).__name__}: {exc}"
        self.report.setPlainText(f"Not imported: {path}\n{what}")

    def _show_imported(self, rep: ImportReport) -> None:
        self.last_report = rep
        self.report.setPlainText(describe_report(rep))
        self.refresh()
        kind = rep.kind if rep.kind in ("agent", "prompt") else None
        if kind is not None:
            self.select(kind, rep.name)
        self.imported.emit(rep)


__all__ = ["AgentStoreView", "ask_export_path", "describe_report", "export_bundle"]
