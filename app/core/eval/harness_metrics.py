"""Metric names of lm-evaluation-harness runs (``demoai eval harness``).

The harness scores; these specs only name its per-sample metrics for the eval
store, the gate and the Evaluate pane, which look every metric up by name.
Two harness metrics are ours already: a multiple-choice task's ``acc`` is
``mc_accuracy`` (the choice with the highest summed log-likelihood is the gold
one) and ``exact_match`` is ``exact_match`` (0/1 per sample; the task's own
normalisation). The others keep their harness name behind ``lm_eval:``.

Only metrics the harness aggregates as a mean of per-sample values are listed:
their aggregate over the stored samples is the harness's own number. Corpus
metrics (BLEU, F1, MCC, perplexities) stay in the run's summary as the harness
reported them. Imported by :mod:`app.core.eval.metrics`, so every process that
reads eval runs knows the names; nothing here imports the harness.
"""

from __future__ import annotations

from app.core.eval.metrics import MetricSpec, register_metric

PREFIX = "lm_eval:"

#: harness metric -> (higher is better, description); all aggregated as a mean.
MEAN_METRICS: dict[str, tuple[bool, str]] = {
    "acc": (True, "accuracy (log-likelihood tasks: the continuation is the greedy one)"),
    "acc_norm": (True, "multiple choice accuracy with log-likelihoods normalised by length"),
    "acc_mutual_info": (True, "multiple choice accuracy by mutual information"),
    "acc_bytes": (True, "multiple choice accuracy with log-likelihoods per byte"),
    "likelihood": (True, "probability mass on the gold choice"),
}

for _name, (_higher, _desc) in MEAN_METRICS.items():
    register_metric(
        MetricSpec(
            PREFIX + _name,
            "model",
            _higher,
            f"lm-evaluation-harness {_name}: {_desc}",
            points=100,
            needs_reference=False,
        )
    )


def run_metric_name(harness_metric: str, output_type: str) -> str | None:
    """The eval-store name of a harness metric, or None when it is not a per-sample mean."""
    if harness_metric == "acc" and output_type == "multiple_choice":
        return "mc_accuracy"
    if harness_metric == "exact_match":
        return "exact_match"
    if harness_metric in MEAN_METRICS:
        return PREFIX + harness_metric
    return None
