"""EleutherAI's lm-evaluation-harness (pinned, run as its own command line) as a client of the
model host: a local multiple-choice task and a local generation task, with data files on disk
(nothing downloaded), scored the same as ``demoai eval run`` on the same data and prompts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from app.workers.host_client import HostProcess
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
    ("Bread is made from", ["flour", "stone", "glass"], 0),
    ("The sun rises in the", ["west", "east"], 1),
]
GEN = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Italy?", "Rome"),
    ("How many legs does a spider have?", "eight"),
    ("What color is the sky on a clear day?", "blue"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("What is the opposite of up?", "down"),
]
MC_YAML = """task: demoai_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
# Exact match normalised as demoai's (SQuAD: case, punctuation, articles, spaces).
GEN_YAML = r"""task: demoai_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\nAnswer:"
doc_to_target: "{{{{answer}}}}"
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


@pytest.fixture(scope="module")
def host(gemma_gguf: Path, tiny_llama_dir: Path) -> Iterator[HostProcess]:
    h = HostProcess(threads=2, n_ctx=512)
    h.start({"gemma": (gemma_gguf, "gguf"), "tiny": (tiny_llama_dir, "hf")})
    yield h
    h.stop()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    mc, gen = folder / "mc.jsonl", folder / "gen.jsonl"
    mc.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                          for q, c, a in MC))  # fmt: skip
    gen.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GEN))
    (folder / "mc.yaml").write_text(MC_YAML.format(data=mc))
    (folder / "gen.yaml").write_text(GEN_YAML.format(data=gen))
    return folder


def lm_eval(
    host: HostProcess, tasks: Path, out: Path, task: str, model_args: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``lm-eval run`` in a child process, offline; (the task's results, its samples)."""
    args = ",".join(f"{k}={v}" for k, v in model_args.items())
    env = {
        **os.environ,
        "OPENAI_API_KEY": host.token,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(out / "hf"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "local-completions",
         "--model_args", args, "--tasks", task, "--include_path", str(tasks),
         "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    [results] = out.rglob("results_*.json")
    [samples] = out.rglob(f"samples_{task}_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    return json.loads(results.read_text())["results"][task], sorted(rows, key=lambda r: r["doc_id"])


def demoai_eval(
    tmp_path: Path, model: Path, table: pa.Table, *args: str
) -> tuple[dict[str, Any], list[Any]]:
    """``demoai eval run`` on ``table`` in a new workspace: (its aggregates, its samples)."""
    from app.core.data.store import DatasetStore
    from app.core.eval.runner import EvalStore
    from app.core.models.registry import ModelRegistry
    from app.core.workspace import Workspace

    wsdir = tmp_path / "ws"
    ws = Workspace.open(wsdir)
    try:
        model_id = ModelRegistry(ws).import_path(model, copy=False).id
        ver = DatasetStore(ws).create_dataset("bench", table)
    finally:
        ws.close()
    r = demoai(
        wsdir, "eval", "run", "--model", model_id, "--dataset", f"{ver.dataset_id}@{ver.hash}",
        "--input", "question", "--reference", "answer", "--threads", "2", "--json", *args,
        timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    ws = Workspace.open(wsdir)
    try:
        store = EvalStore(ws)
        return store.aggregates(run_id)[model_id], store.samples(run_id)
    finally:
        ws.close()


@needs_lm_eval
def test_multiple_choice_accuracy_equals_demoai(
    host: HostProcess, tasks: Path, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    """Log-likelihood requests (echo, logprobs, token-id prompts) from the harness itself."""
    results, samples = lm_eval(
        host, tasks, tmp_path / "out", "demoai_mc",
        {"model": "tiny", "base_url": host.base_url + "/completions",
         "tokenizer_backend": "huggingface", "tokenizer": tiny_llama_dir,
         "add_bos_token": True, "max_retries": 1},
    )  # fmt: skip
    table = pa.table(
        {"question": [q for q, _, _ in MC], "choices": [c for _, c, _ in MC],
         "answer": [a for _, _, a in MC]}
    )  # fmt: skip
    agg, ours = demoai_eval(
        tmp_path, tiny_llama_dir, table, "--choices", "choices", "--metric", "mc_accuracy",
        "--template", "{input}",
    )  # fmt: skip
    assert len(samples) == len(ours) == len(MC)
    # Each choice's log-likelihood is the same number both ways.
    for theirs, mine in zip(samples, ours, strict=True):
        lls = [float(r[0][0]) for r in theirs["resps"]]  # the samples file writes strings
        assert lls == pytest.approx(mine.extra["choice_logprobs"], abs=1e-3)
        assert theirs["acc"] == mine.scores["mc_accuracy"]
    assert results["acc,none"] == pytest.approx(agg["mc_accuracy"]["value"], abs=1e-9)


@needs_lm_eval
def test_generation_exact_match_equals_demoai(
    host: HostProcess, tasks: Path, tmp_path: Path, gemma_gguf: Path
) -> None:
    """Greedy generation with stop strings from the harness (string prompts, no tokenizer)."""
    results, samples = lm_eval(
        host, tasks, tmp_path / "out", "demoai_gen",
        {"model": "gemma", "base_url": host.base_url + "/completions",
         "tokenizer_backend": "none", "max_retries": 1},
    )  # fmt: skip
    table = pa.table({"question": [q for q, _ in GEN], "answer": [a for _, a in GEN]})
    agg, ours = demoai_eval(
        tmp_path, gemma_gguf, table, "--metric", "exact_match", "--max-tokens", "8",
        "--temperature", "0", "--stop", "\n", "--stop", ".",
        "--template", "Question: {input}\nAnswer:",
    )  # fmt: skip
    assert [s["filtered_resps"][0].strip() for s in samples] == [
        (s.prediction or "").strip() for s in ours
    ]
    assert [s["exact_match"] for s in samples] == [s.scores["exact_match"] for s in ours]
    assert 0 < results["exact_match,none"] == pytest.approx(agg["exact_match"]["value"], abs=1e-9)


@pytest.fixture(scope="module")
def gemma_host(gemma_gguf: Path) -> Iterator[HostProcess]:
    """The Gemma GGUF alone: the harness's remote tokenizer does not name a model."""
    h = HostProcess(threads=2, n_ctx=512)
    h.start({"gemma": (gemma_gguf, "gguf")})
    yield h
    h.stop()


@needs_lm_eval
def test_gguf_multiple_choice_with_the_hosts_tokenizer(
    gemma_host: HostProcess, tasks: Path, tmp_path: Path, gemma_gguf: Path
) -> None:
    """No HF tokenizer for a GGUF model: the harness tokenizes through the host's /tokenize.
    Each choice's log-likelihood equals llama.cpp's on the ids the harness made (context,
    then context + continuation, without BOS: the harness asks for no special tokens)."""
    import numpy as np
    from llama_cpp import Llama

    results, samples = lm_eval(
        gemma_host, tasks, tmp_path / "out", "demoai_mc",
        {"model": "gemma", "base_url": gemma_host.base_url + "/completions",
         "tokenizer_backend": "remote", "auth_token": gemma_host.token, "max_retries": 1},
    )  # fmt: skip
    llm = Llama(
        model_path=str(gemma_gguf), n_ctx=512, n_threads=2, n_threads_batch=2,
        logits_all=True, verbose=False,
    )  # fmt: skip
    try:

        def ids(text: str) -> list[int]:
            return list(llm.tokenize(text.encode(), add_bos=False, special=True))

        accs = []
        for (question, choices, gold), sample in zip(MC, samples, strict=True):
            ctx = ids(question)
            expected = []
            for choice in choices:
                whole = ids(f"{question} {choice}")
                llm.reset()
                llm.eval(whole)
                rows = np.asarray(llm.scores[: len(whole)], dtype=np.float64)
                norm = rows.max(axis=1) + np.log(
                    np.exp(rows - rows.max(axis=1, keepdims=True)).sum(axis=1)
                )
                expected.append(
                    sum(rows[i - 1, whole[i]] - norm[i - 1] for i in range(len(ctx), len(whole)))
                )
            lls = [float(r[0][0]) for r in sample["resps"]]
            assert lls == pytest.approx(expected, abs=1e-3)
            accs.append(float(int(np.argmax(expected)) == gold))
            assert sample["acc"] == accs[-1]
        assert results["acc,none"] == pytest.approx(sum(accs) / len(accs))
    finally:
        llm.close()
