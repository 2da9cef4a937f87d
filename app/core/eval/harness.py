"""lm-evaluation-harness tasks as eval runs (``demoai eval harness``, job ``eval.harness``).

A task is a harness task YAML (a file, or a task named in the pinned ``lm-eval``
package, found without importing it). Before any job exists the task's data is
resolved, offline:

* data files on disk (``dataset_path: json|csv|parquet|text`` with
  ``dataset_kwargs.data_files``): used as they are, pinned by their sha256;
* anything else (a Hub dataset): one dataset of the library per split, named
  ``<dataset_path>[/<dataset_name>]:<split>`` (or given with ``--dataset``),
  pinned to its current version. A missing one is a :class:`MissingTaskData`
  error naming the dataset to import and the command, and no job starts.

The job (``app.workers.harness_job``) starts the model host for the model, runs
the harness itself against it (the harness scores), and stores one sample per
document under the metric names of :mod:`app.core.eval.harness_metrics`. Nothing
here imports ``lm_eval``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError, NotFoundError

if TYPE_CHECKING:
    from app.core.jobs.store import Job
    from app.core.workspace.workspace import Workspace

KIND = "eval.harness"
TASK = "lm_eval"
#: ``dataset_path`` values that are the ``datasets`` library's file loaders.
FILE_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
#: A task YAML (with its includes) larger than this is refused.
MAX_YAML_BYTES = 1 << 20
_MAX_INCLUDES = 16
#: Default metrics per output type, as the harness has them.
DEFAULT_METRICS = {
    "multiple_choice": ["acc", "acc_norm"],
    "loglikelihood": ["perplexity", "acc"],
    "generate_until": ["exact_match"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
}
_SPLIT_KEYS = ("test_split", "validation_split", "training_split", "fewshot_split")


class MissingTaskData(ConfigError):
    """The task's data is not in the dataset library (nothing is downloaded at run time)."""

    def __init__(self, missing: list[tuple[str, str]], task: str, source: str) -> None:
        self.missing = missing  # (library name, split)
        names = ", ".join(f"'{n}'" for n, _ in missing)
        cmds = "; ".join(
            f'demoai data import {_file_stem(n)}.jsonl --name "{n}"' for n, _ in missing
        )
        super().__init__(
            f"The data of harness task '{task}' is not in the dataset library: import {names} "
            f"(split{'s' if len(missing) > 1 else ''} "
            f"{', '.join(s for _, s in missing)} of {source}). Nothing is downloaded at run time.",
            f"On a connected machine export each split to JSON lines (docs/eval-harness.md), "
            f"then here: {cmds}. Or name a library dataset with --dataset SPLIT=D.",
        )


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


@dataclass
class HarnessConfig:
    """What a harness run does; saved as the job's parameters and the run's config."""

    models: list[str]
    task: str = field(metadata={"help": "a task YAML file or a task name of lm-eval"})
    limit: int | None = field(default=None, metadata={"help": "the first N documents only"})
    num_fewshot: int | None = None
    datasets: dict[str, str] = field(
        default_factory=dict, metadata={"help": "split -> library dataset D[@V] (overrides)"}
    )
    n_ctx: int = 2048
    threads: int = 0
    bootstrap: int = 1000
    seed: int = 0
    name: str = ""
    #: The user's explicit approval to run a task file's code (see :func:`task_code_files`).
    trust_task_code: bool = False
    # Set on submission (pinned; the job reads only these):
    #: A task file's code, pinned by content hash (path -> sha256); checked again in the job.
    code_files: dict[str, str] = field(default_factory=dict)
    task_name: str = ""
    task_yaml: str = ""
    output_type: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    harness_metrics: list[str] = field(default_factory=list)
    dataset: str = ""  # the evaluated split's reference (the run's dataset_ref)
    metrics: list[str] = field(default_factory=list)
    kind: str = TASK

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            self.models = [self.models]
        if len(self.models) != 1:
            raise ConfigError("A harness run evaluates one model.", "Start one run per model.")
        if not self.task:
            raise ConfigError("Give a task: a task YAML file or an lm-eval task name.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("--limit must be at least 1.")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError("--num-fewshot must be 0 or more.")
        if self.n_ctx < 16:
            raise ConfigError("n_ctx must be at least 16.")
        if self.bootstrap < 0:
            raise ConfigError("bootstrap must be 0 (no CIs) or more.")
        self.kind = TASK

    @property
    def judge_model(self) -> None:  # what EvalStore.create_run reads of an EvalConfig
        return None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HarnessConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown harness settings: {', '.join(unknown)}.")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_dataset_options(values: list[str] | None) -> dict[str, str]:
    """``--dataset D`` (the evaluated split) and ``--dataset SPLIT=D`` to {split or '': D}."""
    out: dict[str, str] = {}
    for v in values or []:
        split, eq, ref = v.partition("=")
        if not eq:
            split, ref = "", v
        if not ref.strip():
            raise ConfigError(f"--dataset '{v}' names no dataset.", "Use D[@V] or SPLIT=D[@V].")
        out[split.strip()] = ref.strip()
    return out


# -- task YAML (read safely, without the harness) -----------------------------------------
class _Function(str):
    """A ``!function module.name`` reference: the harness resolves it in the job."""


def _loader(base: Path) -> type:
    import yaml

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    def ctor(loader: Any, node: Any) -> _Function:
        return _Function(str(loader.construct_scalar(node)))

    Loader.add_constructor("!function", ctor)
    return Loader


def load_task_yaml(path: Path, _depth: int = 0) -> dict[str, Any]:
    """The task's configuration with its ``include`` files merged (local keys win)."""
    import yaml

    if _depth > _MAX_INCLUDES:
        raise ConfigError(f"The task YAML {path} includes more than {_MAX_INCLUDES} levels.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read the task YAML {path}: {exc.strerror or exc}.") from exc
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"The task YAML {path} is larger than {MAX_YAML_BYTES >> 20} MiB.")
    try:
        cfg = yaml.load(raw, Loader=_loader(path.parent))  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"The task YAML {path} is not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"The task YAML {path} is not a mapping of settings.")
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        p = Path(str(inc))
        merged.update(load_task_yaml(p if p.is_absolute() else path.parent / p, _depth + 1))
    merged.pop("task_list", None)
    merged.update(cfg)
    return merged


class TaskCodeNotTrustedError(ConfigError):
    """A task file (untrusted: shared, downloaded) would run code; the user has not said yes."""


#: Files of a task folder pinned as its code at most (a task is a handful).
MAX_CODE_FILES = 200


def _yaml_files(path: Path, _depth: int = 0) -> list[Path]:
    """The task YAML and every file it includes (recursively), as the loader reads them."""
    import yaml

    out = [path.resolve()]
    if _depth > _MAX_INCLUDES:
        return out
    try:
        cfg = yaml.load(path.read_bytes()[:MAX_YAML_BYTES], Loader=_loader(path.parent))
    except (OSError, yaml.YAMLError):
        return out
    includes = cfg.get("include") if isinstance(cfg, dict) else None
    for inc in includes if isinstance(includes, list) else ([includes] if includes else []):
        p = Path(str(inc))
        out += _yaml_files(p if p.is_absolute() else path.parent / p, _depth + 1)
    return out


def task_code_files(yaml_path: Path) -> dict[str, str]:
    """The files through which a task file runs code in the job, by content hash.

    lm-eval renders a task's templates with plain (unsandboxed) Jinja and imports its
    ``!function`` helpers (Python files next to the YAML): a task file is code. Pinned
    here are the YAML, its includes and every ``*.py`` in their folders.
    """
    files: dict[str, str] = {}
    for y in _yaml_files(yaml_path):
        if not y.is_file():
            continue
        files[str(y)] = _sha256(y)
        for py in sorted(y.parent.glob("*.py")):
            if py.is_file():
                files[str(py.resolve())] = _sha256(py)
        if len(files) > MAX_CODE_FILES:
            raise ConfigError(
                f"The task folder {y.parent} holds more than {MAX_CODE_FILES} code files.",
                "Put the task's YAML and its helpers in a folder of their own.",
            )
    return files


def is_packaged_task(yaml_path: Path) -> bool:
    """A task of the installed (pinned) lm-eval, not a file someone gave us."""
    root = lm_eval_tasks_dir()
    return root is not None and yaml_path.resolve().is_relative_to(root.resolve())


def check_code(code_files: Mapping[str, str]) -> None:
    """In the job: the task's code is still what the user approved at submission."""
    for path, digest in code_files.items():
        p = Path(path)
        if not p.is_file() or _sha256(p) != digest:
            raise ConfigError(
                f"The task's file {p} changed or went away after the run was approved.",
                "Look at the change, then start a new run.",
            )


def lm_eval_tasks_dir() -> Path | None:
    """The installed ``lm_eval/tasks`` folder, found without importing lm_eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    return d if d.is_dir() else None


def find_task(name: str) -> Path:
    """The YAML of the lm-eval task ``name`` (``task: name`` in one of its files)."""
    root = lm_eval_tasks_dir()
    if root is None:
        raise ConfigError(
            "lm-eval is not installed, so task names cannot be looked up.",
            "Install it (pip install -e .[harness]) or give a task YAML file.",
        )
    quoted = rb"['\"]?" + re.escape(name.encode()) + rb"['\"]?\s*$"
    line = re.compile(rb"^task:\s*" + quoted, re.M)
    # A group, a tag (`tag: x` or a list item under it) or a task list's member.
    other = re.compile(rb"^(?:(?:group|tag):\s*|\s*-\s*)" + quoted, re.M)
    referenced = False
    for path in sorted(root.rglob("*.yaml")):
        try:
            text = path.read_bytes()
        except OSError:
            continue
        if line.search(text):
            return path
        referenced = referenced or bool(other.search(text))
    if referenced:
        raise ConfigError(
            f"'{name}' is a group or a tag of lm-eval tasks, not one task; a harness run is "
            "one task.",
            "Run its member tasks one by one (`lm-eval ls tasks` lists them).",
        )
    raise NotFoundError(
        f"lm-eval {_lm_eval_version()} has no task named '{name}'.",
        "Give the task's YAML file (--task FILE.yaml), or a task name from `lm-eval ls tasks`.",
    )


def _lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "(not installed)"


# -- data ---------------------------------------------------------------------------------
def library_name(cfg: Mapping[str, Any], split: str) -> str:
    """The dataset-library name that holds ``split`` of a task's Hub dataset."""
    base = str(cfg.get("dataset_path"))
    if cfg.get("dataset_name"):
        base += f"/{cfg['dataset_name']}"
    return f"{base}:{split}"


def needed_splits(cfg: Mapping[str, Any], num_fewshot: int) -> tuple[str, list[str]]:
    """(the evaluated split, every split the run reads)."""
    test, val = cfg.get("test_split"), cfg.get("validation_split")
    evaluated = test or val
    if not evaluated:
        raise ConfigError(
            f"The task '{cfg.get('task')}' names no test_split or validation_split to evaluate."
        )
    splits = [str(evaluated)]
    if num_fewshot > 0:
        fs = cfg.get("fewshot_split") or cfg.get("training_split") or cfg.get("validation_split")
        if fs and str(fs) not in splits:
            splits.append(str(fs))
    return str(evaluated), splits


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _local_files(cfg: Mapping[str, Any], yaml_dir: Path) -> dict[str, list[str]] | None:
    """{split: [files]} when the task reads data files with a ``datasets`` file loader."""
    if str(cfg.get("dataset_path")) not in FILE_BUILDERS:
        return None
    kwargs = cfg.get("dataset_kwargs") or {}
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    if files is None:
        raise ConfigError(
            f"The task uses the '{cfg.get('dataset_path')}' loader without data_files.",
            "Set dataset_kwargs.data_files in the task YAML.",
        )
    if isinstance(files, (str, list)):
        files = {"train": files}
    if not isinstance(files, dict):
        raise ConfigError("dataset_kwargs.data_files must be a file, a list or split: files.")
    out: dict[str, list[str]] = {}
    for split, val in files.items():
        paths = [val] if isinstance(val, str) else list(val)
        resolved = []
        for p in paths:
            q = Path(str(p)).expanduser()
            q = q if q.is_absolute() else yaml_dir / q
            resolved.append(str(q.resolve()))
        out[str(split)] = resolved
    return out


def resolve_data(
    ws: Workspace,
    cfg: Mapping[str, Any],
    yaml_dir: Path,
    overrides: Mapping[str, str],
    num_fewshot: int,
) -> tuple[dict[str, Any], str]:
    """Pin the task's data: ({"loader", "files": {split: [{path, sha256}]} or
    "versions": {split: "ID@HASH"}}, the evaluated split's reference). Raises
    :class:`MissingTaskData` naming what to import."""
    from app.core.data.store import DatasetStore

    evaluated, splits = needed_splits(cfg, num_fewshot)
    overrides = {(k or evaluated): v for k, v in overrides.items()}
    unknown = sorted(set(overrides) - set(splits))
    if unknown:
        raise ConfigError(
            f"--dataset names the split(s) {', '.join(unknown)}, which this run does not read "
            f"(it reads {', '.join(splits)}).",
        )
    local = None if overrides else _local_files(cfg, yaml_dir)
    if local is not None:
        files: dict[str, list[dict[str, str]]] = {}
        for split in splits:
            if split not in local:
                raise ConfigError(
                    f"The task reads the split '{split}' but its data_files have only "
                    f"{', '.join(local)}.",
                )
            entries = []
            for p in local[split]:
                path = Path(p)
                if not path.is_file():
                    raise ConfigError(
                        f"The task's data file {path} (split {split}) does not exist.",
                        "Fix dataset_kwargs.data_files in the task YAML (relative paths are "
                        "relative to the YAML's folder).",
                    )
                entries.append({"path": str(path), "sha256": _sha256(path)})
            files[split] = entries
        first = files[evaluated][0]
        ref = f"file:{Path(first['path']).name}@{first['sha256'][:12]}"
        return {"loader": str(cfg["dataset_path"]), "files": files}, ref
    if cfg.get("custom_dataset") is not None:
        raise ConfigError("Tasks with a custom_dataset function are not supported yet.")
    store = DatasetStore(ws)
    versions: dict[str, str] = {}
    missing: list[tuple[str, str]] = []
    for split in splits:
        ref = overrides.get(split) or library_name(cfg, split)
        try:
            ver = store.resolve(ref)
        except NotFoundError:
            if split in overrides:
                raise
            missing.append((ref, split))
            continue
        versions[split] = f"{ver.dataset_id}@{ver.hash}"
    if missing:
        source = str(cfg.get("dataset_path"))
        if cfg.get("dataset_name"):
            source += f" ({cfg['dataset_name']})"
        raise MissingTaskData(missing, str(cfg.get("task")), source)
    return {"loader": "parquet", "versions": versions}, versions[evaluated]


# -- metrics ------------------------------------------------------------------------------
def task_metrics(cfg: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(the harness's metric names, the eval-store metrics: per-sample means only)."""
    from app.core.eval.harness_metrics import run_metric_name

    out_type = str(cfg.get("output_type") or "generate_until")
    names: list[str] = []
    for m in cfg.get("metric_list") or []:
        metric = m.get("metric") if isinstance(m, dict) else None
        if isinstance(metric, str) and not isinstance(metric, _Function):
            agg = m.get("aggregation", "mean")
            if isinstance(agg, str) and agg not in ("mean",):
                names.append(metric + "*")  # not a mean: kept in the summary only
            else:
                names.append(metric)
    if not cfg.get("metric_list"):
        names = list(DEFAULT_METRICS.get(out_type, []))
    stored = []
    for n in names:
        if n.endswith("*"):
            continue
        r = run_metric_name(n, out_type)
        if r and r not in stored:
            stored.append(r)
    return [n.rstrip("*") for n in names], stored


# -- submission ---------------------------------------------------------------------------
def prepare_harness(ws: Workspace, cfg: HarnessConfig) -> HarnessConfig:
    """Find the task, check what it is, pin the model and the data. Raises before any job."""
    from app.core.eval.runner import resolve_model

    model_id, _path, _fmt = resolve_model(ws, cfg.models[0])
    task_path = Path(cfg.task).expanduser()
    if task_path.suffix in (".yaml", ".yml") or task_path.exists():
        if not task_path.is_file():
            raise ConfigError(f"The task file {task_path} does not exist.")
        yaml_path = task_path.resolve()
    else:
        yaml_path = find_task(cfg.task)
    code_files: dict[str, str] = {}
    if not is_packaged_task(yaml_path):
        code_files = task_code_files(yaml_path)
        if not cfg.trust_task_code:
            helpers = sum(1 for f in code_files if f.endswith(".py"))
            raise TaskCodeNotTrustedError(
                f"The task file {yaml_path} runs code in the job: lm-eval renders its "
                "templates without a sandbox and imports its !function helpers"
                + (f" ({helpers} Python file(s) in its folder)" if helpers else "")
                + ". Run it only if you trust where it came from.",
                "Read the task's files, then pass --trust-task-code (or say yes in the "
                "Harness tab). Tasks of the installed lm-eval, by name, need no approval.",
            )
    tc = load_task_yaml(yaml_path)
    name = tc.get("task")
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"{yaml_path} is not a single task (a group or a task list).",
            "Run one task of it: give its own YAML or name.",
        )
    if "task_list" in tc or "class" in tc:
        raise ConfigError(f"The task '{name}' is a group or a Python task; not supported yet.")
    out_type = str(tc.get("output_type") or "generate_until")
    if out_type not in DEFAULT_METRICS:
        raise ConfigError(f"The task '{name}' has an unknown output_type '{out_type}'.")
    shots = cfg.num_fewshot if cfg.num_fewshot is not None else int(tc.get("num_fewshot") or 0)
    data, ref = resolve_data(ws, tc, yaml_path.parent, cfg.datasets, shots)
    harness_metrics, metrics = task_metrics(tc)
    if not metrics:
        raise ConfigError(
            f"The task '{name}' has no metric that the eval store keeps per sample "
            f"({', '.join(harness_metrics) or 'none'}).",
            "Supported: acc, acc_norm, acc_mutual_info, acc_bytes, likelihood, exact_match.",
        )
    pinned = cfg.to_dict()
    pinned.update(
        models=[model_id],
        task_name=name,
        task_yaml=str(yaml_path),
        output_type=out_type,
        data=data,
        harness_metrics=harness_metrics,
        dataset=ref,
        metrics=metrics,
        num_fewshot=shots,
        code_files=code_files,
    )
    return HarnessConfig.from_dict(pinned)


def submit_harness(ws: Workspace, cfg: HarnessConfig) -> Job:
    """Validate (see :func:`prepare_harness`), record the run and queue its job."""
    from app.core.eval.runner import EvalStore
    from app.core.jobs.store import JobService

    pinned = prepare_harness(ws, cfg)
    title = f"Harness task {pinned.task_name} on {cfg.models[0]}"
    job = JobService(ws).submit(KIND, pinned.to_dict(), title=title[:120])
    EvalStore(ws).create_run(job.id, pinned, job_id=job.id)  # type: ignore[arg-type]
    return job


def check_files(data: Mapping[str, Any]) -> None:
    """In the job: the pinned data files are still the ones checked at submission."""
    for split, entries in (data.get("files") or {}).items():
        for e in entries:
            p = Path(e["path"])
            if not p.is_file() or _sha256(p) != e["sha256"]:
                raise ConfigError(
                    f"The data file {p} (split {split}) changed or went away after the run "
                    "was started.",
                    "Start a new run on the files as they are now.",
                )
