"""Evaluation: a metric registry, perplexity, LLM-as-judge, eval runs (job ``eval.run``),
the regression gate and the blind arena with Bradley-Terry/Elo ratings.

Importing this package is cheap: torch, transformers, llama_cpp, sacrebleu and
rouge-score load inside the functions that use them.
"""

from importlib import import_module
from typing import Any

# Loaded on first use, so that opening a workspace (which imports this package's
# schema module) does not import every submodule.
_EXPORTS = {
    "ArenaMatch": "arena",
    "ArenaService": "arena",
    "BlindMatch": "arena",
    "EvalConfig": "runner",
    "EvalRun": "runner",
    "EvalSample": "runner",
    "EvalStore": "runner",
    "GateResult": "gate",
    "MetricSpec": "metrics",
    "bootstrap_ci": "runner",
    "bradley_terry": "arena",
    "elo": "arena",
    "evaluate_gate": "gate",
    "gate_runs": "gate",
    "get_metric": "metrics",
    "leaderboard": "arena",
    "load_thresholds": "gate",
    "register_metric": "metrics",
    "submit_eval": "runner",
    "validate_eval": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
