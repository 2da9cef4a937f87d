"""The Evaluate pane's Agent eval tab: results of an eval.agent run (aggregates with CIs, one
row per task, a task's agent run step by step), setup errors shown before any job, a run
started and cancelled from the tab; nothing slow on the UI thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from PySide6.QtWidgets import QTableWidget

from app.core.agents import AgentSpec, AgentStore, Limits, ToolGrant
from app.core.data.store import DatasetStore
from app.core.eval.agent_eval import KIND, AgentEvalConfig, submit_agent_eval
from app.core.jobs.store import JobState
from app.core.models.registry import ModelRegistry
from app.ui.panes.evaluate.qt_eval_tab import set_checked
from tests.support.scripted_server import ScriptedServer

KEY_ENV = "DEMOAI_TEST_AGENT_EVAL_UI_KEY"
TASKS = {
    "[a] What is 6*7?": [
        {"tool": "calculator", "arguments": {"expression": "6*7"}},
        {"final": "It is 42."},
    ],
    "[b] What is 2+3?": [{"final": "6"}],
}
TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED)


@pytest.fixture
def pane(qtbot: Any, main_window: Any) -> Any:
    from app.ui.panes.evaluate.qt_evaluate_pane import EvaluatePane

    p = EvaluatePane(main_window.services)
    qtbot.addWidget(p)
    p.show()
    yield p
    p.shutdown()


def _cells(t: QTableWidget, col: int) -> list[str]:
    return [t.item(r, col).text() for r in range(t.rowCount())]


def test_agent_eval_tab(
    qtbot: Any,
    main_window: Any,
    pane: Any,
    ui_watchdog: Any,
    gemma_gguf: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = main_window.services
    ws = services.workspace
    folder = tmp_path / "granted"
    folder.mkdir()
    AgentStore(ws.db).save(
        AgentSpec(
            name="calc",
            tools=(ToolGrant("calculator"), ToolGrant("read_file", str(folder))),
            tool_mode="json",
            limits=Limits(max_steps=3, max_tokens=64, timeout_s=60),
        )
    )
    table = pa.table(
        {
            "task": list(TASKS),
            "answer": ["42", "5"],
            "tools": ['[{"name": "calculator"}]', '[{"name": "calculator"}]'],
        }
    )
    ds = DatasetStore(ws).create_dataset("agent-tasks", table).dataset_id
    tab = pane.agent_eval_tab
    pane.tabs.setCurrentWidget(tab)

    # A run made elsewhere (the CLI's path, a scripted server): the hub runs and follows it.
    with ScriptedServer({"by_input": {k[:3]: v for k, v in TASKS.items()}}) as server:
        monkeypatch.setenv(KEY_ENV, server.token)
        cfg = AgentEvalConfig(
            agents=["calc"], dataset=ds, input_column="task", reference_column="answer",
            tools_column="tools", base_url=server.base_url, api_key_env=KEY_ENV,
            model_name="scripted", name="scripted run",
        )  # fmt: skip
        job = submit_agent_eval(ws, cfg)
        services.hub.tick()
        qtbot.waitUntil(lambda: services.jobs.get(job.id).state in TERMINAL, timeout=120_000)
    assert services.jobs.get(job.id).state == JobState.SUCCEEDED, services.jobs.log_tail(job.id)

    with ui_watchdog.watch():
        qtbot.waitUntil(lambda: "scripted run" in _cells(tab.runs, 0), timeout=10_000)
        tab.refresh_runs(select=job.id)
        agg = {
            (tab.aggregates.item(r, 1).text()): tab.aggregates.item(r, 2).text()
            for r in range(tab.aggregates.rowCount())
        }
        assert float(agg["agent_success %"]) == 50.0 and float(agg["tool_accuracy %"]) == 50.0
        assert [float(v) for v in _cells(tab.tasks, 3)] == [1.0, 0.0]  # success per task
        assert _cells(tab.tasks, 8) == ["succeeded", "succeeded"]
        dlg = tab.open_task(0)
        assert dlg is not None and dlg.isVisible()
        steps: QTableWidget = dlg.findChild(QTableWidget, "agentEvalSteps")
        assert _cells(steps, 0) == ["system", "user", "model", "tool_result", "model"]
        assert "calculator" in _cells(steps, 1)
        dlg.close()
        # The Evaluate tab lists the same run and can show it.
        pane.eval_tab.refresh_runs(select=job.id)
    ui_watchdog.assert_no_stall()

    # Setup errors come before any job: the agent names no model and none is checked.
    tab.refresh()
    set_checked(tab.agents, ["calc@1"])
    tab.dataset.setCurrentIndex(tab.dataset.findData(ds))
    assert tab.input_col.currentText() == "task" and tab.tools_col.currentText() == "tools"
    before = [j.id for j in services.jobs.list_jobs()]
    with ui_watchdog.watch():
        tab.run_btn.click()
        qtbot.waitUntil(lambda: tab.error.isVisible(), timeout=30_000)
    assert "names no model" in tab.error.text()
    assert [j.id for j in services.jobs.list_jobs()] == before

    # With a library model checked the run starts; Cancel stops it.
    gemma = ModelRegistry(ws).import_gguf(gemma_gguf, copy=False, name="gemma")
    tab.refresh()
    set_checked(tab.models, [gemma.id])
    with ui_watchdog.watch():
        tab.run_btn.click()
        qtbot.waitUntil(lambda: tab.job_id is not None, timeout=30_000)
        started = tab.job_id
        assert started is not None and tab.cancel_btn.isEnabled()
        tab.cancel_btn.click()
        qtbot.waitUntil(lambda: tab.job_id is None, timeout=180_000)
    ui_watchdog.assert_no_stall()
    final = services.jobs.get(started)
    assert final.kind == KIND and final.state in (JobState.CANCELLED, JobState.SUCCEEDED)
    assert final.params["models"] == [f"calc@1:{gemma.id}"]
    assert tab.run_btn.isEnabled()
