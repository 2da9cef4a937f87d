"""``demoai eval harness``: lm-evaluation-harness tasks run as a DemoAI job through the model
host, stored as eval runs; their numbers equal ``demoai eval run`` on the same data and
prompts; a task whose data is not in the library is refused before any job exists."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tests.support.ci import needs
from tests.support.cli import demoai

needs_lm_eval = needs(
    importlib.util.find_spec("lm_eval") is not None,
    "lm-eval is not installed (pip install -e .[harness])",
)

MC = [
    ("The capital of France is", ["Paris", "Berlin", "Rome"], 0),
    ("Two plus two equals", ["three", "four", "five"], 1),
    ("The sky on a clear day is", ["green", "red", "blue"], 2),
    ("Water freezes at zero degrees", ["Celsius", "Kelvin"], 0),
    ("A cat says", ["woof", "meow", "moo"], 1),
    ("The opposite of hot is", ["cold", "warm"], 0),
]
GEN = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Italy?", "Rome"),
    ("How many legs does a spider have?", "eight"),
    ("What color is the sky on a clear day?", "blue"),
    ("What is the opposite of up?", "down"),
]
MC_YAML = """task: demoai_mc_job
dataset_path: json
dataset_kwargs:
  data_files:
    test: mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
# A Hub dataset name: its data must come from the library ("demoai-test/qa:test").
GEN_YAML = r"""task: demoai_gen_job
dataset_path: demoai-test/qa
test_split: test
training_split: train
process_docs: !function utils.offline_only
output_type: generate_until
doc_to_text: "Question: {{question}}\nAnswer:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\n", "."]
  max_gen_toks: 8
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
    regexes_to_ignore: ["(?i)\\b(a|an|the)\\b", "\\s+"]
"""
# Runs in the job: the documents are read only with the Hub and datasets offline.
UTILS = """import os


def offline_only(dataset):
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(flag) != "1":
            raise RuntimeError(flag + " is not set in the job")
    return dataset
"""
MISSING_YAML = GEN_YAML.replace("demoai_gen_job", "demoai_missing").replace(
    "demoai-test/qa", "nobody/absent-bench\ndataset_name: main"
)


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, gemma_gguf: Path
) -> Iterator[dict[str, Any]]:
    from app.core.data.store import DatasetStore
    from app.core.models.registry import ModelRegistry
    from app.core.workspace import Workspace

    root = tmp_path_factory.mktemp("harness")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "mc.jsonl").write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in MC)
    )
    (tasks / "mc.yaml").write_text(MC_YAML)
    (tasks / "gen.yaml").write_text(GEN_YAML)
    (tasks / "missing.yaml").write_text(MISSING_YAML)
    (tasks / "utils.py").write_text(UTILS)
    wsdir = root / "ws"
    ws = Workspace.open(wsdir)
    try:
        reg = ModelRegistry(ws)
        tiny = reg.import_path(tiny_llama_dir, copy=False).id
        gemma = reg.import_path(gemma_gguf, copy=False).id
        store = DatasetStore(ws)
        mc = store.create_dataset(
            "mc",
            pa.table(
                {
                    "question": [q for q, _, _ in MC],
                    "choices": [c for _, c, _ in MC],
                    "answer": [a for _, _, a in MC],
                }
            ),
        )
        qa = pa.table({"question": [q for q, _ in GEN], "answer": [a for _, a in GEN]})
        gen = store.create_dataset("demoai-test/qa:test", qa)
    finally:
        ws.close()
    yield {
        "ws": wsdir, "tasks": tasks, "tiny": tiny, "gemma": gemma,
        "mc": f"{mc.dataset_id}@{mc.hash}", "gen": f"{gen.dataset_id}@{gen.hash}",
    }  # fmt: skip


def run_json(ws: Path, *args: str) -> dict[str, Any]:
    r = demoai(ws, *args, "--json", timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def samples(ws: Path, run_id: str) -> list[Any]:
    from app.core.eval.runner import EvalStore
    from app.core.workspace import Workspace

    w = Workspace.open(ws)
    try:
        return EvalStore(w).samples(run_id)
    finally:
        w.close()


@needs_lm_eval
def test_multiple_choice_task_equals_eval_run(setup: dict[str, Any]) -> None:
    ws, tiny = setup["ws"], setup["tiny"]
    h = run_json(
        ws, "eval", "harness", "--model", tiny, "--task", str(setup["tasks"] / "mc.yaml"),
        "--threads", "2", "--n-ctx", "512",
    )  # fmt: skip
    d = run_json(
        ws, "eval", "run", "--model", tiny, "--dataset", setup["mc"], "--input", "question",
        "--reference", "answer", "--choices", "choices", "--metric", "mc_accuracy",
        "--template", "{input}", "--threads", "2",
    )  # fmt: skip
    theirs, ours = samples(ws, h["run_id"]), samples(ws, d["run_id"])
    assert len(theirs) == len(ours) == len(MC)
    for t, o in zip(theirs, ours, strict=True):
        assert t.extra["choice_logprobs"] == pytest.approx(o.extra["choice_logprobs"], abs=1e-3)
        assert t.scores["mc_accuracy"] == o.scores["mc_accuracy"]
        assert t.prediction == o.prediction
    acc = h["aggregates"][tiny]["mc_accuracy"]["value"]
    assert acc == pytest.approx(d["aggregates"][tiny]["mc_accuracy"]["value"], abs=1e-9)
    assert acc == pytest.approx(h["harness"]["results"]["acc,none"], abs=1e-9)
    assert h["harness"]["version"] == "0.4.13"
    # An eval run like the others: listed, compared side by side, exported.
    listed = run_json(ws, "eval", "list")
    assert h["run_id"] in json.dumps(listed)
    rows = run_json(ws, "eval", "compare", h["run_id"], d["run_id"])
    got = {(r["run_id"], r["metric"]): r["value"] for r in rows["rows"]} if isinstance(
        rows, dict) else {(r["run_id"], r["metric"]): r["value"] for r in rows}  # fmt: skip
    assert got[(h["run_id"], "mc_accuracy")] == pytest.approx(got[(d["run_id"], "mc_accuracy")])


@needs_lm_eval
def test_generation_task_from_the_library_equals_eval_run(setup: dict[str, Any]) -> None:
    """A task naming a Hub dataset reads the library's copy (offline, checked in the job)."""
    ws, gemma = setup["ws"], setup["gemma"]
    h = run_json(
        ws, "eval", "harness", "--model", gemma, "--task", str(setup["tasks"] / "gen.yaml"),
        "--threads", "2", "--n-ctx", "512",
    )  # fmt: skip
    d = run_json(
        ws, "eval", "run", "--model", gemma, "--dataset", setup["gen"], "--input", "question",
        "--reference", "answer", "--metric", "exact_match", "--max-tokens", "8",
        "--temperature", "0", "--stop", "\n", "--stop", ".",
        "--template", "Question: {input}\nAnswer:", "--threads", "2",
    )  # fmt: skip
    theirs, ours = samples(ws, h["run_id"]), samples(ws, d["run_id"])
    assert [(t.prediction or "").strip() for t in theirs] == [
        (o.prediction or "").strip() for o in ours
    ]
    assert [t.scores["exact_match"] for t in theirs] == [o.scores["exact_match"] for o in ours]
    em = h["aggregates"][gemma]["exact_match"]["value"]
    assert 0 < em == pytest.approx(d["aggregates"][gemma]["exact_match"]["value"], abs=1e-9)
    assert em == pytest.approx(h["harness"]["results"]["exact_match,none"], abs=1e-9)
    from app.core.eval.runner import EvalStore
    from app.core.workspace import Workspace

    w = Workspace.open(ws)
    try:
        run = EvalStore(w).get_run(h["run_id"])
    finally:
        w.close()
    assert run.dataset_ref == setup["gen"]  # the library version, pinned


@needs_lm_eval
def test_missing_data_names_the_dataset_to_import_and_starts_no_job(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    r = demoai(
        ws, "eval", "harness", "--model", str(setup["tasks"] / "mc.jsonl"),
        "--task", str(setup["tasks"] / "missing.yaml"),
    )  # fmt: skip
    assert r.returncode != 0
    r = demoai(
        setup["ws"], "eval", "harness", "--model", setup["tiny"],
        "--task", str(setup["tasks"] / "missing.yaml"),
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "nobody/absent-bench/main:test" in r.stderr
    assert (
        'demoai data import nobody_absent-bench_main_test.jsonl --name "nobody/absent-bench/main:test"'
        in r.stderr
    )
    jobs = json.loads(demoai(setup["ws"], "jobs", "list", "--json").stdout)
    assert not [j for j in (jobs if isinstance(jobs, list) else jobs["jobs"])
                if "missing" in json.dumps(j)]  # fmt: skip
