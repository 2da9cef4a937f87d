"""Running a pipeline: a chain of ordinary jobs with pinned inputs and a step cache.

Each step gets a **key**: the SHA-256 of its kind, the content hashes of its resolved
inputs (dataset version hashes, model weight hashes, a trained adapter's weight hash)
and its config. A key with a stored output is reused without a job; a key whose job
was submitted before and did not finish (the run was killed, the job failed or was
interrupted) gets that same job back — resumed from its checkpoint for resumable kinds
(``train.lora``, ``eval.run``) — so a re-run continues at the first unfinished step.

The core never starts processes: the caller passes ``wait`` (start a queued job and
wait until it ends), which the CLI builds on the same ``Supervisor`` as every command.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError, DemoAIError, NotFoundError
from app.core.jobs.store import ACTIVE_STATES, Job, JobService, JobState
from app.core.runs.spec import EVAL_KINDS, DatasetInput, PipelineSpec, StepSpec
from app.core.runs.store import PipelineRecord, PipelineStore, RunRecord

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

KEY_FORMAT = 1
GATE_FAILED = 4
JOB_KINDS = {
    "recipe": "data.apply",
    "train": "train.lora",
    "eval": "eval.run",
    "harness": "eval.harness",
    "export": "export.gguf",
}
#: TrainConfig fields that name where things are, not what is trained: not in the key.
_TRAIN_NOT_KEYED = ("base_model", "data_path", "base_model_id", "dataset_version", "name")

Wait = Callable[[Job], Job]
Say = Callable[[str], None]


class StepFailed(DemoAIError):
    """A step's job did not succeed."""

    exit_code = 1


@dataclass
class RunOutcome:
    run: RunRecord
    exit_code: int
    gate: dict[str, Any] | None = None
    compared: dict[str, str] = field(default_factory=dict)  # step -> identical/differs


def step_key(kind: str, inputs: dict[str, Any], config: dict[str, Any]) -> str:
    blob = json.dumps(
        {"format": KEY_FORMAT, "kind": kind, "inputs": inputs, "config": config},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def key_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """What of a step's config goes into its key.

    A train step's fields at their default are left out, so a field added to TrainConfig
    later (as ``world_size`` was) does not change every stored key and retrain everything.
    """
    if kind != "train":
        return config
    from app.core.train.config import TrainConfig

    defaults = TrainConfig(base_model="-", data_path="-").to_dict()
    return {k: v for k, v in config.items() if k not in defaults or v != defaults[k]}


def _sha256(path: Path) -> str:
    from app.core.store.files import sha256_file

    return sha256_file(path)


# -- inputs ---------------------------------------------------------------------------------
def latest_version(ws: Workspace, dataset: str) -> Any:
    """The newest version of ``dataset`` not written by a pipeline's recipe step."""
    from app.core.data.store import DatasetStore

    store = DatasetStore(ws)
    ds = store.get(dataset)
    made = PipelineStore(ws).made_versions(ds.id)
    for v in reversed(store.versions(ds.id)):
        if v.hash not in made:
            return v
    raise NotFoundError(f"Dataset '{ds.name}' has no version that a pipeline did not write.")


def resolve_inputs(ws: Workspace, spec: PipelineSpec) -> dict[str, dict[str, Any]]:
    """Each input pinned: a dataset to ``ID@HASH``, a model to its id and weight hash."""
    from app.core.data.store import DatasetStore
    from app.core.models.registry import ModelRegistry

    out: dict[str, dict[str, Any]] = {}
    for name, inp in spec.inputs.items():
        if isinstance(inp, DatasetInput):
            if inp.policy == "pinned":
                v = DatasetStore(ws).version(inp.dataset, inp.version)
            else:
                v = latest_version(ws, inp.dataset)
            out[name] = {
                "type": "dataset",
                "dataset": inp.dataset,
                "policy": inp.policy,
                "ref": f"{v.dataset_id}@{v.hash}",
                "hash": v.hash,
                "rows": v.rows,
            }
        else:
            rec = ModelRegistry(ws).get(inp.model)
            out[name] = {
                "type": "model",
                "model": inp.model,
                "model_id": rec.id,
                "format": rec.format,
                "hash": rec.sha256,
            }
    return out


def package_pins() -> dict[str, Any]:
    from app.core.system.versions import versions

    v = versions()
    return {"demoai": v["demoai"], "python": v["python"], "packages": v["packages"]}


# -- the run --------------------------------------------------------------------------------
class PipelineRunner:
    def __init__(
        self, ws: Workspace, wait: Wait, say: Say | None = None, *, trust_task_code: bool = False
    ) -> None:
        self.ws = ws
        #: The user's yes (``--trust-task-code``) to run harness steps' task files: given
        #: per run, never by a spec (an imported spec must not approve code for the user).
        self.trust_task_code = trust_task_code
        self.wait = wait
        self.say = say or (lambda _t: None)
        self.store = PipelineStore(ws)
        self.jobs = JobService(ws)

    def run(
        self,
        pipeline: str,
        *,
        reason: str = "manual",
        snapshot_of: str | None = None,
        reuse: bool = True,
    ) -> RunOutcome:
        """Run the newest version of ``pipeline`` (or repeat run ``snapshot_of`` exactly:
        its spec version and its pinned inputs). ``reuse=False`` computes every step."""
        original: RunRecord | None = None
        if snapshot_of is not None:
            original = self.store.get_run(snapshot_of)
            rec = self.store.get(original.pipeline_id, original.version)
            inputs = original.snapshot["inputs"]
            self._check_pins(inputs)
        else:
            rec = self.store.get(pipeline)
            inputs = resolve_inputs(self.ws, rec.spec)
        snapshot: dict[str, Any] = {
            "format": 1,
            "pipeline": rec.name,
            "version": rec.version,
            "spec_hash": rec.spec.hash(),
            "spec": rec.spec.to_dict(),
            "inputs": inputs,
            "steps": {},
            "versions": package_pins(),
        }
        if original is not None:
            snapshot["repeat_of"] = original.id
        run_id = self.store.create_run(rec, reason, snapshot)
        self.say(f"pipeline {rec.name} v{rec.version}: run {run_id}")
        values: dict[str, dict[str, Any]] = dict(inputs)
        gate: dict[str, Any] | None = None
        try:
            for idx, step in enumerate(rec.spec.steps):
                res = self._step(rec, run_id, idx, step, values, snapshot, reuse)
                values[step.id] = res
                if step.kind in EVAL_KINDS and res.get("gate") is not None:
                    gate = res["gate"]
                    if not gate["passed"]:
                        for later in rec.spec.steps[idx + 1 :]:
                            self.store.set_step(
                                run_id,
                                later.id,
                                idx=rec.spec.steps.index(later),
                                kind=later.kind,
                                key="",
                                state="skipped",
                                detail="the gate failed",
                            )
                        self.store.finish_run(run_id, "gate_failed", "the eval gate failed")
                        return RunOutcome(self.store.get_run(run_id), GATE_FAILED, gate)
        except BaseException as exc:
            msg = str(exc) if isinstance(exc, DemoAIError) else f"{type(exc).__name__}: {exc}"
            self.store.finish_run(run_id, "failed", msg)
            raise
        self.store.finish_run(run_id, "succeeded")
        outcome = RunOutcome(self.store.get_run(run_id), 0, gate)
        if original is not None:
            outcome.compared = compare_outputs(original, outcome.run)
        return outcome

    def _check_pins(self, inputs: dict[str, Any]) -> None:
        from app.core.data.store import DatasetStore
        from app.core.models.registry import ModelRegistry

        for name, pin in inputs.items():
            if pin["type"] == "dataset":
                DatasetStore(self.ws).resolve(pin["ref"])
            elif ModelRegistry(self.ws).get(pin["model_id"]).sha256 != pin["hash"]:
                raise ConfigError(f"The model of input '{name}' changed since the run.")

    # -- one step ---------------------------------------------------------------------------
    def _step(
        self,
        rec: PipelineRecord,
        run_id: str,
        idx: int,
        step: StepSpec,
        values: dict[str, dict[str, Any]],
        snapshot: dict[str, Any],
        reuse: bool,
    ) -> dict[str, Any]:
        refs = {role: values[ref] for role, ref in step.refs.items()}
        prepare = getattr(self, f"_prepare_{step.kind}")
        keyed_inputs, keyed_config, submit = prepare(rec, step, refs)
        key = step_key(step.kind, keyed_inputs, key_config(step.kind, keyed_config))
        snapshot["steps"][step.id] = {
            "kind": step.kind,
            "key": key,
            "inputs": keyed_inputs,
            "config": keyed_config,
        }
        self.store.update_snapshot(run_id, snapshot)
        base: dict[str, Any] = {"idx": idx, "kind": step.kind, "key": key}
        cached = self.store.cached_output(key) if reuse else None
        reused = cached is not None and self._still_there(step.kind, cached)
        job_id: str | None = None
        detail = "reused"
        if cached is not None and reused:
            self.say(f"  {step.id}: reused ({key[:12]})")
            out = cached
        else:
            # A stored output that is gone (model or version deleted) is computed again.
            job, detail = self._job_for(key, submit, reuse and cached is None)
            job_id = job.id
            self.say(f"  {step.id}: {detail} (job {job.id})")
            self.store.set_step(
                run_id, step.id, state="running", job_id=job.id, detail=detail, **base
            )
            if job.state in ACTIVE_STATES:
                job = self.wait(job)
            if job.state != JobState.SUCCEEDED:
                why = job.error or str(job.state)
                self.store.set_step(
                    run_id, step.id, state="failed", job_id=job.id, detail=why, **base
                )
                raise StepFailed(
                    f"Step '{step.id}' ({JOB_KINDS[step.kind]}) {job.state}: {why}",
                    f"Fix the cause, then `demoai pipeline run {rec.name}` resumes here.",
                )
            out = getattr(self, f"_output_{step.kind}")(job, refs)
            self.store.store_output(key, step.kind, job.id, out)
        state = "reused" if reused else "succeeded"
        result = {"type": _TYPES[step.kind], **out}
        shown = out
        if step.kind in EVAL_KINDS and step.gate is not None:
            result["gate"] = self._gate(step, out)
            shown = {**out, "gate": result["gate"]}
            if not result["gate"]["passed"]:
                state, detail = "gate_failed", "the gate failed"
                self.say(result["gate"]["text"])
        snapshot["steps"][step.id]["output"] = shown
        self.store.update_snapshot(run_id, snapshot)
        self.store.set_step(
            run_id, step.id, state=state, job_id=job_id, output=shown, detail=detail, **base
        )
        return result

    def _job_for(self, key: str, submit: Callable[[], Job], reuse: bool) -> tuple[Job, str]:
        """The job of this key: an earlier unfinished one (resumed) or a new one."""
        job_id = self.store.step_job(key) if reuse else None
        if job_id is not None:
            try:
                job = self.jobs.get(job_id)
            except NotFoundError:
                job = None
            if job is not None:
                if job.state in ACTIVE_STATES:
                    return job, "continuing its job"
                if job.state == JobState.SUCCEEDED:
                    return job, "its job had finished"
                if job.resumable:
                    job = self.jobs.resume(job.id)
                    return job, f"resumed (attempt {job.attempt})"
        job = submit()
        self.store.set_step_job(key, job.id)
        return job, "started"

    def _still_there(self, kind: str, out: dict[str, Any]) -> bool:
        from app.core.data.store import DatasetStore
        from app.core.eval.runner import EvalStore
        from app.core.models.registry import ModelRegistry

        try:
            if kind == "recipe":
                DatasetStore(self.ws).resolve(out["ref"])
            elif kind == "train":
                ModelRegistry(self.ws).get(out["model_id"])
            elif kind in EVAL_KINDS:
                EvalStore(self.ws).get_run(out["run_id"])
            else:
                for o in out["outputs"]:
                    if not Path(o["path"]).exists():
                        return False
        except (DemoAIError, KeyError):
            return False
        return True

    # -- per kind: (keyed inputs, keyed config, submit) and the output of a finished job ------
    def _prepare_recipe(
        self, rec: PipelineRecord, step: StepSpec, refs: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any], Callable[[], Job]]:
        data = refs["data"]
        params = {"dataset": data["ref"], "steps": step.recipe}

        def submit() -> Job:
            return self.jobs.submit("data.apply", params, title=f"{rec.name}: {step.id}")

        return {"data": data["hash"]}, {"recipe": step.recipe}, submit

    def _output_recipe(self, job: Job, refs: dict[str, Any]) -> dict[str, Any]:
        r = job.result or {}
        versions = [v for v in r.get("versions") or [] if v != refs["data"]["hash"]]
        if r.get("dataset_id") and versions:
            self.store.mark_made(r["dataset_id"], versions, job.id)
        version = r.get("version") or refs["data"]["hash"]
        dataset_id = r.get("dataset_id") or refs["data"]["ref"].partition("@")[0]
        return {"ref": f"{dataset_id}@{version}", "hash": version, "rows": r.get("rows")}

    def _prepare_train(
        self, rec: PipelineRecord, step: StepSpec, refs: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any], Callable[[], Job]]:
        from app.core.train.config import fit_to_model, validate_against_model
        from app.core.train.library import config_from_library

        fields = dict(step.config)
        preset = fields.pop("preset", None)
        fields.setdefault("name", f"{rec.name}-{step.id}")
        cfg = config_from_library(
            self.ws, refs["base"]["model_id"], refs["data"]["ref"], preset=preset, **fields
        )
        cfg, _notes = fit_to_model(cfg, explicit=set(fields))
        problems = validate_against_model(cfg)
        if problems:
            raise ConfigError(f"Step '{step.id}' cannot train: " + "; ".join(problems) + ".")
        params = cfg.to_dict()
        keyed = {k: v for k, v in params.items() if k not in _TRAIN_NOT_KEYED}

        def submit() -> Job:
            return self.jobs.submit("train.lora", params, title=f"{rec.name}: {step.id}")

        inputs = {"base": refs["base"]["hash"], "data": refs["data"]["hash"]}
        return inputs, keyed, submit

    def _output_train(self, job: Job, refs: dict[str, Any]) -> dict[str, Any]:
        r = job.result or {}
        adapter = Path(r["adapter"])
        weights = adapter / "adapter_model.safetensors"
        return {
            "model_id": r.get("model_id"),
            "adapter": str(adapter),
            "hash": _sha256(weights),
            "manifest": r.get("manifest"),
            "train_loss": r.get("train_loss"),
        }

    def _prepare_eval(
        self, rec: PipelineRecord, step: StepSpec, refs: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any], Callable[[], Job]]:
        from app.core.eval.runner import EvalConfig, submit_eval

        models = [refs["model"]["model_id"]]
        inputs = {"model": refs["model"]["hash"], "data": refs["data"]["hash"]}
        if "baseline" in refs:
            models.append(refs["baseline"]["model_id"])
            inputs["baseline"] = refs["baseline"]["hash"]
        cfg = EvalConfig.from_dict(
            {
                "name": f"{rec.name}/{step.id}",
                **step.config,
                "models": models,
                "dataset": refs["data"]["ref"],
            }
        )
        keyed = {k: v for k, v in cfg.to_dict().items() if k not in ("models", "dataset", "name")}

        def submit() -> Job:
            return submit_eval(self.ws, cfg)

        return inputs, keyed, submit

    def _output_eval(self, job: Job, refs: dict[str, Any]) -> dict[str, Any]:
        from app.core.eval.runner import EvalStore

        agg = EvalStore(self.ws).aggregates(job.id)
        cand = refs["model"]["model_id"]
        base = refs["baseline"]["model_id"] if "baseline" in refs else None
        return {
            "run_id": job.id,
            "model_id": cand,
            "metrics": agg.get(cand, {}),
            "baseline_model_id": base,
            "baseline_metrics": agg.get(base) if base else None,
        }

    def _prepare_harness(
        self, rec: PipelineRecord, step: StepSpec, refs: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any], Callable[[], Job]]:
        from app.core.eval.harness import HarnessConfig, prepare_harness, submit_harness

        data: dict[str, Any] = {
            "name": f"{rec.name}/{step.id}",
            **step.config,
            "models": [refs["model"]["model_id"]],
            "trust_task_code": self.trust_task_code,
        }
        inputs = {"model": refs["model"]["hash"]}
        if "data" in refs:
            data["datasets"] = {"": refs["data"]["ref"]}
            inputs["data"] = refs["data"]["hash"]
        cfg = HarnessConfig.from_dict(data)
        # Found and pinned now (the task's data files and code by content hash): they key it.
        pinned = prepare_harness(self.ws, cfg)
        keyed = {
            "task": pinned.task_name,
            "data": pinned.data,
            "code": pinned.code_files,
            **{k: v for k, v in step.config.items() if k != "task"},
        }

        def submit() -> Job:
            return submit_harness(self.ws, cfg)

        return inputs, keyed, submit

    def _output_harness(self, job: Job, refs: dict[str, Any]) -> dict[str, Any]:
        return self._output_eval(job, refs)

    def _gate(self, step: StepSpec, out: dict[str, Any]) -> dict[str, Any]:
        from app.core.eval.gate import evaluate_gate

        assert step.gate is not None
        res = evaluate_gate(
            {out["model_id"]: out["metrics"]}, step.gate, out.get("baseline_metrics")
        )
        return {**res.to_dict(), "text": res.describe()}

    def _prepare_export(
        self, rec: PipelineRecord, step: StepSpec, refs: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any], Callable[[], Job]]:
        params = {"model": refs["model"]["model_id"], "quants": step.quants}

        def submit() -> Job:
            return self.jobs.submit("export.gguf", params, title=f"{rec.name}: {step.id}")

        return {"model": refs["model"]["hash"]}, {"quants": step.quants}, submit

    def _output_export(self, job: Job, refs: dict[str, Any]) -> dict[str, Any]:
        outs = []
        for o in (job.result or {}).get("outputs", []):
            outs.append(
                {
                    "quant": o["quant"],
                    "path": o["path"],
                    "model_id": o.get("model_id"),
                    "passed": o.get("passed"),
                    "hash": _sha256(Path(o["path"])),
                }
            )
        return {"outputs": outs, "hash": ",".join(o["hash"] for o in outs)}


_TYPES = {
    "recipe": "dataset",
    "train": "model",
    "eval": "eval",
    "harness": "eval",
    "export": "gguf",
}


def compare_outputs(a: RunRecord, b: RunRecord) -> dict[str, str]:
    """Per step: do the two runs' outputs have the same content (hashes, metrics)?"""
    out: dict[str, str] = {}
    sa, sb = a.snapshot.get("steps", {}), b.snapshot.get("steps", {})
    for sid in sb:
        oa, ob = (sa.get(sid) or {}).get("output"), (sb.get(sid) or {}).get("output")
        if oa is None or ob is None:
            out[sid] = "missing"
            continue
        kind = sb[sid]["kind"]
        same = (
            oa.get("metrics") == ob.get("metrics")
            if kind in EVAL_KINDS
            else oa.get("hash") == ob.get("hash")
        )
        out[sid] = "identical" if same else "differs"
    return out


# -- diff and triggers ------------------------------------------------------------------------
def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists by index)."""
    items: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k in sorted(obj):
            items.update(flatten(obj[k], f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and obj and any(isinstance(x, (dict, list)) for x in obj):
        for i, x in enumerate(obj):
            items.update(flatten(x, f"{prefix}[{i}]"))
    else:
        items[prefix] = obj
    return items


def diff(a: Any, b: Any, *, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """The paths whose values differ between two JSON-like objects."""
    fa, fb = flatten(a), flatten(b)
    rows = []
    for k in sorted(set(fa) | set(fb)):
        if any(k.startswith(p) for p in ignore):
            continue
        if fa.get(k, "<absent>") != fb.get(k, "<absent>"):
            rows.append((k, fa.get(k, "<absent>"), fb.get(k, "<absent>")))
    return rows


def due_triggers(ws: Workspace) -> list[tuple[str, str]]:
    """Pipelines whose trigger dataset has a version no run of theirs has used:
    ``[(pipeline name, why)]``."""
    store = PipelineStore(ws)
    due: list[tuple[str, str]] = []
    for rec in store.pipelines():
        if rec.spec.trigger is None:
            continue
        inp = rec.spec.inputs[rec.spec.trigger]
        assert isinstance(inp, DatasetInput)
        try:
            v = latest_version(ws, inp.dataset)
        except DemoAIError:
            continue
        seen = {
            (r.snapshot.get("inputs", {}).get(rec.spec.trigger) or {}).get("hash")
            for r in store.runs(rec.name)
        }
        if v.hash not in seen:
            due.append((rec.name, f"new version {v.hash[:12]} of dataset {inp.dataset}"))
    return due
