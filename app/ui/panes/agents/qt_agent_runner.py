"""Runs an agent, a fork or a replay on a worker thread for the Agents pane.

Steps reach the UI through Qt signals as the loop records them. When the agent
calls a side-effecting tool (or needs an MCP server or grant approved first) the
worker blocks on a ``threading.Event`` until :meth:`AgentRunner.answer` gives the
user's decision; closing denies. The model client comes from the agent's library
model, leased from the window's shared model host for the run; tests set
:attr:`AgentRunner.client_factory`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.core.agents import (
    AgentSpec,
    AgentStore,
    ChatClient,
    OpenAIChatClient,
    RunStore,
    ToolCall,
    agent_tools,
    fork_run,
    replay_run,
    run_agent,
)
from app.core.agents.approvals import ApprovalStore, Grant
from app.core.agents.docindex import OpenAIEmbedder
from app.core.agents.loop import embedding_models
from app.core.errors import ConfigError, DemoAIError
from app.core.models.registry import ModelRegistry
from app.ui.host_manager import Lease
from app.ui.services import Services

#: work(approve, on_step) -> RunResult | ReplayReport, run on the worker thread
Work = Callable[[Callable[[ToolCall], str], Callable[[Any], None]], Any]


class AgentRunner(QObject):
    """One worker thread at a time; signals arrive on the UI thread."""

    step = Signal(object)  # Step
    approval = Signal(object)  # ToolCall, or a Grant to approve before the run starts
    done = Signal(object, str)  # RunResult | ReplayReport | None, error text

    def __init__(
        self, services: Services, runs: RunStore, agents: AgentStore, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.services = services
        self.runs = runs
        self.agents = agents
        self.host = services.host
        self.registry = ModelRegistry(services.workspace)
        #: spec -> model client; None leases the agent's library model from the shared host.
        self.client_factory: Callable[[AgentSpec], ChatClient] | None = None
        #: Tests: embedding functions by model id (else the shared host serves them).
        self.embedder_factory: Callable[[str], Any] | None = None
        self._embedder_for: Callable[[str], Any] | None = None
        self.worker: threading.Thread | None = None
        self._closing = threading.Event()
        self._pending: tuple[ToolCall | Grant, threading.Event, list[str]] | None = None
        self._leases: list[Lease] = []  # the models the running work holds in the host

    @property
    def busy(self) -> bool:
        return self.worker is not None

    # -- the model and the tools (worker thread) ------------------------------------------
    def make_client(self, spec: AgentSpec) -> ChatClient:
        """The model client for ``spec`` (called on the worker thread)."""
        if self.client_factory is not None:
            return self.client_factory(spec)
        if not spec.model_id:
            raise ConfigError(
                f"Agent {spec.name} names no model.", "Choose a library model and save."
            )
        rec = self.registry.get(spec.model_id)
        if spec.model_sha256 and rec.sha256 != spec.model_sha256:
            raise ConfigError(
                f"The library model {rec.id} is not the one agent {spec.name} was made with.",
                "Import the exact model, or save a new agent version for this one.",
            )
        # Leased for the run (released when it ends): the shared host keeps them loaded.
        lease = self.host.lease(rec, spec.template)
        self._leases.append(lease)
        for mid in embedding_models(spec):
            self._leases.append(self.host.lease(self.registry.get(mid)))
        self._embedder_for = lambda mid: OpenAIEmbedder(lease.base_url, lease.token, mid)
        return OpenAIChatClient(lease.base_url, lease.token, model=lease.model)

    def make_tools(self, spec: AgentSpec) -> Any:
        """The agent's tools (a context manager); call after :meth:`make_client`.

        An MCP server or tool grant not approved for this exact version is asked
        in the approval bar first; denied, it stays inactive for this run.
        """
        gate = ApprovalStore(self.services.workspace.db).gate(spec, self._approve)
        return agent_tools(
            spec,
            embedder_for=self.embedder_factory or self._embedder_for,
            index_dir=self.services.workspace.root / "agents" / "index",
            gate=gate,
        )

    # -- what runs ------------------------------------------------------------------------
    def run(self, spec: AgentSpec, text: str) -> None:
        """Run the saved ``spec`` on ``text``."""

        def work(approve: Callable[[ToolCall], str], on_step: Callable[[Any], None]) -> Any:
            client = self.make_client(spec)
            with self.make_tools(spec) as tools:
                return run_agent(
                    spec, text, client=client, runs=self.runs, tools=tools,
                    approve=approve, agents=self.agents, on_step=on_step,
                )  # fmt: skip

        self.start(work)

    def fork(self, run_id: str, step_id: str, content: str | None) -> None:
        """Continue ``run_id`` from ``step_id`` (with edited content) on a new branch."""
        spec = self.runs.get(run_id).agent_spec()

        def work(approve: Callable[[ToolCall], str], on_step: Callable[[Any], None]) -> Any:
            client = self.make_client(spec)
            with self.make_tools(spec) as tools:
                return fork_run(
                    run_id, step_id, client=client, runs=self.runs, tools=tools,
                    content=content, approve=approve, agents=self.agents, on_step=on_step,
                )  # fmt: skip

        self.start(work)

    def replay(self, run_id: str) -> None:
        """Replay ``run_id`` with its recorded tool results; the report says where it diverged."""
        spec = self.runs.get(run_id).agent_spec()
        self.start(
            lambda approve, on_step: replay_run(
                run_id, client=self.make_client(spec), runs=self.runs
            )
        )

    # -- the worker -----------------------------------------------------------------------
    def start(self, work: Work) -> None:
        """Run ``work(approve, on_step)`` on the worker thread; ``done`` when it ends."""

        def main() -> None:
            try:
                result = work(self._approve, self.step.emit)
            except DemoAIError as exc:
                self.done.emit(None, exc.message + (f" {exc.hint}" if exc.hint else ""))
            except Exception as exc:  # shown in the pane, never lost
                self.done.emit(None, f"{type(exc).__name__}: {exc}")
            else:
                self.done.emit(result, "")

        self._closing.clear()
        self.worker = threading.Thread(target=main, name="agent-run", daemon=True)
        self.worker.start()

    def finished(self) -> None:
        """The work ended (``done`` arrived): reap the thread, give the models back."""
        if self.worker is not None:
            self.worker.join(timeout=5)
        self.worker = None
        self._pending = None
        self._release_leases()

    def _release_leases(self) -> None:
        leases, self._leases = self._leases, []
        for lease in leases:
            self.host.release(lease)

    # -- approvals ------------------------------------------------------------------------
    def _approve(self, call: ToolCall | Grant) -> str:
        """The loop's and the gate's approver (worker thread): ask the UI, wait for it."""
        event = threading.Event()
        answer: list[str] = []
        self._pending = (call, event, answer)
        self.approval.emit(call)
        while not event.wait(0.1):
            if self._closing.is_set():
                return "deny"
        return answer[0] if answer else "deny"

    def answer(self, decision: str) -> ToolCall | Grant | None:
        """Give the pending approval its answer ('once', 'always', 'deny'); returns what
        was asked, None when nothing was."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        call, event, answer = pending
        answer.append(decision)
        event.set()
        return call

    def shutdown(self) -> None:
        """Deny a pending approval, wait for the worker, give back its models (the window
        stops the shared host)."""
        self._closing.set()
        worker = self.worker
        if worker is not None:
            worker.join(timeout=10)
            if not worker.is_alive():
                self.worker = None
        self._pending = None
        self._release_leases()
