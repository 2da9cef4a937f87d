"""Evaluation: a metric registry, perplexity, LLM-as-judge, eval runs (job ``eval.run``),
the regression gate and the blind arena with Bradley-Terry/Elo ratings.

Importing this package is cheap: torch, transformers, llama_cpp, sacrebleu and
rouge-score load inside the functions that use them.
"""

from app.core.eval.arena import (
    ArenaMatch,
    ArenaService,
    BlindMatch,
    bradley_terry,
    elo,
    leaderboard,
)
from app.core.eval.gate import GateResult, evaluate_gate, gate_runs, load_thresholds
from app.core.eval.metrics import MetricSpec, get_metric, register_metric
from app.core.eval.runner import (
    EvalConfig,
    EvalRun,
    EvalSample,
    EvalStore,
    bootstrap_ci,
    submit_eval,
    validate_eval,
)

__all__ = [
    "ArenaMatch",
    "ArenaService",
    "BlindMatch",
    "EvalConfig",
    "EvalRun",
    "EvalSample",
    "EvalStore",
    "GateResult",
    "MetricSpec",
    "bootstrap_ci",
    "bradley_terry",
    "elo",
    "evaluate_gate",
    "gate_runs",
    "get_metric",
    "leaderboard",
    "load_thresholds",
    "register_metric",
    "submit_eval",
    "validate_eval",
]
