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


@pytest.fixture(scope="module")
def mc_run(setup: dict[str, Any]) -> dict[str, Any]:
    """`demoai eval harness` on the multiple-choice task with the tiny Llama, uninterrupted."""
    return run_json(
        setup["ws"], "eval", "harness", "--model", setup["tiny"],
        "--task", str(setup["tasks"] / "mc.yaml"), "--trust-task-code", "--threads", "2",
        "--n-ctx", "512",
    )  # fmt: skip


@needs_lm_eval
def test_multiple_choice_task_equals_eval_run(
    setup: dict[str, Any], mc_run: dict[str, Any]
) -> None:
    ws, tiny, h = setup["ws"], setup["tiny"], mc_run
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
    # Usable in a gate: a threshold just above its accuracy fails (exit 4), at it passes.
    gate = setup["tasks"].parent / "gate.json"
    gate.write_text(json.dumps({"mc_accuracy": {"min": acc + 0.01}}))
    assert demoai(ws, "eval", "gate", h["run_id"], "--gate", str(gate)).returncode == 4
    gate.write_text(json.dumps({"mc_accuracy": {"min": acc}}))
    assert demoai(ws, "eval", "gate", h["run_id"], "--gate", str(gate)).returncode == 0
    out = setup["tasks"].parent / "run.json"
    r = demoai(ws, "eval", "export", h["run_id"], "--out", str(out))
    assert r.returncode == 0, r.stderr
    exported = json.loads(out.read_text())
    assert len(exported["samples"]) == len(MC)
    assert exported["run"]["config"]["task_name"] == "demoai_mc_job"


@needs_lm_eval
def test_dataset_option_reads_a_library_version_instead_of_the_files(
    setup: dict[str, Any], mc_run: dict[str, Any]
) -> None:
    """--dataset D: the same task on the library's copy of its data; the same numbers."""
    ws, tiny = setup["ws"], setup["tiny"]
    h = run_json(
        ws, "eval", "harness", "--model", tiny, "--task", str(setup["tasks"] / "mc.yaml"),
        "--trust-task-code", "--dataset", setup["mc"], "--limit", "4", "--threads", "2", "--n-ctx", "512",
    )  # fmt: skip
    theirs = samples(ws, h["run_id"])
    first = {s.idx: s for s in samples(ws, mc_run["run_id"])}
    assert [s.idx for s in theirs] == [0, 1, 2, 3]
    for s in theirs:
        assert s.extra["choice_logprobs"] == pytest.approx(first[s.idx].extra["choice_logprobs"])
    from app.core.eval.runner import EvalStore
    from app.core.workspace import Workspace

    w = Workspace.open(ws)
    try:
        assert EvalStore(w).get_run(h["run_id"]).dataset_ref == setup["mc"]
        assert EvalStore(w).get_run(mc_run["run_id"]).dataset_ref.startswith("file:mc.jsonl@")
    finally:
        w.close()


@needs_lm_eval
def test_generation_task_from_the_library_equals_eval_run(setup: dict[str, Any]) -> None:
    """A task naming a Hub dataset reads the library's copy (offline, checked in the job)."""
    ws, gemma = setup["ws"], setup["gemma"]
    h = run_json(
        ws, "eval", "harness", "--model", gemma, "--task", str(setup["tasks"] / "gen.yaml"),
        "--trust-task-code", "--threads", "2", "--n-ctx", "512",
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
    tmp_path: Path, tiny_llama_dir: Path, setup: dict[str, Any]
) -> None:
    """A named lm-eval task (arc_easy, whose data is a Hub dataset) and a task file naming
    a Hub dataset: refused before any job, with the library name and the import command."""
    from app.core.models.registry import ModelRegistry
    from app.core.workspace import Workspace

    wsdir = tmp_path / "ws"
    ws = Workspace.open(wsdir)
    try:
        model = ModelRegistry(ws).import_path(tiny_llama_dir, copy=False).id
    finally:
        ws.close()
    r = demoai(wsdir, "eval", "harness", "--model", model, "--task", "arc_easy")
    assert r.returncode == 2, r.stderr
    assert "'allenai/ai2_arc/ARC-Easy:test'" in r.stderr
    assert (
        'demoai data import allenai_ai2_arc_ARC-Easy_test.jsonl --name "allenai/ai2_arc/ARC-Easy:test"'
        in r.stderr
    )
    missing = str(setup["tasks"] / "missing.yaml")
    # a task file is code: without the user's yes, nothing starts
    r = demoai(wsdir, "eval", "harness", "--model", model, "--task", missing)
    assert r.returncode == 2 and "runs code in the job" in r.stderr, r.stderr
    assert "--trust-task-code" in r.stderr
    r = demoai(wsdir, "eval", "harness", "--model", model, "--task", missing, "--trust-task-code")
    assert r.returncode == 2, r.stderr
    assert '--name "nobody/absent-bench/main:test"' in r.stderr
    r = demoai(wsdir, "eval", "harness", "--model", model, "--task", "mmlu")
    assert r.returncode == 2 and "'mmlu' is a group or a tag" in r.stderr
    r = demoai(wsdir, "eval", "harness", "--model", model, "--task", "no_such_task_anywhere")
    assert r.returncode == 2 and "no task named 'no_such_task_anywhere'" in r.stderr
    ws = Workspace.open(wsdir)
    try:
        assert ws.db.query("SELECT id FROM jobs") == []
        assert ws.db.query("SELECT id FROM eval_runs") == []
    finally:
        ws.close()


@needs_lm_eval
def test_named_task_reads_its_data_from_the_library(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """`--task arc_easy`: lm-eval's own YAML (prompt, choices, metrics), the data from the
    library dataset 'allenai/ai2_arc/ARC-Easy:test' (ARC's columns), first 3 documents."""
    from app.core.data.store import DatasetStore
    from app.core.models.registry import ModelRegistry
    from app.core.workspace import Workspace

    rows = [
        ("Which is a liquid at room temperature?", ["water", "iron", "salt"], "A"),
        ("Which animal can fly?", ["dog", "eagle", "cow", "fish"], "B"),
        ("What do plants need for photosynthesis?", ["sand", "plastic", "light"], "C"),
        ("Which is a planet?", ["Mars", "Moon"], "A"),
    ]
    wsdir = tmp_path / "ws"
    ws = Workspace.open(wsdir)
    try:
        model = ModelRegistry(ws).import_path(tiny_llama_dir, copy=False).id
        table = pa.table(
            {
                "id": [f"q{i}" for i in range(len(rows))],
                "question": [q for q, _, _ in rows],
                "choices": [{"text": c, "label": list("ABCD"[: len(c)])} for _, c, _ in rows],
                "answerKey": [a for _, _, a in rows],
            }
        )
        ver = DatasetStore(ws).create_dataset("allenai/ai2_arc/ARC-Easy:test", table)
    finally:
        ws.close()
    h = run_json(
        wsdir, "eval", "harness", "--model", model, "--task", "arc_easy", "--limit", "3",
        "--threads", "2", "--n-ctx", "512",
    )  # fmt: skip
    agg = h["aggregates"][model]
    assert set(agg) == {"mc_accuracy", "lm_eval:acc_norm"}
    assert agg["mc_accuracy"]["n"] == agg["lm_eval:acc_norm"]["n"] == 3
    assert agg["mc_accuracy"]["value"] == pytest.approx(h["harness"]["results"]["acc,none"])
    assert agg["lm_eval:acc_norm"]["value"] == pytest.approx(
        h["harness"]["results"]["acc_norm,none"]
    )
    got = samples(wsdir, h["run_id"])
    assert [s.input for s in got] == [f"Question: {q}\nAnswer:" for q, _, _ in rows[:3]]
    for s, (_, choices, key) in zip(got, rows, strict=False):
        assert s.reference == choices["ABCD".index(key)]
        best = max(range(len(choices)), key=lambda i: s.extra["choice_logprobs"][i])
        assert s.scores["mc_accuracy"] == float(best == "ABCD".index(key))
    from app.core.eval.runner import EvalStore

    w = Workspace.open(wsdir)
    try:
        assert EvalStore(w).get_run(h["run_id"]).dataset_ref == f"{ver.dataset_id}@{ver.hash}"
    finally:
        w.close()


@needs_lm_eval
def test_cancelled_run_resumes_without_resending_answered_requests(
    setup: dict[str, Any], mc_run: dict[str, Any], tmp_path: Path, tiny_llama_dir: Path
) -> None:
    """Cancel after the first chunks of requests; the resumed job sends only the others, and
    the result is the uninterrupted one's."""
    import sqlite3
    import time

    from app.core.eval.harness import HarnessConfig, submit_harness
    from app.core.eval.runner import EvalStore
    from app.core.jobs.store import JobService, JobState
    from app.core.models.registry import ModelRegistry
    from app.core.workspace import Workspace
    from app.workers.supervisor import Supervisor

    many = MC * 6
    data = tmp_path / "mc.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in many)
    )
    task = tmp_path / "mc.yaml"
    task.write_text(MC_YAML.replace("demoai_mc_job", "demoai_mc_resume"))
    total = sum(len(c) for _, c, _ in many)
    ws = Workspace.open(tmp_path / "ws")
    try:
        model = ModelRegistry(ws).import_path(tiny_llama_dir, copy=False).id
        cfg = HarnessConfig.from_dict(
            {
                "models": [model],
                "task": str(task),
                "threads": 2,
                "n_ctx": 512,
                "trust_task_code": True,
            }
        )
        job = submit_harness(ws, cfg)
        sup, jobs = Supervisor(ws), JobService(ws)
        sup.start(job.id)
        cache = job.run_dir / "requests.sqlite"
        end = time.monotonic() + 300

        def answered() -> int:
            if not cache.exists():
                return 0
            with sqlite3.connect(cache) as c:
                try:
                    return int(c.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
                except sqlite3.OperationalError:
                    return 0

        while answered() < 16:
            assert time.monotonic() < end, jobs.log_tail(job.id)
            assert jobs.get(job.id).state in (JobState.QUEUED, JobState.RUNNING)
            sup.pump()
            time.sleep(0.05)
        sup.cancel(job.id)
        stopped = sup.wait(job.id, timeout=120)
        assert stopped.state == JobState.CANCELLED, jobs.log_tail(job.id)
        first = answered()
        assert 16 <= first < total
        assert EvalStore(ws).get_run(job.id).state == "interrupted"
        events = (job.run_dir / "events.jsonl").read_text()
        assert "loglikelihood: 8/" in events  # progress in requests
        jobs.resume(job.id)
        sup.start(job.id)
        final = sup.wait(job.id, timeout=600)
        assert final.state == JobState.SUCCEEDED, jobs.log_tail(job.id)
        run = EvalStore(ws).get_run(job.id)
        requests = (run.summary or {})["harness"]["requests"]
        assert requests["cached"] >= first
        assert requests["cached"] + requests["sent"] == total
        assert [s.idx for s in EvalStore(ws).samples(job.id)] == list(range(len(many)))
        acc = EvalStore(ws).aggregates(job.id)[model]["mc_accuracy"]["value"]
        per_doc = {s.input: s.scores["mc_accuracy"] for s in samples(setup["ws"], mc_run["run_id"])}
        assert acc == pytest.approx(sum(per_doc[q] for q, _, _ in many) / len(many))
    finally:
        ws.close()
