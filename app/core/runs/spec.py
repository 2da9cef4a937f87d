"""The pipeline spec: typed, versioned, written as YAML or JSON that diffs well.

A spec names its inputs (a dataset with a version policy, a library model) and an
ordered list of steps; a step refers to inputs and to earlier steps by name, so the
steps form a graph whose order is the list's. A file is untrusted input: it is read
with a size bound, parsed without object construction (``yaml.safe_load``), and every
field is checked with a message that says where.

Example (YAML)::

    format: 1
    name: colours
    trigger: {dataset: data}          # run under `demoai pipeline watch` on a new version
    inputs:
      data: {dataset: echo, policy: latest}     # or policy: pinned, version: HASH
      base: {model: tiny}
    steps:
      - {id: prep, kind: recipe, data: data, recipe: [{name: normalize}]}
      - {id: train, kind: train, base: base, data: prep, config: {preset: quick_test}}
      - id: eval
        kind: eval
        model: train
        data: prep
        baseline: base
        config: {input_column: prompt, reference_column: completion, metrics: [f1]}
        gate: {f1: {max_drop_points: 100}}
      - {id: export, kind: export, model: train, quants: [Q8_0]}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.errors import ConfigError

SPEC_FORMAT = 1
MAX_SPEC_BYTES = 1 << 20
STEP_KINDS = ("recipe", "train", "eval", "harness", "export")
#: Kinds whose output is an eval run (a gate may follow them).
EVAL_KINDS = ("eval", "harness")
POLICIES = ("latest", "pinned")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _err(where: str, what: str) -> ConfigError:
    return ConfigError(f"Pipeline spec, {where}: {what}.", "See docs/pipelines.md for the format.")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise _err(where, f"expected a name of letters, digits, '_', '-', '.', got {value!r}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise _err(where, f"expected a non-empty text, got {value!r}")
    return value


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _err(where, "expected a mapping")
    return dict(value)


def _only(data: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise _err(where, f"unknown keys {extra} (known: {', '.join(sorted(allowed))})")


@dataclass
class DatasetInput:
    """A dataset by name or id; ``latest`` (its newest version not made by a pipeline)
    or ``pinned`` to ``version``."""

    dataset: str
    policy: str = "latest"
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dataset": self.dataset, "policy": self.policy}
        if self.version:
            d["version"] = self.version
        return d


@dataclass
class ModelInput:
    """A library model by id or name."""

    model: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model}


Input = DatasetInput | ModelInput


@dataclass
class StepSpec:
    """One step. ``refs`` maps a role (data, base, model, baseline) to an input or step."""

    id: str
    kind: str
    refs: dict[str, str] = field(default_factory=dict)
    recipe: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, dict[str, float]] | None = None
    quants: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "kind": self.kind, **self.refs}
        if self.kind == "recipe":
            d["recipe"] = self.recipe
        if self.kind in ("train", "eval", "harness"):
            d["config"] = self.config
        if self.gate is not None:
            d["gate"] = self.gate
        if self.kind == "export":
            d["quants"] = self.quants
        return d


#: The roles each kind takes, and whether each must name a dataset or a model.
ROLES: dict[str, dict[str, str]] = {
    "recipe": {"data": "dataset"},
    "train": {"base": "model", "data": "dataset"},
    "eval": {"model": "model", "data": "dataset", "baseline": "model"},
    # an lm-eval task (config.task); data, when given, replaces the task's evaluated split
    "harness": {"model": "model", "data": "dataset"},
    "export": {"model": "model"},
}
REQUIRED_ROLES = {
    "recipe": {"data"},
    "train": {"base", "data"},
    "eval": {"model", "data"},
    "harness": {"model"},
}
#: What a step's output is, as an input of a later step.
PRODUCES = {
    "recipe": "dataset",
    "train": "model",
    "eval": "eval",
    "harness": "eval",
    "export": "gguf",
}


@dataclass
class PipelineSpec:
    """A whole pipeline: its name, inputs, steps and optional trigger."""

    name: str
    inputs: dict[str, Input]
    steps: list[StepSpec]
    trigger: str | None = None  # the name of a dataset input
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": SPEC_FORMAT, "name": self.name}
        if self.description:
            d["description"] = self.description
        if self.trigger:
            d["trigger"] = {"dataset": self.trigger}
        d["inputs"] = {k: v.to_dict() for k, v in self.inputs.items()}
        d["steps"] = [s.to_dict() for s in self.steps]
        return d

    def canonical(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()

    def step(self, step_id: str) -> StepSpec:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise ConfigError(f"The pipeline {self.name} has no step '{step_id}'.")

    # -- reading ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> PipelineSpec:
        """Validate a parsed spec (untrusted): every problem names its place."""
        if not isinstance(data, dict):
            raise _err("top level", "expected a mapping with name, inputs and steps")
        _only(data, {"format", "name", "description", "trigger", "inputs", "steps"}, "top level")
        fmt = data.get("format", SPEC_FORMAT)
        if not isinstance(fmt, int) or fmt < 1:
            raise _err("format", f"expected a positive integer, got {fmt!r}")
        if fmt > SPEC_FORMAT:
            raise ConfigError(
                f"This pipeline spec has format {fmt}; this DemoAI reads up to {SPEC_FORMAT}.",
                "Update DemoAI.",
            )
        name = _name(data.get("name"), "name")
        desc = data.get("description") or ""
        if not isinstance(desc, str):
            raise _err("description", "expected a text")
        inputs: dict[str, Input] = {}
        for key, raw in _obj(data.get("inputs"), "inputs").items():
            where = f"inputs.{key}"
            _name(key, where)
            spec = _obj(raw, where)
            if "dataset" in spec:
                _only(spec, {"dataset", "policy", "version"}, where)
                policy = spec.get("policy", "pinned" if spec.get("version") else "latest")
                if policy not in POLICIES:
                    raise _err(f"{where}.policy", f"expected one of {POLICIES}, got {policy!r}")
                version = spec.get("version")
                if policy == "pinned" and not version:
                    raise _err(where, "policy 'pinned' needs a version")
                if policy == "latest" and version:
                    raise _err(where, "a version is only for policy 'pinned'")
                if version is not None and not re.fullmatch(r"[0-9a-fA-F]{4,64}", str(version)):
                    raise _err(f"{where}.version", f"expected a version hash, got {version!r}")
                inputs[key] = DatasetInput(
                    _str(spec["dataset"], where), policy, str(version) if version else None
                )
            elif "model" in spec:
                _only(spec, {"model"}, where)
                inputs[key] = ModelInput(_str(spec["model"], where))
            else:
                raise _err(where, "expected 'dataset: NAME' or 'model: NAME'")
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise _err("steps", "expected a non-empty list")
        if len(raw_steps) > 64:
            raise _err("steps", "at most 64 steps")
        produced: dict[str, str] = {
            k: "dataset" if isinstance(v, DatasetInput) else "model" for k, v in inputs.items()
        }
        steps: list[StepSpec] = []
        for i, raw in enumerate(raw_steps):
            steps.append(_step(raw, i, produced))
            produced[steps[-1].id] = PRODUCES[steps[-1].kind]
        trig = data.get("trigger")
        trigger = None
        if trig is not None:
            t = _obj(trig, "trigger")
            _only(t, {"dataset"}, "trigger")
            trigger = _name(t.get("dataset"), "trigger.dataset")
            if not isinstance(inputs.get(trigger), DatasetInput):
                raise _err("trigger.dataset", f"'{trigger}' is not a dataset input")
        return cls(name, inputs, steps, trigger, desc)

    @classmethod
    def parse(cls, text: str, *, source: str = "the spec") -> PipelineSpec:
        """From YAML or JSON text (JSON is YAML); bounded, no object construction."""
        if len(text.encode("utf-8")) > MAX_SPEC_BYTES:
            raise ConfigError(f"{source} is larger than {MAX_SPEC_BYTES // 1024} KiB.")
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML/JSON: {exc}.") from None
        except RecursionError:
            raise ConfigError(f"{source} is nested too deeply.") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> PipelineSpec:
        p = Path(path)
        try:
            size = p.stat().st_size
            if size > MAX_SPEC_BYTES:
                raise ConfigError(f"{p} is larger than {MAX_SPEC_BYTES // 1024} KiB.")
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"There is no pipeline file {p}.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Cannot read the pipeline file {p}: {exc}.") from None
        return cls.parse(text, source=str(p))

    def dump(self, fmt: str = "yaml") -> str:
        """Text for a file: keys in a fixed order, one field a line (diffs well)."""
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        import yaml

        return str(
            yaml.safe_dump(
                self.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=False
            )
        )


def _step(raw: Any, i: int, produced: dict[str, str]) -> StepSpec:
    where = f"steps[{i}]"
    d = _obj(raw, where)
    kind = d.get("kind")
    if kind not in STEP_KINDS:
        raise _err(f"{where}.kind", f"expected one of {STEP_KINDS}, got {kind!r}")
    sid = _name(d.get("id"), f"{where}.id")
    where = f"step '{sid}'"
    if sid in produced:
        raise _err(where, "the id is already used by an input or an earlier step")
    roles = ROLES[kind]
    allowed = {"id", "kind", *roles}
    allowed |= {
        "recipe": {"recipe"},
        "train": {"config"},
        "eval": {"config", "gate"},
        "harness": {"config", "gate"},
    }.get(kind, {"quants"})
    _only(d, allowed, where)
    refs: dict[str, str] = {}
    for role, want in roles.items():
        if role not in d:
            if role in REQUIRED_ROLES.get(kind, set()) or (kind == "export" and role == "model"):
                raise _err(where, f"needs '{role}' (an input or an earlier step)")
            continue
        ref = _name(d[role], f"{where}.{role}")
        got = produced.get(ref)
        if got is None:
            raise _err(f"{where}.{role}", f"'{ref}' is neither an input nor an earlier step")
        if got != want:
            raise _err(f"{where}.{role}", f"'{ref}' gives a {got}, a {want} is needed")
        refs[role] = ref
    step = StepSpec(sid, kind, refs)
    if kind == "recipe":
        from app.core.data.recipes import Recipe

        recipe = d.get("recipe")
        if not isinstance(recipe, list) or not recipe:
            raise _err(f"{where}.recipe", "expected a non-empty list of {name, params}")
        try:
            parsed = Recipe.from_dict(recipe)
        except ConfigError as exc:
            raise _err(f"{where}.recipe", str(exc).rstrip(".")) from None
        step.recipe = [s.to_dict() for s in parsed.steps]
    elif kind == "train":
        step.config = _train_config(_obj(d.get("config"), f"{where}.config"), where)
    elif kind in EVAL_KINDS:
        check = _eval_config if kind == "eval" else _harness_config
        step.config = check(_obj(d.get("config"), f"{where}.config"), where)
        if d.get("gate") is not None:
            from app.core.eval.gate import load_thresholds

            gate = _obj(d.get("gate"), f"{where}.gate")
            try:
                step.gate = load_thresholds(gate)
            except (ConfigError, TypeError, ValueError) as exc:
                raise _err(f"{where}.gate", str(exc).rstrip(".")) from None
            needs_base = any(
                r.startswith("max_drop") for rules in step.gate.values() for r in rules
            )
            if needs_base and "baseline" not in refs:
                raise _err(where, "a max_drop gate rule needs 'baseline' (a model)")
    else:
        quants = d.get("quants", ["Q8_0"])
        if not isinstance(quants, list) or not quants or len(quants) > 8:
            raise _err(f"{where}.quants", "expected a list of GGUF types, e.g. [Q8_0]")
        from app.core.export.gguf import normalize_quant

        try:
            step.quants = [normalize_quant(_str(q, f"{where}.quants")) for q in quants]
        except ConfigError as exc:
            raise _err(f"{where}.quants", str(exc).rstrip(".")) from None
    return step


#: Train fields a spec may not set: the pipeline fills them from its inputs.
TRAIN_FILLED = ("base_model", "data_path", "base_model_id", "dataset_version", "data_mapping")


def _train_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    from app.core.train.config import PRESETS, TrainConfig

    out = dict(cfg)
    preset = out.get("preset")
    if preset is not None and preset not in PRESETS:
        raise _err(f"{where}.config.preset", f"expected one of {sorted(PRESETS)}")
    bad = [k for k in TRAIN_FILLED if k in out]
    if bad:
        raise _err(f"{where}.config", f"{bad} come from the step's inputs")
    # Placeholders for the fields the inputs fill, so the rest is checked now.
    fields = {"base_model": "-", "data_path": "-", **{k: v for k, v in out.items()}}
    fields.pop("preset", None)
    try:
        TrainConfig.preset(preset, **fields) if preset else TrainConfig.from_dict(fields)
    except (ConfigError, TypeError, ValueError) as exc:
        raise _err(f"{where}.config", str(exc).rstrip(".")) from None
    return out


#: Harness fields a spec may set (the rest come from the step's inputs or the submission).
#: Not ``trust_task_code``: the yes to run a task file's code is given per run
#: (``demoai pipeline run --trust-task-code``), never by a spec someone sent.
HARNESS_FIELDS = ("task", "limit", "num_fewshot", "n_ctx", "threads", "bootstrap", "seed")


def _harness_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    from app.core.eval.harness import HarnessConfig

    bad = sorted(set(cfg) - set(HARNESS_FIELDS))
    if bad:
        raise _err(f"{where}.config", f"{bad} cannot be set here (allowed: {HARNESS_FIELDS})")
    if not isinstance(cfg.get("task"), str) or not cfg["task"]:
        raise _err(f"{where}.config.task", "expected a task YAML file or an lm-eval task name")
    try:
        HarnessConfig.from_dict({"models": ["m"], **cfg})
    except (ConfigError, TypeError, ValueError) as exc:
        raise _err(f"{where}.config", str(exc).rstrip(".")) from None
    return dict(cfg)


def _eval_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    from app.core.eval.runner import EvalConfig

    if "models" in cfg or "dataset" in cfg:
        raise _err(f"{where}.config", "models and dataset come from the step's inputs")
    try:
        parsed = EvalConfig.from_dict({"models": ["m"], "dataset": "d", **cfg})
    except (ConfigError, TypeError, ValueError) as exc:
        raise _err(f"{where}.config", str(exc).rstrip(".")) from None
    out = dict(cfg)
    if "metrics" in out:
        out["metrics"] = list(parsed.metrics)
    return out
