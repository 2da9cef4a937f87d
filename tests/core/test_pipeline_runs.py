"""Pipelines (app/core/runs): the spec as untrusted input, and runs of real jobs in worker
processes: the step cache, an eval-only change, the gate, triggers, a bit-identical repeat."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from app.core.data.store import DatasetStore
from app.core.errors import ConfigError
from app.core.eval.runner import EvalStore
from app.core.jobs.store import Job, JobService, JobState
from app.core.runs.engine import (
    GATE_FAILED,
    PipelineRunner,
    due_triggers,
    key_config,
    latest_version,
    step_key,
)
from app.core.runs.spec import PipelineSpec
from app.core.runs.store import PipelineStore
from app.workers.supervisor import Supervisor
from tests.support.training import add_tiny_model_and_echo_data, one_train_thread  # noqa: F401

SPEC: dict[str, Any] = {
    "format": 1,
    "name": "echo-core",
    "trigger": {"dataset": "data"},
    "inputs": {"data": {"dataset": "echo"}, "base": {"model": "tiny"}},
    "steps": [
        {"id": "prep", "kind": "recipe", "data": "data", "recipe": [{"name": "dedupe"}]},
        {
            "id": "train",
            "kind": "train",
            "base": "base",
            "data": "prep",
            "config": {
                "preset": "quick_test",
                "max_steps": 6,
                "batch_size": 2,
                "max_seq_len": 64,
                "device": "cpu",
                "seed": 7,
            },
        },
        {
            "id": "eval",
            "kind": "eval",
            "model": "train",
            "data": "prep",
            "baseline": "base",
            "config": {
                "input_column": "prompt",
                "reference_column": "completion",
                "metrics": ["perplexity", "f1"],
                "max_tokens": 4,
                "threads": 1,
                "bootstrap": 100,
            },
            "gate": {"perplexity": {"max_drop_pct": 1000}},
        },
    ],
}


# -- the spec --------------------------------------------------------------------------------
def test_spec_round_trips_through_yaml_and_json() -> None:
    spec = PipelineSpec.from_dict(SPEC)
    for fmt in ("yaml", "json"):
        again = PipelineSpec.parse(spec.dump(fmt))
        assert again.to_dict() == spec.to_dict() and again.hash() == spec.hash()
    text = spec.dump("yaml")
    assert text.splitlines()[0] == "format: 1" and "- id: train\n" in text  # one field a line
    assert spec.steps[2].config["metrics"] == ["perplexity", "f1"]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda s: s["steps"][1].update(data="nowhere"), "'nowhere' is neither an input"),
        (lambda s: s["steps"][1].update(data="train"), "step 'train'"),  # not an earlier step
        (lambda s: s["steps"][1].update(base="data"), "gives a dataset, a model is needed"),
        (lambda s: s["steps"][0].update(recipe=[{"name": "no_such_op"}]), "step 'prep'.recipe"),
        (lambda s: s["steps"][1]["config"].update(lora_rank=-1), "step 'train'.config"),
        (lambda s: s["steps"][1]["config"].update(base_model="/x"), "come from the step's inputs"),
        (lambda s: s["steps"][2].update(gate={"f1": {"sometimes": 1}}), "step 'eval'.gate"),
        (lambda s: s["steps"][2].pop("baseline"), "needs 'baseline'"),
        (lambda s: s["steps"].append({"id": "x", "kind": "deploy"}), "steps[3].kind"),
        (lambda s: s.update(extra=1), "unknown keys ['extra']"),
        (lambda s: s["inputs"].update(data={"dataset": "echo", "policy": "pinned"}), "version"),
        (
            lambda s: s["inputs"].update(
                data={"dataset": "e", "policy": "latest", "version": "ab12"}
            ),
            "only for policy 'pinned'",
        ),
        (lambda s: s.update(trigger={"dataset": "base"}), "not a dataset input"),
        (lambda s: s.update(name="../../etc"), "name"),
        (lambda s: s.update(format=99), "format 99"),
    ],
)
def test_bad_specs_say_where(change: Any, where: str) -> None:
    data = copy.deepcopy(SPEC)
    change(data)
    with pytest.raises(ConfigError) as err:
        PipelineSpec.from_dict(data)
    assert where in str(err.value)


def test_untrusted_files_are_bounded_and_never_construct_objects(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        PipelineSpec.parse("!!python/object/apply:os.system ['true']")
    with pytest.raises(ConfigError, match="larger than"):
        PipelineSpec.parse("a: '" + "x" * (1 << 20) + "'")
    with pytest.raises(ConfigError, match="expected a mapping"):
        PipelineSpec.parse("- 1\n- 2")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(ConfigError, match="larger than"):
        PipelineSpec.load(big)


def test_saving_the_same_spec_adds_no_version(workspace: Any) -> None:
    store = PipelineStore(workspace)
    rec, new = store.save(PipelineSpec.from_dict(SPEC))
    assert new and rec.version == 1
    again, new2 = store.save(PipelineSpec.from_dict(copy.deepcopy(SPEC)))
    assert not new2 and again.version == 1
    changed = copy.deepcopy(SPEC)
    changed["steps"][2]["config"]["metrics"] = ["f1"]
    v2, new3 = store.save(PipelineSpec.from_dict(changed))
    assert new3 and v2.version == 2 and store.versions("echo-core") == [1, 2]
    assert store.get("echo-core@1").spec.to_dict() == PipelineSpec.from_dict(SPEC).to_dict()


# -- runs of real jobs -----------------------------------------------------------------------
def _wait(sup: Supervisor) -> Any:
    def wait(job: Job) -> Job:
        if job.state == JobState.QUEUED:
            sup.start(job.id)
        return sup.wait(job.id, timeout=600)

    return wait


def _jobs(ws: Any) -> list[Job]:
    return JobService(ws).list_jobs()


@pytest.fixture(scope="module")
def flow(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A workspace with the tiny model, the echo dataset and one finished run of SPEC."""
    import os

    from app.core.workspace import Workspace

    os.environ["DEMOAI_TRAIN_THREADS"] = "1"
    ws = Workspace.open(tmp_path_factory.mktemp("pipe") / "ws")
    add_tiny_model_and_echo_data(ws, tiny_llama_dir, repeats=3)
    PipelineStore(ws).save(PipelineSpec.from_dict(SPEC))
    runner = PipelineRunner(ws, _wait(Supervisor(ws)))
    first = runner.run("echo-core")
    yield {"ws": ws, "runner": runner, "first": first}
    ws.close()


def test_a_run_pins_every_input_and_step_by_content_hash(flow: Any) -> None:
    ws, run = flow["ws"], flow["first"].run
    assert flow["first"].exit_code == 0 and run.state == "succeeded"
    assert [s.state for s in run.steps] == ["succeeded"] * 3
    snap = run.snapshot
    echo = DatasetStore(ws).get("echo")
    assert snap["inputs"]["data"]["ref"].startswith(echo.id + "@")
    assert len(snap["inputs"]["base"]["hash"]) == 64
    assert snap["versions"]["packages"]["torch"] and snap["spec"]["name"] == "echo-core"
    train = snap["steps"]["train"]
    assert (
        train["config"]["seed"] == 7
        and train["inputs"]["data"] == snap["steps"]["prep"]["output"]["hash"]
    )
    assert len(train["output"]["hash"]) == 64 and train["output"]["model_id"]
    # fields at their default are not keyed: a field added later changes no stored key
    without = {k: v for k, v in train["config"].items() if k != "world_size"}
    assert train["config"]["world_size"] == 1
    assert (
        step_key("train", train["inputs"], key_config("train", train["config"])) == (train["key"])
    )
    assert key_config("train", without) == key_config("train", train["config"])
    assert key_config("train", {**without, "world_size": 2}) != key_config("train", without)
    # The recipe wrote a new version (now current) that "latest" does not take as an input.
    prep = snap["steps"]["prep"]["output"]
    assert echo.current_version == prep["hash"] and prep["rows"] == 6
    assert latest_version(ws, "echo").hash == snap["inputs"]["data"]["hash"]
    ev = snap["steps"]["eval"]["output"]
    assert ev["gate"]["passed"] and ev["metrics"]["perplexity"]["value"] > 1
    assert ev["metrics"] == EvalStore(ws).aggregates(ev["run_id"])[ev["model_id"]]


def test_rerunning_an_unchanged_spec_creates_no_jobs(flow: Any) -> None:
    ws = flow["ws"]
    flow["runner"].run("echo-core")  # whatever earlier tests changed is done now
    before = len(_jobs(ws))
    out = flow["runner"].run("echo-core")
    assert out.exit_code == 0 and len(_jobs(ws)) == before
    assert [s.state for s in out.run.steps] == ["reused"] * 3
    assert all(s.job_id is None for s in out.run.steps)


def test_changing_only_the_eval_metric_reruns_only_the_eval(flow: Any) -> None:
    ws = flow["ws"]
    flow["runner"].run("echo-core")
    changed = copy.deepcopy(SPEC)
    changed["steps"][2]["config"]["metrics"] = ["perplexity", "rougeL"]
    PipelineStore(ws).save(PipelineSpec.from_dict(changed))
    before = {j.id for j in _jobs(ws)}
    out = flow["runner"].run("echo-core")
    new = [j for j in _jobs(ws) if j.id not in before]
    assert [j.kind for j in new] == ["eval.run"]
    assert [s.state for s in out.run.steps] == ["reused", "reused", "succeeded"]
    assert set(out.run.steps[2].output["metrics"]) == {"perplexity", "rougeL"}
    PipelineStore(ws).save(PipelineSpec.from_dict(SPEC))  # back to the first spec


def test_a_failing_gate_stops_before_export(flow: Any) -> None:
    ws = flow["ws"]
    gated = copy.deepcopy(SPEC)
    gated["name"] = "echo-gated"
    gated["steps"][2]["gate"] = {"perplexity": {"max": 1.0}}  # no model has perplexity <= 1
    gated["steps"].append({"id": "export", "kind": "export", "model": "train", "quants": ["Q8_0"]})
    PipelineStore(ws).save(PipelineSpec.from_dict(gated))
    flow["runner"].run("echo-core")
    before = {j.id for j in _jobs(ws)}
    out = flow["runner"].run("echo-gated")
    assert out.exit_code == GATE_FAILED and out.run.state == "gate_failed"
    assert [s.state for s in out.run.steps] == ["reused", "reused", "gate_failed", "skipped"]
    assert not [j for j in _jobs(ws) if j.id not in before]  # no export job (nor any other)
    check = out.gate["checks"][0]
    assert not out.gate["passed"] and check["metric"] == "perplexity" and check["value"] > 1
    assert "FAIL" in out.gate["text"]


def test_a_removed_output_is_computed_again_and_what_follows_is_reused(flow: Any) -> None:
    from app.core.models.registry import ModelRegistry

    ws = flow["ws"]
    before_run = flow["runner"].run("echo-core")
    trained = before_run.run.snapshot["steps"]["train"]["output"]
    ModelRegistry(ws).remove(trained["model_id"], force=True)
    before = {j.id for j in _jobs(ws)}
    out = flow["runner"].run("echo-core")
    assert [j.kind for j in _jobs(ws) if j.id not in before] == ["train.lora"]
    assert [s.state for s in out.run.steps] == ["reused", "succeeded", "reused"]
    again = out.run.snapshot["steps"]["train"]["output"]
    # The same weights again, so the eval (keyed by their hash) is still valid.
    assert again["model_id"] != trained["model_id"] and again["hash"] == trained["hash"]


def test_a_new_dataset_version_makes_the_trigger_due(flow: Any) -> None:
    ws = flow["ws"]
    flow["runner"].run("echo-core")
    assert "echo-core" not in dict(due_triggers(ws))
    echo = DatasetStore(ws).get("echo")
    first_input = flow["first"].run.snapshot["inputs"]["data"]["hash"]
    rows = DatasetStore(ws).read_table(f"{echo.id}@{first_input}").to_pylist()
    rows.append({"prompt": "Say moon:", "completion": " moon moon"})
    new = DatasetStore(ws).create_version(
        "echo", pa.Table.from_pylist(rows), message="more", operation={"name": "edit"}
    )
    due = dict(due_triggers(ws))
    assert new.hash[:12] in due["echo-core"]
    assert latest_version(ws, "echo").hash == new.hash


def test_repeating_a_snapshot_gives_identical_weights_and_metrics(flow: Any) -> None:
    first = flow["first"].run
    out = flow["runner"].run("", snapshot_of=first.id, reuse=False)
    assert out.compared == {"prep": "identical", "train": "identical", "eval": "identical"}
    a, b = first.snapshot["steps"], out.run.snapshot["steps"]
    assert a["train"]["output"]["model_id"] != b["train"]["output"]["model_id"]  # a new job
    wa = Path(a["train"]["output"]["adapter"]) / "adapter_model.safetensors"
    wb = Path(b["train"]["output"]["adapter"]) / "adapter_model.safetensors"
    assert wa.read_bytes() == wb.read_bytes()
    assert a["eval"]["output"]["metrics"] == b["eval"]["output"]["metrics"]
    assert a["eval"]["output"]["run_id"] != b["eval"]["output"]["run_id"]
    assert out.run.snapshot["inputs"] == first.snapshot["inputs"]
