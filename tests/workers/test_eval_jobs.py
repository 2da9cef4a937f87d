"""eval.run in real worker processes: run, kill -9 + resume, bad input, the CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from app.core.data.store import DatasetStore
from app.core.errors import ConfigError
from app.core.eval.runner import EvalConfig, EvalStore, submit_eval
from app.core.jobs.store import JobService, JobState
from app.core.models.registry import ModelRegistry
from app.workers.supervisor import Supervisor
from tests.support.cli import demoai

WORDS = ("apple", "bridge", "candle", "desert", "engine", "feather", "guitar", "harvest")


def _dataset(ws: Any, n: int = 8, *, with_reference: bool = True) -> str:
    q = [f"What is the code of {WORDS[i % len(WORDS)]}?" for i in range(n)]
    cols: dict[str, list[str]] = {"question": q}
    if with_reference:
        cols["answer"] = [f"code {i}" for i in range(n)]
    ver = DatasetStore(ws).create_dataset("qa", pa.table(cols))
    return f"{ver.dataset_id}@{ver.hash}"


def _model(ws: Any, path: Path) -> str:
    return ModelRegistry(ws).import_path(path, copy=False).id


def _cfg(model: str, dataset: str, **over: Any) -> EvalConfig:
    values: dict[str, Any] = {
        "models": [model],
        "dataset": dataset,
        "input_column": "question",
        "reference_column": "answer",
        "metrics": ["em", "f1", "rougeL", "latency_ms", "perplexity"],
        "max_tokens": 8,
        "threads": 1,
        "bootstrap": 200,
        **over,
    }
    return EvalConfig.from_dict(values)


def test_eval_run_in_a_worker(workspace: Any, tiny_llama_dir: Path) -> None:
    model = _model(workspace, tiny_llama_dir)
    job = submit_eval(workspace, _cfg(model, _dataset(workspace)))
    sup = Supervisor(workspace)
    sup.start(job.id)
    done = sup.wait(job.id, timeout=180)
    assert done.state == JobState.SUCCEEDED, JobService(workspace).log_tail(job.id)
    store = EvalStore(workspace)
    run = store.get_run(job.id)
    assert run.state == "succeeded" and run.summary
    samples = store.samples(job.id)
    assert [s.idx for s in samples] == list(range(8))
    assert all(s.prediction is not None and s.latency_ms and s.latency_ms > 0 for s in samples)
    agg = store.aggregates(job.id)[model]
    assert agg["perplexity"]["value"] > 1 and agg["f1"]["n"] == 8
    assert agg["latency_ms"]["ci_low"] <= agg["latency_ms"]["value"] <= agg["latency_ms"]["ci_high"]
    worst = store.worst_cases(job.id, "perplexity", n=3)
    assert len(worst) == 3 and worst[0].scores["perplexity"] >= worst[-1].scores["perplexity"]
    rows = store.compare([job.id])
    assert {r["metric"] for r in rows} == set(run.metrics)
    # What a person reads names the model, not its id (issue 14: "loading tiny-hf-lora-63c4c269").
    events = (job.run_dir / "events.jsonl").read_text()
    name = ModelRegistry(workspace).get(model).name
    assert f"loading {name}" in events and f"loading {model}" not in events


def test_killed_run_resumes_without_redoing_samples(workspace: Any, tiny_llama_dir: Path) -> None:
    model = _model(workspace, tiny_llama_dir)
    cfg = _cfg(model, _dataset(workspace, 40), metrics=["em", "f1"], max_tokens=24)
    job = submit_eval(workspace, cfg)
    sup = Supervisor(workspace)
    jobs = JobService(workspace)
    store = EvalStore(workspace)
    sup.start(job.id)
    end = time.monotonic() + 120
    while len(store.done_indices(job.id, model)) < 3:
        assert time.monotonic() < end, jobs.log_tail(job.id)
        sup.pump()
        time.sleep(0.01)
    pid = jobs.get(job.id).pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    dead = sup.wait(job.id, timeout=60)
    assert dead.state in (JobState.FAILED, JobState.INTERRUPTED)
    before = {s.idx: s for s in store.samples(job.id)}
    assert 3 <= len(before) < 40
    jobs.resume(job.id)
    sup.start(job.id)
    final = sup.wait(job.id, timeout=180)
    assert final.state == JobState.SUCCEEDED, jobs.log_tail(job.id)
    after = store.samples(job.id)
    assert [s.idx for s in after] == list(range(40))
    created = {
        r["idx"]: r["created_at"]
        for r in workspace.db.query(
            "SELECT idx, created_at FROM eval_samples WHERE run_id = ?", (job.id,)
        )
    }
    first = workspace.db.query("SELECT MIN(created_at) AS t FROM eval_samples")[0]["t"]
    assert all(created[i] < created[max(before) + 1] for i in before)
    assert first == min(created.values())
    assert "already stored" in jobs.log_tail(job.id, 200)


def test_bad_input_fails_before_the_job(workspace: Any, tiny_llama_dir: Path) -> None:
    model = _model(workspace, tiny_llama_dir)
    ds = _dataset(workspace, 3, with_reference=False)
    n_jobs = len(JobService(workspace).list_jobs())
    with pytest.raises(ConfigError, match=r"no reference column 'answer'.*columns are: question"):
        submit_eval(workspace, _cfg(model, ds))
    with pytest.raises(ConfigError, match="Unknown metric"):
        _cfg(model, ds, metrics=["bogus"])
    assert len(JobService(workspace).list_jobs()) == n_jobs


def test_model_that_fails_to_load_keeps_partial_results(
    workspace: Any, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    good = _model(workspace, tiny_llama_dir)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    job = submit_eval(
        workspace, _cfg(good, _dataset(workspace, 3), models=[good, str(broken)], metrics=["em"])
    )
    sup = Supervisor(workspace)
    sup.start(job.id)
    done = sup.wait(job.id, timeout=120)
    assert done.state == JobState.FAILED
    assert "Could not load 1 model" in (done.error or "") and "broken.gguf" in (done.error or "")
    store = EvalStore(workspace)
    assert len(store.samples(job.id, good)) == 3
    assert store.get_run(job.id).state == "failed"


_demoai = partial(demoai, timeout=180)


def test_cli_run_list_show_export_gate(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from app.core.workspace import Workspace

    wsdir = tmp_path / "ws"
    ws = Workspace.open(wsdir)
    try:
        model = _model(ws, tiny_llama_dir)
        ds = _dataset(ws, 4)
    finally:
        ws.close()
    base = [
        "eval",
        "run",
        "--model",
        model,
        "--dataset",
        ds,
        "--input",
        "question",
        "--reference",
        "answer",
        "--metric",
        "em",
        "--metric",
        "f1",
        "--max-tokens",
        "6",
        "--threads",
        "1",
    ]
    r = _demoai(wsdir, *base, "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)["run_id"]
    bad = _demoai(wsdir, *base[:-6], "--reference", "nope")
    assert bad.returncode == 2 and "columns are: question, answer" in bad.stderr
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps({"f1": {"max_drop": 0.0}, "em": {"min": 0.0}}))
    ok = _demoai(wsdir, *base, "--gate", str(gate), "--baseline", first)
    assert ok.returncode == 0, ok.stderr
    assert "gate: PASS" in ok.stdout
    gate.write_text(json.dumps({"f1": {"min": 2.0}}))
    fail = _demoai(wsdir, "eval", "gate", first, "--gate", str(gate))
    assert fail.returncode == 4 and "FAIL" in fail.stdout
    ls = _demoai(wsdir, "eval", "list", "--json")
    assert ls.returncode == 0 and len(json.loads(ls.stdout)) == 2
    show = _demoai(wsdir, "eval", "show", first, "--worst", "f1", "--json")
    data = json.loads(show.stdout)
    assert data["run"]["state"] == "succeeded" and set(data["aggregates"][model]) == {
        "exact_match",
        "f1",
    }
    text = _demoai(wsdir, "eval", "show", first[:-1])
    assert text.returncode == 0 and "95% CI" in text.stdout
    out = tmp_path / "res.csv"
    ex = _demoai(wsdir, "eval", "export", first, "--out", str(out))
    assert ex.returncode == 0 and out.read_text().startswith("model_id,idx,input")
    cmp_ = _demoai(wsdir, "eval", "compare", first, first, "--json")
    assert cmp_.returncode == 0 and len(json.loads(cmp_.stdout)) == 4
