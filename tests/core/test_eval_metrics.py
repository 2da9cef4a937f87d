"""Eval metrics against their references, the judge parser, ratings, the gate and the arena."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from app.core.errors import ConfigError
from app.core.eval import metrics as M
from app.core.eval.arena import ArenaService, bradley_terry, elo, leaderboard, outcomes
from app.core.eval.gate import evaluate_gate, load_thresholds
from app.core.eval.judge import judge_sample, parse_verdict
from app.core.eval.runner import EvalConfig, bootstrap_ci

PREDS = [
    "The cat sat on the mat.",
    "A quick brown fox jumped over the lazy dogs",
    "Paris is the capital of France",
    "completely unrelated words here",
]
REFS = [
    "The cat is sitting on the mat.",
    "The quick brown fox jumps over the lazy dog.",
    "The capital of France is Paris.",
    "Something else entirely different.",
]


def test_squad_exact_match_worked_examples() -> None:
    assert M.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert M.exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert M.exact_match("Eiffel", "Eiffel Tower") == 0.0
    assert M.exact_match("an apple", ["pear", "Apple."]) == 1.0


def test_squad_f1_worked_examples() -> None:
    # pred tokens: cat sat on mat; ref: cat on mat -> P = 3/4, R = 1, F1 = 6/7.
    assert M.token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    # one common token of two each side: P = R = 1/2.
    assert M.token_f1("Broncos win", "Denver Broncos") == pytest.approx(0.5)
    assert M.token_f1("Denver Broncos", ["Broncos", "Denver Broncos"]) == 1.0
    assert M.token_f1("nothing", "Denver") == 0.0
    # repeated tokens count as a bag: "a a b" vs "a b": after articles removal -> "b" vs "b".
    assert M.token_f1("x x y", "x y") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))


def test_bleu_equals_sacrebleu() -> None:
    import sacrebleu

    for p, r in zip(PREDS, REFS, strict=True):
        assert M.bleu_sentence(p, r) == sacrebleu.sentence_bleu(p, [r]).score
    assert M.bleu_corpus(PREDS, [[r] for r in REFS]) == sacrebleu.corpus_bleu(PREDS, [REFS]).score
    spec = M.get_metric("bleu")
    assert spec.corpus is not None


def test_rouge_equals_rouge_score() -> None:
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for p, r in zip(PREDS, REFS, strict=True):
        ref = sc.score(r, p)
        assert M.get_metric("rouge1").fn(p, [r]) == ref["rouge1"].fmeasure  # type: ignore[misc]
        assert M.get_metric("rouge-2").fn(p, [r]) == ref["rouge2"].fmeasure  # type: ignore[misc]
        assert M.get_metric("rougeL").fn(p, [r]) == ref["rougeL"].fmeasure  # type: ignore[misc]


def test_regex_contains_and_registry() -> None:
    assert M.regex_match("The answer is 42.", r"\b42\b") == 1.0
    assert M.regex_match("The answer is 421.", r"\b42\b") == 0.0
    assert M.contains("I think it is the Eiffel Tower, in Paris", "eiffel tower") == 1.0
    assert M.canonical_name("EM") == "exact_match"
    assert M.canonical_name("rouge-l") == "rougeL"
    with pytest.raises(ConfigError, match="Unknown metric 'blue'"):
        M.get_metric("blue")
    with pytest.raises(ConfigError, match="Unknown metric"):
        EvalConfig(
            models=["m"],
            dataset="d",
            input_column="q",
            reference_column="a",
            metrics=["em", "nope"],
        )
    assert {"reference", "model", "judge"} == {m.kind for m in M.metrics()}


def test_judge_parsing_is_robust_and_errors_are_recorded() -> None:
    v = parse_verdict('Sure! ```json\n{"score": 4, "rationale": "mostly right"}\n```')
    assert (v.score, v.rationale, v.error) == (4.0, "mostly right", None)
    assert parse_verdict("{'score': 2, 'rationale': 'meh'}").score == 2.0
    assert parse_verdict("Score: 5\nRationale: perfect").score == 5.0
    bad = parse_verdict("I cannot grade this.")
    assert bad.score is None and bad.error and "unparseable" in bad.error
    assert parse_verdict('{"score": 9}').error is not None  # out of range

    seen: list[str] = []

    def scripted(prompt: str) -> str:
        seen.append(prompt)
        return "no json at all"

    verdict, prompt = judge_sample(scripted, "2+2?", "5", "4", rubric="exactness")
    assert verdict.score is None and verdict.error
    assert prompt == seen[0] and "exactness" in prompt and "2+2?" in prompt

    def crashing(prompt: str) -> str:
        raise RuntimeError("boom")

    verdict, _ = judge_sample(crashing, "q", "a")
    assert verdict.error and "boom" in verdict.error


def test_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    vals = [float(i % 2) for i in range(50)]
    lo, hi = bootstrap_ci(vals, n_boot=500, seed=3)
    assert lo < 0.5 < hi
    assert (lo, hi) == bootstrap_ci(vals, n_boot=500, seed=3)
    assert math.isnan(bootstrap_ci([], n_boot=10)[0])


def _simulate(strengths: dict[str, float], n: int, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    names = sorted(strengths)
    votes = []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        pa = strengths[a] / (strengths[a] + strengths[b])
        u = rng.random()
        if u < 0.1:
            votes.append((a, b, "tie"))
        else:
            votes.append((a, b, "a" if rng.random() < pa else "b"))
    return votes


def test_bradley_terry_recovers_the_known_order() -> None:
    strengths = {"alpha": 8.0, "beta": 4.0, "gamma": 2.0, "delta": 1.0}
    votes = _simulate(strengths, 3000, seed=1)
    bt = bradley_terry(outcomes(votes))
    order = sorted(bt, key=lambda m: -bt[m])
    assert order == ["alpha", "beta", "gamma", "delta"]
    # each factor 2 of strength is 400*log10(2) ~ 120 rating points (ties shrink it a little)
    gap = bt["alpha"] - bt["delta"]
    assert 250 < gap < 420
    el = elo(outcomes(votes))
    assert sorted(el, key=lambda m: -el[m])[0] == "alpha"
    rows = leaderboard(votes, n_boot=50, seed=0)
    assert [r["model"] for r in rows] == order
    assert all(r["ci_low"] <= r["rating"] <= r["ci_high"] for r in rows)


def test_gate_rules() -> None:
    th = load_thresholds({"f1": {"max_drop_points": 1.0}, "em": {"min": 0.5}})
    base = {"f1": {"value": 0.80}, "exact_match": {"value": 0.6}}
    good = {"m": {"f1": {"value": 0.795}, "exact_match": {"value": 0.55}}}
    bad = {"m": {"f1": {"value": 0.78}, "exact_match": {"value": 0.4}}}
    assert evaluate_gate(good, th, base).passed
    res = evaluate_gate(bad, th, base)
    assert not res.passed and sum(not c.passed for c in res.checks) == 2
    # lower is better: latency rising is a drop
    lat = load_thresholds({"latency_ms": {"max_drop_pct": 10}})
    assert not evaluate_gate(
        {"m": {"latency_ms": {"value": 120}}}, lat, {"latency_ms": {"value": 100}}
    ).passed
    with pytest.raises(ConfigError):
        load_thresholds({"f1": {"drop": 1}})


def test_arena_blind_match_vote_and_leaderboard(workspace: Any) -> None:
    arena = ArenaService(workspace)
    rng = random.Random(0)
    sides = set()
    for i in range(12):
        blind = arena.create_match(f"prompt {i}", {"m1": "good", "m2": "bad", "m3": "ok"}, rng=rng)
        assert not hasattr(blind, "model_a")
        m = arena.get(blind.id)
        sides.add(m.model_a)
        best = {"m1": 3, "m3": 2, "m2": 1}
        vote = "a" if best[m.model_a] > best[m.model_b] else "b"
        revealed = arena.vote(blind.id, vote)
        assert revealed.vote == vote and revealed.model_a in ("m1", "m2", "m3")
    assert len(sides) > 1  # left/right is randomised
    with pytest.raises(ConfigError):
        arena.vote(blind.id, "a")
    board = arena.leaderboard(n_boot=20)
    assert [r["model"] for r in board] == ["m1", "m3", "m2"]


def test_judge_verdicts_are_stored_per_sample(workspace: Any) -> None:
    from app.core.eval.runner import EvalSample, EvalStore, apply_judge

    store = EvalStore(workspace)
    cfg = EvalConfig(
        models=["m"],
        dataset="d@v",
        input_column="q",
        metrics=["judge"],
        judge_model="j",
        bootstrap=0,
    )
    store.create_run("run1", cfg)
    replies = iter(['{"score": 4, "rationale": "good"}', "I refuse to answer in JSON"])
    for i in range(2):
        s = EvalSample("run1", "m", i, f"q{i}", f"a{i}", None, {"judge": None}, None, 1.0, 2, {})
        store.put_sample(s)
        apply_judge(store, s, lambda prompt: next(replies), "be strict")
    good, bad = store.samples("run1")
    assert good.scores["judge"] == 4.0 and good.extra["judge_rationale"] == "good"
    assert "be strict" in good.extra["judge_prompt"]
    assert bad.scores["judge"] is None and bad.error and "unparseable" in bad.error
    agg = store.aggregates("run1")["m"]["judge"]
    assert agg["value"] == 4.0 and agg["n"] == 1 and agg["errors"] == 1
    assert store.get_run("run1").judge_prompt
