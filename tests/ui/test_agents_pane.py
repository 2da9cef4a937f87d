"""The Agents pane against a scripted OpenAI-compatible server (a real child process).

Create an agent in the form, run it: the read-only call runs without asking,
write_file waits for the in-pane approval bar, then fork from a tool result
with edited content and see the new branch.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from app.core.agents import AgentStore, OpenAIChatClient, RunStore
from app.core.agents.approvals import ApprovalStore
from tests.support.scripted_server import ScriptedServer

SCRIPT = [
    {"tool": "read_file", "arguments": {"path": "notes.txt"}},
    {"tool": "write_file", "arguments": {"path": "out.txt", "content": "copied"}},
    {"final": "I copied the notes to out.txt."},
]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer(SCRIPT).start()
    yield srv
    srv.stop()


@pytest.fixture
def pane(qtbot: Any, main_window: Any, server: ScriptedServer) -> Iterator[Any]:
    from app.ui.panes.agents.qt_agents_pane import AgentsPane

    p = AgentsPane(main_window.services)
    qtbot.addWidget(p)
    p.runner.client_factory = lambda spec: OpenAIChatClient(server.base_url, server.token)
    p.show()
    yield p
    p.shutdown()


def _items(pane: Any) -> list[Any]:
    out = []

    def walk(item: Any) -> None:
        out.append(item)
        for i in range(item.childCount()):
            walk(item.child(i))

    for i in range(pane.view.tree.topLevelItemCount()):
        walk(pane.view.tree.topLevelItem(i))
    return out


def _labels(pane: Any) -> list[str]:
    return [it.text(0) for it in _items(pane)]


def _check_tool(pane: Any, name: str) -> None:
    for i in range(pane.form.tool_list.count()):
        it = pane.form.tool_list.item(i)
        if it.data(Qt.ItemDataRole.UserRole) == name:
            it.setCheckState(Qt.CheckState.Checked)
            return
    raise AssertionError(name)


def test_run_approve_and_fork(
    qtbot: Any, pane: Any, server: ScriptedServer, tmp_path: Path
) -> None:
    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "notes.txt").write_text("The answer is 42.\n")
    store = AgentStore(pane.services.workspace.db)
    runs = RunStore(pane.services.workspace.db)

    # -- create the agent in the form; tools show read-only vs side effect
    pane.new_agent()
    pane.form.name.setText("copier")
    pane.form.description.setText("copies notes")
    texts = [pane.form.tool_list.item(i).text() for i in range(pane.form.tool_list.count())]
    assert any(t.startswith("read_file") and "read-only" in t for t in texts)
    assert any(t.startswith("write_file") and "approval" in t for t in texts)
    _check_tool(pane, "read_file")
    _check_tool(pane, "write_file")
    pane.form.folder.setText(str(granted))
    pane.form.seed.setValue(3)
    pane.form.max_steps.setValue(6)
    qtbot.mouseClick(pane.form.save_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.saving, timeout=10_000)
    assert pane.form.version_label.text().startswith("v1")
    spec = store.get("copier")
    assert spec.version == 1 and spec.seed == 3 and spec.limits.max_steps == 6
    assert {t.name: t.folder for t in spec.tools} == {
        "read_file": str(granted),
        "write_file": str(granted),
    }
    pane.form.description.setText("copies notes, v2")
    qtbot.mouseClick(pane.form.save_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.saving, timeout=10_000)
    assert pane.form.version_label.text().startswith("v2") and store.versions("copier") == [1, 2]
    assert pane.agent_list.count() == 1

    # -- run: read_file runs unasked, write_file waits for approval
    pane.view.input.setPlainText("Copy my notes to out.txt")
    qtbot.mouseClick(pane.view.run_btn, Qt.MouseButton.LeftButton)
    assert pane.busy
    qtbot.waitUntil(lambda: not pane.view.approval_bar.isHidden(), timeout=30_000)
    assert "write_file(path='out.txt'" in pane.view.approval_bar.text.text()
    labels = _labels(pane)
    assert labels[:3] == ["system", "user", "tool call"]
    assert labels[3].startswith("tool result · UNTRUSTED")  # read_file, no approval asked
    assert not any(lbl.startswith("approval") for lbl in labels)
    assert not (granted / "out.txt").exists()
    assert not pane.view.run_btn.isEnabled()
    qtbot.mouseClick(pane.view.approval_bar.once_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.busy, timeout=30_000)
    assert (granted / "out.txt").read_text() == "copied"
    assert pane.view.final_label.text() == "Final answer: I copied the notes to out.txt."
    labels = _labels(pane)
    assert "approval: once" in labels and labels[-1] == "final answer"
    run = runs.get(pane.run_id)
    assert run.status == "succeeded" and run.agent_version == 2
    assert [a.kind for a in ApprovalStore(store.db).list("copier")] == ["tool", "tool"]
    assert pane.run_list.count() == 1

    # -- run search
    pane.run_search.setText("no such text")
    assert pane.run_list.count() == 0
    pane.run_search.setText("answer is 42")
    assert pane.run_list.count() == 1

    # -- fork from the read_file result with edited content
    (granted / "out.txt").unlink()
    read_result = next(
        it
        for it in _items(pane)
        if it.text(0).startswith("tool result") and "read_file" in it.text(1)
    )
    pane.view.tree.setCurrentItem(read_result)
    assert pane.view.fork_btn.isEnabled()
    qtbot.mouseClick(pane.view.fork_btn, Qt.MouseButton.LeftButton)
    dlg = pane.fork_dialog
    assert dlg is not None and dlg.isVisible()
    assert dlg.editor.toPlainText() == "The answer is 42.\n"
    dlg.editor.setPlainText("The answer is 43.\n")
    dlg.accept()
    qtbot.waitUntil(lambda: not pane.view.approval_bar.isHidden(), timeout=30_000)
    qtbot.mouseClick(pane.view.approval_bar.always_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.busy, timeout=30_000)
    assert (granted / "out.txt").read_text() == "copied"
    always = [a for a in ApprovalStore(store.db).list("copier") if a.kind == "always"]
    assert [(a.name, a.versions) for a in always] == [("write_file", (2,))]
    labels = _labels(pane)
    assert "branch 1/2" in labels and "branch 2/2 (shown)" in labels
    assert pane.view.final_label.text().startswith("Final answer:")
    # the new branch: the edited tool result under the same parent, then a full continuation
    path = runs.path(run.id)
    edited = [s for s in path if s.kind == "tool_result" and s.tool == "read_file"]
    assert [s.content for s in edited] == ["The answer is 43.\n"]
    assert edited[0].data.get("edited_from")
    assert len(runs.children(edited[0].parent_id or "")) == 2
    assert runs.get(run.id).status == "succeeded" and pane.run_list.count() == 1
    assert "approval: always" in labels
    # the model saw the edited result, marked untrusted
    seen = server.requests()[-2]["messages"][-1]["content"]
    assert seen.startswith("UNTRUSTED TOOL RESULT") and "The answer is 43." in seen


def test_deny_and_shutdown_while_waiting(qtbot: Any, pane: Any, tmp_path: Path) -> None:
    granted = tmp_path / "g"
    granted.mkdir()
    (granted / "notes.txt").write_text("hello\n")
    pane.new_agent()
    pane.form.name.setText("denied")
    _check_tool(pane, "read_file")
    _check_tool(pane, "write_file")
    pane.form.folder.setText(str(granted))
    pane.view.input.setPlainText("Copy")
    pane.run()  # saves the form first (v1, in the action layer), then runs it
    assert pane.busy  # saving counts as busy: a second Run does nothing meanwhile
    qtbot.waitUntil(lambda: not pane.view.approval_bar.isHidden(), timeout=30_000)
    assert AgentStore(pane.services.workspace.db).versions("denied") == [1]
    qtbot.mouseClick(pane.view.approval_bar.deny_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.busy, timeout=30_000)
    assert not (granted / "out.txt").exists()
    assert "approval: deny" in _labels(pane)
    steps = RunStore(pane.services.workspace.db).path(pane.run_id)
    assert any(s.data.get("denied") for s in steps)

    # a second run left waiting for approval: closing the pane denies it and ends the worker
    pane.run()
    qtbot.waitUntil(lambda: not pane.view.approval_bar.isHidden(), timeout=30_000)
    pane.shutdown()
    assert pane.runner.worker is None and not pane.busy
    assert not (granted / "out.txt").exists()


def test_pane_module_imports_no_ml_stack() -> None:
    code = (
        "import sys, app.ui.panes.agents.qt_agents_pane as m; "
        "bad = [x for x in ('torch', 'transformers', 'llama_cpp', 'peft') if x in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


REPLAY_SCRIPT = [
    {"tool": "read_file", "arguments": {"path": "notes.txt"}},
    {"final": "The notes say 42."},
]
OTHER_SCRIPT = [
    {"tool": "read_file", "arguments": {"path": "other.txt"}},
    {"final": "Something else."},
]


def _select_run(pane: Any, run_id: str) -> None:
    for i in range(pane.run_list.count()):
        if pane.run_list.item(i).data(Qt.ItemDataRole.UserRole) == run_id:
            pane.run_list.setCurrentRow(i)
            return
    raise AssertionError(run_id)


def test_replay_identical_then_diverged_and_export_run(
    qtbot: Any, main_window: Any, tmp_path: Path
) -> None:
    from app.core.agents.bundle import read_bundle

    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "notes.txt").write_text("42\n")
    runs = RunStore(main_window.services.workspace.db)
    with ScriptedServer(REPLAY_SCRIPT) as same, ScriptedServer(OTHER_SCRIPT) as other:
        pane = main_window.pane("agents")
        pane.runner.client_factory = lambda spec: OpenAIChatClient(same.base_url, same.token)
        pane.new_agent()
        pane.form.name.setText("reader")
        _check_tool(pane, "read_file")
        pane.form.folder.setText(str(granted))
        pane.view.input.setPlainText("What do my notes say?")
        assert not pane.view.replay_btn.isEnabled()  # no run shown yet
        qtbot.mouseClick(pane.view.run_btn, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: not pane.busy, timeout=30_000)
        original = pane.run_id
        assert runs.get(original).final == "The notes say 42."

        # replay: the tool result comes from the recording, not the (changed) file
        (granted / "notes.txt").write_text("changed\n")
        assert pane.view.replay_btn.isEnabled()
        qtbot.mouseClick(pane.view.replay_btn, Qt.MouseButton.LeftButton)
        assert pane.busy and not pane.view.replay_btn.isEnabled()
        qtbot.waitUntil(lambda: not pane.busy, timeout=30_000)
        report = pane.last_replay
        assert report is not None and report.identical and report.original.id == original
        assert pane.view.replay_label.isVisible()
        assert pane.view.replay_label.text() == (
            f"Replay of run {original}: identical, every step matches the recording."
        )
        replay = runs.get(pane.run_id)
        assert replay.id != original and replay.replay_of == original
        assert replay.final == "The notes say 42."
        reqs = same.requests()
        assert len(reqs) == 4 and [r["messages"] for r in reqs[2:]] == [
            r["messages"] for r in reqs[:2]
        ]
        assert pane.run_list.count() == 2
        assert any(
            f"replay of {original}" in pane.run_list.item(i).text()
            for i in range(pane.run_list.count())
        )

        # the same run replayed against a model that answers differently: where it diverged
        _select_run(pane, original)
        assert pane.run_id == original and not pane.view.replay_label.isVisible()
        pane.runner.client_factory = lambda spec: OpenAIChatClient(other.base_url, other.token)
        qtbot.mouseClick(pane.view.replay_btn, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: not pane.busy, timeout=30_000)
        report = pane.last_replay
        assert report is not None and not report.identical
        assert report.divergence is not None and report.divergence.index == 2
        text = pane.view.replay_label.text()
        assert text.startswith(f"Replay of run {original} diverged at step 2: expected model")
        assert "notes.txt" in text and "other.txt" in text
        assert runs.get(pane.run_id).status == "diverged"
        # the divergent step is the one selected in the run view
        assert pane.selected_step() is not None
        assert pane.selected_step().id == report.divergence.actual.id

    # export the original run as a bundle: every step, verified
    _select_run(pane, original)
    out = pane.export_run(tmp_path / "run-bundle")
    assert out == tmp_path / "run-bundle"
    meta, files = read_bundle(out)
    assert meta["kind"] == "run" and files["run.json"]["id"] == original
    assert len(files["steps.json"]) == len(runs.steps(original))


def test_agent_on_a_library_gguf_model_answers_in_json_mode(
    qtbot: Any, main_window: Any, gemma_gguf: Path
) -> None:
    """No client_factory: the pane starts a model host for the library GGUF (JSON-constrained)."""
    import json

    from app.core.agents.loop import first_json_object
    from app.core.models.registry import ModelRegistry

    rec = ModelRegistry(main_window.services.workspace).import_gguf(
        gemma_gguf, copy=False, name="gemma"
    )
    main_window.services.bus.models_changed.emit()
    pane = main_window.pane("agents")
    assert pane.runner.client_factory is None and pane.host.pid is None
    pane.new_agent()
    pane.form.name.setText("gemma-json")
    pane.form.model_combo.setCurrentIndex(pane.form.model_combo.findData(rec.id))
    pane.form.system_prompt.setPlainText('You answer in JSON: {"final": "..."}')
    pane.form.temperature.setValue(0.0)
    pane.form.seed.setValue(1)
    pane.form.max_steps.setValue(1)
    pane.form.max_tokens.setValue(48)
    pane.form.timeout.setValue(600)
    pane.view.input.setPlainText('Repeat this JSON exactly: {"final": "hello"}')
    qtbot.mouseClick(pane.view.run_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.busy, timeout=600_000)
    runs = RunStore(main_window.services.workspace.db)
    run = runs.get(pane.run_id)
    steps = runs.path(run.id)
    assert run.status == "succeeded", (run.error, [(s.kind, s.content) for s in steps])
    assert run.final == "hello" and pane.view.final_label.text() == "Final answer: hello"
    assert (run.model_id, run.model_sha256) == (rec.id, rec.sha256)
    assert pane.host.pid is not None  # the pane's own model host served the library model
    model_steps = [s for s in steps if s.kind == "model"]
    assert len(model_steps) == 1
    reply = first_json_object(model_steps[0].content)
    assert model_steps[0].content.lstrip().startswith("{") and reply is not None
    assert reply["final"] == "hello", json.dumps(reply)


def test_native_tool_calls_from_the_pane(qtbot: Any, main_window: Any, tmp_path: Path) -> None:
    """A server whose model has a native tool format: the pane's run uses tools/tool_calls,
    still asks before the side effect, and shows the mode on the system step."""
    from app.ui.panes.agents.qt_agents_pane import AgentsPane

    script = [
        {"content": None, "tool_calls": [{"name": "write_file",
                                          "arguments": {"path": "out.txt", "content": "hi"}}]},
        "Wrote it.",
    ]  # fmt: skip
    granted = tmp_path / "granted"
    granted.mkdir()
    with ScriptedServer(script, tool_format="hermes") as srv:
        p = AgentsPane(main_window.services)
        qtbot.addWidget(p)
        p.runner.client_factory = lambda spec: OpenAIChatClient(srv.base_url, srv.token)
        p.show()
        try:
            p.new_agent()
            p.form.name.setText("native-writer")
            _check_tool(p, "write_file")
            p.form.folder.setText(str(granted))
            assert p.form.tool_mode.currentData() == "auto"
            qtbot.mouseClick(p.form.save_btn, Qt.MouseButton.LeftButton)
            qtbot.waitUntil(lambda: not p.saving, timeout=10_000)
            p.view.input.setPlainText("write hi to out.txt")
            qtbot.mouseClick(p.view.run_btn, Qt.MouseButton.LeftButton)
            qtbot.waitUntil(lambda: not p.view.approval_bar.isHidden(), timeout=30_000)
            assert not (granted / "out.txt").exists()
            qtbot.mouseClick(p.view.approval_bar.once_btn, Qt.MouseButton.LeftButton)
            qtbot.waitUntil(lambda: not p.busy, timeout=30_000)
            assert (granted / "out.txt").read_text() == "hi"
            first = _items(p)[0]
            assert "native tool calls" in first.text(1)
            assert "final answer" in _labels(p)
            sent = srv.requests()
            assert sent[0]["tools"][0]["function"]["name"] == "write_file"
            assert sent[1]["messages"][-1]["role"] == "tool"
        finally:
            p.shutdown()


def test_run_python_shown_unavailable_without_bubblewrap(
    qtbot: Any, main_window: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.ui.panes.agents.qt_agents_pane import AgentsPane

    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap: the sandbox cannot run
    p = AgentsPane(main_window.services)
    qtbot.addWidget(p)
    items = {p.form.tool_list.item(i).data(Qt.ItemDataRole.UserRole): p.form.tool_list.item(i)
             for i in range(p.form.tool_list.count())}  # fmt: skip
    py = items["run_python"]
    assert "unavailable" in py.text() and "bubblewrap" in py.toolTip()
    assert not py.flags() & Qt.ItemFlag.ItemIsEnabled
    assert items["calculator"].flags() & Qt.ItemFlag.ItemIsEnabled
    p.shutdown()


def test_python_folder_and_writable_round_trip_into_the_saved_spec(
    qtbot: Any, main_window: Any, tmp_path: Path
) -> None:
    from app.core.agents.spec import ToolGrant
    from app.core.errors import ConfigError
    from app.ui.panes.agents.qt_agents_pane import AgentsPane

    docs, data = tmp_path / "docs", tmp_path / "data"
    p = AgentsPane(main_window.services)
    qtbot.addWidget(p)
    try:
        p.new_agent()
        p.form.name.setText("pyagent")
        _check_tool(p, "read_file")
        _check_tool(p, "run_python")
        p.form.folder.setText(str(docs))
        p.form.py_writable.setChecked(True)
        with pytest.raises(ConfigError, match="writable but has no folder"):
            p.form.spec_from_form()
        p.form.py_folder.setText(str(data))
        assert p.save_agent() is not None
        qtbot.waitUntil(lambda: not p.saving, timeout=10_000)
        saved = p.spec
        assert saved is not None
        stored = AgentStore(main_window.services.workspace.db).get("pyagent")
        tools = {t.name: t for t in stored.tools}
        assert tools["run_python"] == ToolGrant("run_python", str(data), writable=True)
        assert tools["read_file"] == ToolGrant("read_file", str(docs))  # its own folder
        # The user wrote the writable grant: approved on save, like write_file.
        assert ApprovalStore(main_window.services.workspace.db).pending(stored) == []

        p.new_agent()
        assert (p.form.py_folder.text(), p.form.py_writable.isChecked()) == ("", False)
        p.load_agent(stored)
        assert p.form.py_folder.text() == str(data) and p.form.py_writable.isChecked()
        assert p.form.folder.text() == str(docs)  # not run_python's folder

        p.form.py_writable.setChecked(False)
        assert p.save_agent() is not None
        qtbot.waitUntil(lambda: not p.saving, timeout=10_000)
        v2 = p.spec
        assert v2 is not None and v2.version == stored.version + 1
        py = next(t for t in v2.tools if t.name == "run_python")
        assert py == ToolGrant("run_python", str(data)) and "writable" not in py.to_dict()
    finally:
        p.shutdown()


def test_run_stopped_at_its_step_limit_is_shown_as_stopped_not_error(
    qtbot: Any, pane: Any, tmp_path: Path
) -> None:
    from app.ui.panes.agents.qt_run_steps import ERROR_COLOR

    granted = tmp_path / "g"
    granted.mkdir()
    (granted / "notes.txt").write_text("hello\n")
    pane.new_agent()
    pane.form.name.setText("short")
    _check_tool(pane, "read_file")
    pane.form.folder.setText(str(granted))
    pane.form.max_steps.setValue(1)  # the script's first turn reads a file; no turn is left after
    pane.view.input.setPlainText("Read the notes")
    pane.run()
    qtbot.waitUntil(lambda: not pane.busy, timeout=30_000)
    run = RunStore(pane.services.workspace.db).get(pane.run_id)
    assert run.status == "stopped" and run.error == "reached its step limit of 1"
    last = _items(pane)[-1]
    assert last.text(0) == "stopped" and "reached its step limit of 1" in last.text(1)
    assert "error" not in _labels(pane)
    assert last.foreground(0).color().name() != ERROR_COLOR
    assert pane.view.final_label.text() == "Run stopped: reached its step limit of 1."
    assert ERROR_COLOR not in pane.view.final_label.styleSheet()
    assert f"Run {run.id}: stopped." == pane.view.status.text()
    pane.resize(1400, 700)
    pane.grab().save("/tmp/G-stopped.png")


def test_run_view_shows_a_repeated_call_that_was_not_run(
    qtbot: Any, main_window: Any, tmp_path: Path
) -> None:
    from app.ui.panes.agents.qt_agents_pane import AgentsPane

    granted = tmp_path / "g"
    granted.mkdir()
    (granted / "notes.txt").write_text("hello\n")
    script = [{"tool": "read_file", "arguments": {"path": "notes.txt"}}] * 3 + [{"final": "hello"}]
    with ScriptedServer(script) as srv:
        p = AgentsPane(main_window.services)
        qtbot.addWidget(p)
        p.runner.client_factory = lambda spec: OpenAIChatClient(srv.base_url, srv.token)
        p.show()
        try:
            p.new_agent()
            p.form.name.setText("looper")
            _check_tool(p, "read_file")
            p.form.folder.setText(str(granted))
            p.view.input.setPlainText("Read the notes")
            p.run()
            qtbot.waitUntil(lambda: not p.busy, timeout=30_000)
            labels = _labels(p)
            assert labels.count("tool result · UNTRUSTED") == 2
            assert labels.count("repeated call #3 · not run") == 1
            item = next(it for it in _items(p) if it.text(0).startswith("repeated call"))
            assert item.text(1).startswith("[read_file] Not run again: this is call number 3")
            assert p.view.final_label.text() == "Final answer: hello"
            p.resize(1400, 700)
            p.grab().save("/tmp/G-repeated.png")
        finally:
            p.shutdown()


def test_approval_bar_shows_arguments_once_and_what_write_file_does(
    qtbot: Any, pane: Any, tmp_path: Path
) -> None:
    granted = tmp_path / "g"
    granted.mkdir()
    (granted / "notes.txt").write_text("hello\n")
    (granted / "out.txt").write_text("precious data\n")  # 14 bytes, about to be replaced
    pane.new_agent()
    pane.form.name.setText("writer")
    _check_tool(pane, "read_file")
    _check_tool(pane, "write_file")
    pane.form.folder.setText(str(granted))
    pane.view.input.setPlainText("Copy")
    pane.run()
    qtbot.waitUntil(lambda: not pane.view.approval_bar.isHidden(), timeout=30_000)
    text = pane.view.approval_bar.text.text()
    assert text.count("'copied'") == 1 and text.count("out.txt") == 2, text
    assert f"This OVERWRITES existing out.txt (14 bytes) in {granted}." in text
    pane.resize(1400, 700)
    pane.grab().save("/tmp/G-approval-overwrite.png")
    qtbot.mouseClick(pane.view.approval_bar.deny_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.busy, timeout=30_000)
    assert (granted / "out.txt").read_text() == "precious data\n"

    (granted / "out.txt").unlink()
    pane.run()
    qtbot.waitUntil(lambda: not pane.view.approval_bar.isHidden(), timeout=30_000)
    text = pane.view.approval_bar.text.text()
    assert f"This creates out.txt in {granted}." in text and "OVERWRITES" not in text
    assert text.count("'copied'") == 1
    pane.grab().save("/tmp/G-approval-create.png")
    qtbot.mouseClick(pane.view.approval_bar.deny_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.busy, timeout=30_000)


def test_save_error_is_shown_under_save_not_in_a_dialog(
    qtbot: Any, pane: Any, no_modal_dialogs: list[str]
) -> None:
    pane.new_agent()
    pane.form.name.setText("not a valid name!")
    qtbot.mouseClick(pane.form.save_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.saving, timeout=10_000)
    status = pane.form.save_status
    qtbot.waitUntil(lambda: status.isVisible() and bool(status.label.text()), timeout=10_000)
    assert "name" in status.label.text().lower()
    Path("/tmp/shots").mkdir(parents=True, exist_ok=True)
    pane.form.grab().save("/tmp/shots/agents_save_error.png")
    assert no_modal_dialogs == []
    assert AgentStore(pane.services.workspace.db).list() == []
    assert pane.form.save_btn.isEnabled()  # the user can fix the name and save again
    pane.form.name.setText("valid-name")
    qtbot.mouseClick(pane.form.save_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not pane.saving, timeout=10_000)
    assert [s.name for s in AgentStore(pane.services.workspace.db).list()] == ["valid-name"]
    assert pane.form.version_label.text().startswith("v1")
