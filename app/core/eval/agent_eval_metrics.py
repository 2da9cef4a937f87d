"""The metrics of agent evaluation (job ``eval.agent``, :mod:`app.core.eval.agent_eval`).

Registered when :mod:`app.core.eval.metrics` is imported, so every process that reads an
agent eval run (``demoai eval show/compare/gate``, the Evaluate pane) knows them.
"""

from __future__ import annotations

from app.core.eval.metrics import MetricSpec, register_metric

register_metric(
    MetricSpec(
        "agent_success",
        "model",
        True,
        "agent task done: a final answer, no refused call, every check of the task holds",
        points=100,
        needs_reference=False,
    ),
)
register_metric(
    MetricSpec(
        "tool_accuracy",
        "model",
        True,
        "agent tool calls: right tool, valid arguments, matching the expected calls when given",
        points=100,
        needs_reference=False,
    ),
)
register_metric(
    MetricSpec("agent_steps", "model", False, "agent model turns per task", needs_reference=False),
)
register_metric(
    MetricSpec(
        "agent_tokens",
        "model",
        False,
        "agent tokens per task (prompt + completion, as the server reports them)",
        needs_reference=False,
    ),
)
register_metric(
    MetricSpec(
        "agent_time_s", "model", False, "agent wall time per task (s)", needs_reference=False
    ),
)
