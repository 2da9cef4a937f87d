"""The metric registry: name -> :class:`MetricSpec`.

Three kinds of metric:

* ``reference``: a pure function of the prediction and the reference(s)
  (exact match, F1, BLEU, ROUGE, regex, contains);
* ``model``: needs the model itself or the timing of its answer (multiple-choice
  accuracy from log-likelihoods, perplexity of the reference, latency, tokens/s);
  the runner computes these;
* ``judge``: another local model scores the answer against a rubric
  (:mod:`app.core.eval.judge`).

Scores are stored per sample; the aggregate of a metric is the mean of its
per-sample scores, except where the spec has a ``corpus`` function (BLEU is a
corpus statistic, as sacrebleu defines it). EM, F1, ROUGE and accuracy are on a
0..1 scale; BLEU on sacrebleu's 0..100 scale.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from app.core.errors import ConfigError

MetricKind = Literal["reference", "model", "judge"]
Refs = Sequence[str]
SampleFn = Callable[[str, Refs], float]
CorpusFn = Callable[[Sequence[str], Sequence[Refs]], float]


@dataclass(frozen=True)
class MetricSpec:
    """One metric: how to compute it and how to read it."""

    name: str
    kind: MetricKind
    higher_is_better: bool
    description: str
    fn: SampleFn | None = None  # reference metrics: score of one sample
    corpus: CorpusFn | None = None  # aggregate over a corpus instead of the mean
    #: Factor from the metric's unit to "points" (0..1 metrics: 100).
    points: float = 1.0
    needs_reference: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "higher_is_better": self.higher_is_better,
            "description": self.description,
            "needs_reference": self.needs_reference,
        }


_METRICS: dict[str, MetricSpec] = {}
_ALIASES: dict[str, str] = {}


def register_metric(spec: MetricSpec, *aliases: str) -> MetricSpec:
    """Add (or replace) a metric, reachable by its name and its aliases."""
    _METRICS[spec.name] = spec
    for a in aliases:
        _ALIASES[a] = spec.name
    return spec


def canonical_name(name: str) -> str:
    """The registered name for ``name`` or one of its aliases; ConfigError when unknown."""
    key = name.strip()
    if key in _METRICS:
        return key
    key = _ALIASES.get(key.lower(), key.lower())
    if key not in _METRICS:
        raise ConfigError(
            f"Unknown metric '{name}'.",
            f"Known metrics: {', '.join(sorted(_METRICS))} (aliases: {', '.join(sorted(_ALIASES))}).",
        )
    return key


def get_metric(name: str) -> MetricSpec:
    """The spec of ``name`` (or an alias)."""
    return _METRICS[canonical_name(name)]


def metrics() -> list[MetricSpec]:
    """Every registered metric, sorted by name."""
    return [_METRICS[k] for k in sorted(_METRICS)]


# -- SQuAD exact match and F1 ---------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_refs(reference: str | Refs) -> list[str]:
    return [reference] if isinstance(reference, str) else [str(r) for r in reference]


def exact_match(prediction: str, reference: str | Refs) -> float:
    """1.0 when the normalised prediction equals a normalised reference (max over references)."""
    pred = normalize_answer(prediction)
    return max((float(pred == normalize_answer(r)) for r in _as_refs(reference)), default=0.0)


def _f1(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(pred_tokens) & Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str | Refs) -> float:
    """SQuAD v1.1 token F1 (bag of normalised tokens), max over references."""
    return max((_f1(prediction, r) for r in _as_refs(reference)), default=0.0)


# -- BLEU (sacrebleu) ---------------------------------------------------------------------
def bleu_sentence(prediction: str, reference: str | Refs) -> float:
    """sacrebleu's sentence BLEU (0..100) with its default smoothing."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, _as_refs(reference)).score)


def bleu_corpus(predictions: Sequence[str], references: Sequence[Refs]) -> float:
    """sacrebleu's corpus BLEU (0..100); samples may have different numbers of references."""
    import sacrebleu

    refs = [_as_refs(r) for r in references]
    width = max((len(r) for r in refs), default=1)
    # sacrebleu wants one stream per reference slot; pad short lists with None.
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)  # type: ignore[arg-type]


# -- ROUGE (rouge-score, Porter stemmer) ---------------------------------------------------
_ROUGE: dict[str, Any] = {}


def rouge(prediction: str, reference: str | Refs, kind: str) -> float:
    """rouge-score F-measure of ``kind`` ('rouge1', 'rouge2', 'rougeL'), max over references."""
    scorer = _ROUGE.get(kind)
    if scorer is None:
        from rouge_score import rouge_scorer

        scorer = _ROUGE[kind] = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    return max(
        (float(scorer.score(r, prediction)[kind].fmeasure) for r in _as_refs(reference)),
        default=0.0,
    )


# -- pattern checks -----------------------------------------------------------------------
def regex_match(prediction: str, reference: str | Refs) -> float:
    """1.0 when the prediction matches a reference used as a regular expression (re.search).

    The reference comes from a dataset: every match has a time limit (app/core/patterns.py).
    """
    from app.core.patterns import compile_pattern

    for r in _as_refs(reference):
        try:
            rx = compile_pattern(r)
        except ValueError as exc:
            raise ValueError(f"The reference {exc}") from None
        if rx.search(prediction):
            return 1.0
    return 0.0


def contains(prediction: str, reference: str | Refs) -> float:
    """1.0 when the normalised prediction contains a normalised reference."""
    pred = normalize_answer(prediction)
    return max((float(normalize_answer(r) in pred) for r in _as_refs(reference)), default=0.0)


def _rouge_fn(kind: str) -> SampleFn:
    def fn(prediction: str, reference: Refs) -> float:
        return rouge(prediction, reference, kind)

    return fn


register_metric(
    MetricSpec(
        "exact_match", "reference", True, "SQuAD exact match (normalised)", exact_match, points=100
    ),
    "em",
    "exact",
)
register_metric(
    MetricSpec("f1", "reference", True, "SQuAD token F1", token_f1, points=100), "token_f1"
)
register_metric(
    MetricSpec(
        "bleu",
        "reference",
        True,
        "sacrebleu BLEU (corpus; sentence per sample)",
        bleu_sentence,
        corpus=bleu_corpus,
    ),
    "sacrebleu",
)
register_metric(
    MetricSpec("rouge1", "reference", True, "ROUGE-1 F (stemmed)", _rouge_fn("rouge1"), points=100),
    "rouge-1",
)
register_metric(
    MetricSpec("rouge2", "reference", True, "ROUGE-2 F (stemmed)", _rouge_fn("rouge2"), points=100),
    "rouge-2",
)
register_metric(
    MetricSpec("rougeL", "reference", True, "ROUGE-L F (stemmed)", _rouge_fn("rougeL"), points=100),
    "rouge-l",
    "rougel",
)
register_metric(
    MetricSpec(
        "regex", "reference", True, "reference as a regular expression", regex_match, points=100
    ),
    "regex_match",
)
register_metric(
    MetricSpec(
        "contains", "reference", True, "prediction contains the reference", contains, points=100
    )
)
register_metric(
    MetricSpec(
        "mc_accuracy",
        "model",
        True,
        "multiple choice: the choice with the highest summed log-likelihood is the reference",
        points=100,
    ),
    "mc",
    "accuracy",
)
register_metric(
    MetricSpec("perplexity", "model", False, "perplexity of the reference given the prompt"),
    "ppl",
)
register_metric(
    MetricSpec(
        "corpus_perplexity",
        "model",
        False,
        "perplexity of a whole text: exp(sum nll / sum tokens) over its windows "
        "(demoai eval perplexity)",
        needs_reference=False,
    ),
    "corpus_ppl",
)
register_metric(
    MetricSpec("latency_ms", "model", False, "wall time of the answer (ms)", needs_reference=False),
    "latency",
)
register_metric(
    MetricSpec("tokens_per_s", "model", True, "generated tokens per second", needs_reference=False),
    "tps",
)
register_metric(
    MetricSpec(
        "judge", "judge", True, "LLM-as-judge score 1..5 against a rubric", needs_reference=False
    ),
    "llm_judge",
)
from app.core.eval import agent_eval_metrics as _agent_eval_metrics  # noqa: E402, F401
from app.core.eval import harness_metrics as _harness_metrics  # noqa: E402, F401 (lm_eval: names)
