"""Self-instruct and paraphrase augmentation: filters with scripted proposals, real jobs with Gemma.

A 270M base model writes poor data: these tests check the mechanism (filters,
provenance, versions, determinism, cancel), never the quality of the rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from app.core.data.store import DatasetStore
from app.core.data.synth import (
    PROVENANCE,
    ModelInfo,
    RougeFilter,
    augment,
    heuristic_reject,
    self_instruct,
)
from app.core.jobs.store import JobService, JobState
from app.core.models.registry import ModelRegistry
from app.workers.supervisor import Supervisor

SEED_ROWS = [
    ("Write a haiku about autumn leaves.", "", "Red leaves drift and fall / ..."),
    ("Give three tips for staying focused while studying.", "", "1. Remove distractions."),
    ("Translate the sentence into French.", "Good morning, my friend.", "Bonjour, mon ami."),
    ("Summarize the plot of Romeo and Juliet in one sentence.", "", "Two lovers die."),
    ("List five fruits that are high in vitamin C.", "", "Orange, kiwi, guava, lemon, papaya."),
    ("Explain what a prime number is to a child.", "", "A number only 1 and itself divide."),
]
MODEL = ModelInfo("scripted-model", "ab" * 32)


def _seed_dataset(ws: Any) -> str:
    cols = {
        "instruction": [r[0] for r in SEED_ROWS],
        "input": [r[1] for r in SEED_ROWS],
        "output": [r[2] for r in SEED_ROWS],
        "id": list(range(len(SEED_ROWS))),
    }
    v = DatasetStore(ws).create_dataset("seeds", pa.table(cols))
    return f"{v.dataset_id}@{v.hash}"


class Scripted:
    """A completer answering proposals from a list; outputs are fixed text."""

    def __init__(self, proposals: list[str]) -> None:
        self.proposals = list(proposals)
        self.calls: list[tuple[str, int]] = []

    def __call__(
        self,
        prompt: str,
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
        stop: Sequence[str],
    ) -> str:
        self.calls.append((prompt, seed))
        if prompt.rstrip().endswith("Output:"):
            return " A scripted answer."
        if prompt.rstrip().endswith("Paraphrase:"):
            return self.proposals.pop(0) if self.proposals else ""
        return " " + self.proposals.pop(0) if self.proposals else ""


# -- filters, scripted --------------------------------------------------------------------------
def test_heuristic_rejects() -> None:
    assert heuristic_reject("Describe the water cycle in simple words.") is None
    assert heuristic_reject("Hi there") == "too_short"
    assert heuristic_reject(" ".join(["word"] * 200)) == "too_long"
    assert heuristic_reject("Draw a picture of a cat sitting down.") == "blacklisted_word"
    assert heuristic_reject("Plot the sales numbers for this year.") == "blacklisted_word"
    assert heuristic_reject("Open the file and read it aloud.") == "blacklisted_word"
    assert heuristic_reject("Please go to the store and buy milk.") == "blacklisted_word"
    assert heuristic_reject("- list the planets of the solar system") == "starts_with_punctuation"
    assert heuristic_reject("日本語で自己紹介を書いてください お願いします") == "non_text_start"
    assert heuristic_reject("A 日本語で自己紹介を書いてください お願いします") == "non_ascii"
    p = ["Describe the water cycle in simple words."]
    assert heuristic_reject("describe the water cycle in  simple words.", p) == "copied_from_prompt"


def test_rouge_filter_rejects_near_copy_keeps_different() -> None:
    f = RougeFilter(["Give three tips for staying focused while studying."], 0.7)
    assert not f.accepts("Give three tips for staying focused while working.")
    assert f.accepts("Name the largest ocean on Earth and describe it.")


def test_self_instruct_scripted_filters_and_provenance(workspace: Any) -> None:
    ref = _seed_dataset(workspace)
    near_copy = "Give three tips for staying focused while working."
    proposals = [
        near_copy,  # ROUGE-L vs a seed >= 0.7
        "Draw a map of your town.",  # blacklisted
        "Name the largest ocean on Earth and describe it.",  # kept
        "Name the largest ocean on Earth and describe it briefly.",  # near the kept one
        "Hi",  # too short
        "Write a short thank-you note to a teacher.",  # kept
    ]
    comp = Scripted(proposals)
    out = self_instruct(workspace, ref, comp, MODEL, n_new=2, seed=7, max_tokens=32)
    assert out.generated == 2 and out.attempts == 6
    assert out.rejects == {"rouge_similar": 2, "blacklisted_word": 1, "too_short": 1}
    assert out.version is not None and out.version.rows == len(SEED_ROWS) + 2
    assert out.version.operation["name"] == "self_instruct"
    assert out.version.operation["params"]["rejects"] == out.rejects
    table = DatasetStore(workspace).read_table(f"{out.version.dataset_id}@{out.version.hash}")
    rows = table.to_pylist()
    assert [r["instruction"] for r in rows[:6]] == [r[0] for r in SEED_ROWS]
    assert all(r["gen_method"] is None for r in rows[:6])
    new = rows[6:]
    assert [r["instruction"] for r in new] == [proposals[2], proposals[5]]
    for r in new:
        assert r["gen_model_sha256"] == MODEL.sha256 and r["gen_method"] == "self_instruct"
        assert r["gen_model_id"] and r["gen_prompt"] and r["gen_seed"] is not None
        assert r["output"] == "A scripted answer." and r["input"] == "" and r["id"] is None
    # Request seeds come from the job seed and the attempt: the same on a rerun.
    again = Scripted(proposals)
    self_instruct(workspace, ref, again, MODEL, n_new=2, seed=7, max_tokens=32)
    assert [s for _, s in again.calls] == [s for _, s in comp.calls]


def test_self_instruct_gives_up_after_max_attempts(workspace: Any) -> None:
    ref = _seed_dataset(workspace)
    out = self_instruct(
        workspace, ref, Scripted(["Hi"] * 10), MODEL, n_new=3, max_attempts=4, seed=1
    )
    assert out.version is None and out.attempts == 4 and out.rejects == {"too_short": 4}
    assert out.result()["rejects"] == {"too_short": 4}


def test_augment_scripted_drops_empty_and_duplicates(workspace: Any) -> None:
    ref = _seed_dataset(workspace)
    paraphrases = [
        "Compose a haiku on the subject of autumn leaves.",  # row 0 kept
        "",  # row 1 empty
        "give three tips for staying focused while studying.",  # row 1 identical
        "Share three ways to keep your focus when you study.",  # row 1 kept
    ]
    out = augment(
        workspace,
        ref,
        Scripted(paraphrases),
        MODEL,
        column="instruction",
        n=1,
        max_rows=2,
        attempts_per_paraphrase=3,
    )
    assert out.generated == 2 and out.rejects == {"empty": 1, "duplicate": 1}
    assert out.version is not None and out.version.rows == len(SEED_ROWS) + 2
    rows = DatasetStore(workspace).read_table(f"{ref.split('@')[0]}").to_pylist()[6:]
    assert [r["gen_source_row"] for r in rows] == [0, 1]
    assert rows[1]["output"] == SEED_ROWS[1][2] and rows[1]["gen_method"] == "paraphrase"


def test_augment_with_a_custom_prompt_template(workspace: Any) -> None:
    from app.core.errors import ConfigError

    ref = _seed_dataset(workspace)
    completer = Scripted(["Make a short autumn leaf poem."])
    template = "Rewrite the request in other words.\nRequest: {{text}}\nRewritten:"
    out = augment(workspace, ref, completer, MODEL, column="instruction", n=1, max_rows=1,
                  prompt_template=template)  # fmt: skip
    prompt = completer.calls[0][0]
    assert prompt == f"Rewrite the request in other words.\nRequest: {SEED_ROWS[0][0]}\nRewritten:"
    assert out.generated == 1 and out.version is not None
    assert out.version.operation["params"]["prompt_template"] == template
    row = DatasetStore(workspace).read_table(ref.split("@")[0]).to_pylist()[-1]
    assert row["gen_prompt"] == prompt and row["instruction"] == "Make a short autumn leaf poem."
    for bad in ("no variable here", "{{text}} for {{audience}}"):
        with pytest.raises(ConfigError):
            augment(workspace, ref, completer, MODEL, column="instruction", prompt_template=bad)
    assert len(completer.calls) == 1  # refused before calling the model


# -- real jobs with Gemma 3 270M --------------------------------------------------------------
@pytest.fixture
def gemma_model(workspace: Any, gemma_gguf: Path) -> str:
    return ModelRegistry(workspace).import_path(gemma_gguf, copy=False).id


def _run(ws: Any, kind: str, params: dict[str, Any], timeout: float = 300) -> Any:
    job = JobService(ws).submit(kind, params)
    sup = Supervisor(ws)
    sup.start(job.id)
    return sup.wait(job.id, timeout=timeout)


def test_self_instruct_job_with_gemma(workspace: Any, gemma_model: str) -> None:
    ref = _seed_dataset(workspace)
    params = {
        "dataset": ref,
        "model": gemma_model,
        "n_new": 3,
        "seed": 11,
        "max_tokens": 32,
        "max_attempts": 30,
        "threads": 2,
        "n_ctx": 2048,
    }
    done = _run(workspace, "data.self_instruct", params)
    log = JobService(workspace).log_tail(done.id)
    result = done.result or {}
    assert "rejects" in result and result["attempts"] <= 30, log
    if done.state != JobState.SUCCEEDED:  # the model produced only rejects: clearly reported
        assert done.state == JobState.FAILED and "rejects" in (done.error or ""), log
        pytest.fail(f"no instruction passed the filters: {result}")
    assert result["generated"] >= 1
    store = DatasetStore(workspace)
    v = store.version(result["dataset_id"], result["version"])
    assert v.rows == len(SEED_ROWS) + result["generated"] > len(SEED_ROWS)
    assert v.operation["name"] == "self_instruct"
    assert v.operation["params"]["rejects"] == result["rejects"]
    sha = ModelRegistry(workspace).get(gemma_model).sha256
    new = store.read_table(f"{v.dataset_id}@{v.hash}").to_pylist()[len(SEED_ROWS) :]
    for r in new:
        for col in PROVENANCE:
            if col != "gen_source_row":
                assert r[col] not in (None, ""), (col, r)
        assert r["gen_model_sha256"] == sha and r["gen_model_id"] == gemma_model
        assert r["gen_method"] == "self_instruct" and r["instruction"] and r["output"]

    # Same seed, same source version: the same rows, so the same content hash.
    again = _run(workspace, "data.self_instruct", params)
    assert again.state == JobState.SUCCEEDED, JobService(workspace).log_tail(again.id)
    assert (again.result or {})["version"] == result["version"]
    assert (again.result or {})["rejects"] == result["rejects"]


def test_augment_job_with_gemma(workspace: Any, gemma_model: str) -> None:
    ref = _seed_dataset(workspace)
    params = {
        "dataset": ref,
        "model": gemma_model,
        "column": "instruction",
        "n": 1,
        "seed": 3,
        "max_tokens": 32,
        "max_rows": 3,
        "threads": 2,
        "n_ctx": 2048,
    }
    done = _run(workspace, "data.augment", params)
    result = done.result or {}
    assert done.state == JobState.SUCCEEDED, (result, JobService(workspace).log_tail(done.id))
    store = DatasetStore(workspace)
    v = store.version(result["dataset_id"], result["version"])
    assert v.rows == len(SEED_ROWS) + result["generated"] > len(SEED_ROWS)
    assert v.operation["name"] == "paraphrase"
    sha = ModelRegistry(workspace).get(gemma_model).sha256
    new = store.read_table(f"{v.dataset_id}@{v.hash}").to_pylist()[len(SEED_ROWS) :]
    for r in new:
        assert all(r[c] not in (None, "") for c in PROVENANCE), r
        assert r["gen_model_sha256"] == sha and r["gen_method"] == "paraphrase"
        src = SEED_ROWS[r["gen_source_row"]]
        assert r["instruction"].strip().lower() != src[0].lower() and r["output"] == src[2]


def test_self_instruct_job_cancel(workspace: Any, gemma_model: str) -> None:
    ref = _seed_dataset(workspace)
    params = {
        "dataset": ref,
        "model": gemma_model,
        "n_new": 500,
        "seed": 1,
        "max_tokens": 32,
        "threads": 2,
    }
    jobs = JobService(workspace)
    job = jobs.submit("data.self_instruct", params)
    sup = Supervisor(workspace)
    sup.start(job.id)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sup.pump()
        j = jobs.get(job.id)
        if "attempts" in (j.message or ""):
            break
        time.sleep(0.2)
    sup.cancel(job.id)
    done = sup.wait(job.id, timeout=60)
    assert done.state == JobState.CANCELLED, jobs.log_tail(job.id)
    assert len(DatasetStore(workspace).versions(ref.split("@")[0])) == 1
