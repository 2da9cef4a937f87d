"""Agent evaluation: a dataset of tasks run against agent versions x models, as job ``eval.agent``.

Each row of a library dataset is a task: an input column, and optionally a
reference answer (the final answer must contain it, normalised), the expected
tool calls (a JSON list of ``{"name", "arguments"}``) and a checker (a regex on
the final answer, or ``{"file": PATH, "content": REGEX}``: a file the agent
must produce in its granted folder). Every (agent version, model) pair is a
*subject*; its id in the eval run is ``AGENT@VERSION:MODEL``.

Per task the agent runs through the real loop (:func:`app.core.agents.run_agent`),
stored in the agent runs table like any run of the Agents pane, with its id on
the sample. Scores per sample: ``agent_success``, ``tool_accuracy``,
``agent_steps``, ``agent_tokens``, ``agent_time_s``; aggregates are means with
the seeded bootstrap CIs of :mod:`app.core.eval.runner`, so ``demoai eval
compare`` / ``gate`` work on agent runs too.

Safety: every granted folder is copied per task into the job's run dir
(``scratch/SUBJECT/TASK/folder-N``) and the agent sees only the copy. An eval
is non-interactive: ``write_file`` and ``run_python`` (built-ins confined to the
copy, run_python in its sandbox) are approved automatically; every other
side-effecting call (tools of MCP servers) is refused and the task fails.
MCP servers start only when the user approved them for that agent version.

Resumable: a sample is stored when its task ends; a resumed job skips stored
samples, marks the agent run a killed task left behind as failed, and starts
that task again in a fresh scratch copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from app.core import patterns
from app.core.agents.loop import OpenAIChatClient
from app.core.errors import ConfigError, DemoAIError

if TYPE_CHECKING:
    from app.core.agents.runs import Step
    from app.core.agents.spec import AgentSpec
    from app.core.agents.tools import ToolRegistry
    from app.core.jobs.context import JobContext
    from app.core.jobs.store import Job
    from app.core.workspace.workspace import Workspace

KIND = "eval.agent"
METRICS = ["agent_success", "tool_accuracy", "agent_steps", "agent_tokens", "agent_time_s"]
#: Side-effecting built-in tools an eval approves: they act only on the per-task scratch copy
#: (run_python inside its sandbox). Any other side-effecting call is refused.
SCRATCH_TOOLS = ("write_file", "run_python")
#: Bounds on a granted folder copied per task.
MAX_COPY_BYTES = 1024 * 1024 * 1024
MAX_COPY_FILES = 20_000
MAX_CHECK_READ = 1024 * 1024
_AGENT_REF = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?:@(\d+))?$")

#: (served models {name: (path, format)}, chat template) -> context of (base_url, token);
#: the workers start the model host (the core may not).
HostConnect = Callable[
    [dict[str, tuple[str, str]], "str | None"], AbstractContextManager[tuple[str, str]]
]


@dataclass
class AgentEvalConfig:
    """What an agent eval does; validated, then saved as the job's parameters."""

    agents: list[str] = field(metadata={"help": "agent NAME or NAME@VERSION"})
    dataset: str = field(metadata={"help": "dataset reference ID[@VERSION]"})
    input_column: str = field(metadata={"help": "column with the task given to the agent"})
    reference_column: str | None = None
    tools_column: str | None = field(
        default=None, metadata={"help": 'expected tool calls: JSON [{"name", "arguments"}]'}
    )
    checker_column: str | None = field(
        default=None, metadata={"help": 'regex on the answer, or {"file": P, "content": RE}'}
    )
    model_refs: list[str] = field(
        default_factory=list, metadata={"help": "library models (default: each agent's own)"}
    )
    base_url: str | None = field(
        default=None, metadata={"help": "an OpenAI-compatible server instead of library models"}
    )
    api_key_env: str | None = field(
        default=None, metadata={"help": "environment variable holding the server's key"}
    )
    model_name: str | None = field(default=None, metadata={"help": "model name for --base-url"})
    limit: int | None = None
    n_ctx: int = 4096
    python_timeout_s: float = 10.0
    bootstrap: int = 1000
    seed: int = 0
    name: str = ""
    #: Subject ids AGENT@VERSION:MODEL, filled in by :func:`validate_agent_eval`.
    models: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    judge_model: str | None = None  # EvalStore.create_run reads these two
    rubric: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.agents, str):
            self.agents = [self.agents]
        if isinstance(self.model_refs, str):
            self.model_refs = [self.model_refs]
        if not self.agents:
            raise ConfigError("Give at least one agent (--agent NAME[@VERSION]).")
        for a in self.agents:
            if not _AGENT_REF.match(a):
                raise ConfigError(f"Not an agent reference: {a!r}.", "Use NAME or NAME@VERSION.")
        if self.base_url and self.model_refs:
            raise ConfigError("Give library models (--model) or --base-url, not both.")
        if self.api_key_env and not self.base_url:
            raise ConfigError("--api-key-env goes with --base-url.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit must be at least 1.")
        if self.bootstrap < 0:
            raise ConfigError("bootstrap must be 0 (no CIs) or more.")
        if not 256 <= self.n_ctx <= 1_048_576:
            raise ConfigError("n_ctx must be between 256 and 1048576.")
        if self.judge_model is not None:
            raise ConfigError("An agent eval has no judge model.")
        self.metrics = list(METRICS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentEvalConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown agent eval settings: {', '.join(unknown)}.")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- task columns -------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpectedCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Checker:
    regex: str | None = None
    file: str | None = None
    content: str | None = None


def _regex(text: Any, what: str) -> str:
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what} must be a non-empty regular expression")
    from app.core.patterns import compile_pattern

    try:
        compile_pattern(text)
    except ValueError as exc:
        raise ValueError(f"{what} {exc}") from None
    return text


def parse_expected(value: Any) -> list[ExpectedCall] | None:
    """Expected tool calls of a task (None: not given); ValueError says what is wrong."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"expected tool calls are not JSON: {exc}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError('expected tool calls must be a list of {"name", "arguments"}')
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f'an expected tool call needs a "name": {str(item)[:200]}')
        args = item.get("arguments") or {}
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = None
        if not isinstance(args, dict):
            raise ValueError(f"the arguments of the expected {item['name']} call must be an object")
        out.append(ExpectedCall(item["name"], args))
    return out


def parse_checker(value: Any) -> Checker | None:
    """A task's checker (None: none); a plain string is a regex on the final answer."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"the checker is not valid JSON: {exc}") from None
    if isinstance(value, str):
        return Checker(regex=_regex(value, "the checker"))
    if not isinstance(value, dict) or not value or set(value) - {"regex", "file", "content"}:
        raise ValueError('a checker is a regex, or an object with "regex", "file", "content"')
    regex = _regex(value["regex"], "the checker's regex") if value.get("regex") else None
    file = value.get("file")
    if file is not None and (not isinstance(file, str) or not file or "\x00" in file):
        raise ValueError('the checker\'s "file" must be a path inside the granted folder')
    content = _regex(value["content"], "the checker's content") if value.get("content") else None
    if content and not file:
        raise ValueError('the checker\'s "content" needs a "file"')
    return Checker(regex, file, content)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# -- validation and submission ------------------------------------------------------------
def _agent_ref(ref: str) -> tuple[str, int | None]:
    m = _AGENT_REF.match(ref)
    assert m is not None  # checked in the config
    return m.group(1), int(m.group(2)) if m.group(2) else None


def subject_id(agent: str, version: int, model: str) -> str:
    return f"{agent}@{version}:{model}"


def split_subject(key: str) -> tuple[str, int, str]:
    agent, _, rest = key.partition("@")
    version, _, model = rest.partition(":")
    return agent, int(version), model


def _columns(cfg: AgentEvalConfig) -> list[str]:
    cols = [cfg.input_column]
    for c in (cfg.reference_column, cfg.tools_column, cfg.checker_column):
        if c and c not in cols:
            cols.append(c)
    return cols


def _rows(ws: Workspace, cfg: AgentEvalConfig) -> list[dict[str, Any]]:
    from app.core.data.store import DatasetStore

    table = DatasetStore(ws).read_table(cfg.dataset, columns=_columns(cfg))
    if cfg.limit is not None:
        table = table.slice(0, cfg.limit)
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def folder_size(root: Path) -> tuple[int, int]:
    """(files, bytes) under ``root`` without following links; ConfigError past the copy bounds."""
    n = size = 0
    for dirpath, _dirs, files in os.walk(root):
        for fn in files:
            try:
                st = os.lstat(os.path.join(dirpath, fn))
            except OSError:
                continue
            n += 1
            size += st.st_size if stat.S_ISREG(st.st_mode) else 0
            if n > MAX_COPY_FILES or size > MAX_COPY_BYTES:
                raise ConfigError(
                    f"The granted folder {root} is too large to copy for every task "
                    f"(more than {MAX_COPY_FILES} files or {MAX_COPY_BYTES >> 20} MB).",
                    "Grant the agent a smaller folder for the evaluation.",
                )
    return n, size


def validate_agent_eval(ws: Workspace, cfg: AgentEvalConfig) -> dict[str, Any]:
    """Check agents, models, the dataset and every task cell before anything starts.

    Pins the dataset version and the agent versions in ``cfg`` and fills
    ``cfg.models`` with the subject ids. Returns ``{"dataset_ref", "rows", "columns"}``.
    """
    from app.core.agents.spec import AgentStore
    from app.core.data.store import DatasetStore
    from app.core.models.registry import ModelRegistry

    store = DatasetStore(ws)
    ver = store.resolve(cfg.dataset)
    ref = f"{ver.dataset_id}@{ver.hash}"
    columns = list(store.parquet_file(ref).schema_arrow.names)
    wanted = {"input column": cfg.input_column}
    for what, col in (
        ("reference column", cfg.reference_column),
        ("expected-tools column", cfg.tools_column),
        ("checker column", cfg.checker_column),
    ):
        if col:
            wanted[what] = col
    for what, col in wanted.items():
        if col not in columns:
            raise ConfigError(
                f"The dataset {cfg.dataset} has no {what} '{col}'. "
                f"Its columns are: {', '.join(columns)}.",
                "Choose one of these columns.",
            )
    cfg.dataset = ref
    rows = _rows(ws, cfg)
    if not rows:
        raise ConfigError(f"The dataset {cfg.dataset} has no rows to evaluate.")
    for i, row in enumerate(rows):
        task = row.get(cfg.input_column)
        if not isinstance(task, str) or not task.strip():
            raise ConfigError(f"Row {i}: the input column '{cfg.input_column}' is empty.")
        try:
            if cfg.tools_column:
                parse_expected(row.get(cfg.tools_column))
            if cfg.checker_column:
                parse_checker(row.get(cfg.checker_column))
        except ValueError as exc:
            raise ConfigError(f"Row {i}: {exc}.", "Fix the dataset, then start again.") from None
    agents = AgentStore(ws.db)
    registry = ModelRegistry(ws)
    subjects: list[str] = []
    pinned: list[str] = []
    copies = 0  # bytes of all scratch copies (one per task and subject, kept with the runs)
    for a in cfg.agents:
        name, version = _agent_ref(a)
        spec = agents.get(name, version)
        pinned.append(f"{spec.name}@{spec.version}")
        folders = {str(Path(g.folder).expanduser()) for g in spec.tools if g.folder}
        per_task = sum(folder_size(Path(f))[1] for f in folders)
        if cfg.base_url:
            models = [cfg.model_name or "server"]
        elif cfg.model_refs:
            models = [registry.get(m).id for m in cfg.model_refs]
        elif spec.model_id:
            rec = registry.get(spec.model_id)
            if spec.model_sha256 and rec.sha256 != spec.model_sha256:
                raise ConfigError(
                    f"The library model {rec.id} is not the one agent {spec.name} was made with "
                    f"(sha256 {rec.sha256[:12]}…, expected {spec.model_sha256[:12]}…).",
                    f"Pass --model {rec.id} to evaluate the agent with it anyway.",
                )
            models = [rec.id]
        else:
            raise ConfigError(
                f"Agent {spec.name} names no model.", "Give --model, or set the agent's model."
            )
        subjects += [subject_id(spec.name, spec.version, m) for m in models]
        copies += per_task * len(rows) * len(models)
    free = shutil.disk_usage(ws.runs_dir if ws.runs_dir.exists() else ws.root).free
    if copies > 0.9 * free:
        raise ConfigError(
            f"The scratch copies of the granted folders would take {copies >> 20} MB "
            f"(one per task), more than the free disk space ({free >> 20} MB).",
            "Grant smaller folders, evaluate fewer tasks (--limit), or free disk space.",
        )
    cfg.agents = pinned
    cfg.models = list(dict.fromkeys(subjects))
    return {"dataset_ref": ref, "rows": len(rows), "columns": columns}


def submit_agent_eval(ws: Workspace, cfg: AgentEvalConfig) -> Job:
    """Validate, pin the dataset and agent versions, record the eval run and queue the job."""
    from app.core.eval.runner import EvalStore
    from app.core.jobs.store import JobService

    validate_agent_eval(ws, cfg)
    title = f"Evaluate agent {', '.join(cfg.agents)} on {cfg.dataset.partition('@')[0]}"
    job = JobService(ws).submit(KIND, cfg.to_dict(), title=title[:120])
    EvalStore(ws).create_run(job.id, cast(Any, cfg), job_id=job.id)
    return job


# -- scratch folders ----------------------------------------------------------------------
def _ignore_special(src: str, names: list[str]) -> list[str]:
    """Skip sockets, FIFOs and devices (reading a FIFO would block the copy)."""
    out = []
    for n in names:
        try:
            mode = os.lstat(os.path.join(src, n)).st_mode
        except OSError:
            out.append(n)
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            out.append(n)
    return out


def scratch_spec(spec: AgentSpec, scratch: Path) -> tuple[AgentSpec, dict[str, Path]]:
    """``spec`` with every granted folder replaced by a fresh copy under ``scratch``.

    Links are copied as links: one that points out of the copy stays refused by the
    tools (they resolve paths and keep them inside the granted folder).
    Returns the spec and {original folder: copy}.
    """
    copies: dict[str, Path] = {}
    grants = []
    for g in spec.tools:
        if not g.folder:
            grants.append(g)
            continue
        src = str(Path(g.folder).expanduser())
        if src not in copies:
            dst = scratch / f"folder-{len(copies) + 1}"
            folder_size(Path(src))
            if Path(src).is_dir():
                shutil.copytree(src, dst, symlinks=True, ignore=_ignore_special)
            else:
                dst.mkdir(parents=True)
            copies[src] = dst
        grants.append(replace(g, folder=str(copies[src])))
    return replace(spec, tools=tuple(grants)), copies


def _check_root(spec: AgentSpec) -> Path | None:
    """Where a checker's file is looked for: write_file's folder, else the first granted one."""
    folders = [(g.name, g.folder) for g in spec.tools if g.folder]
    for name, folder in folders:
        if name == "write_file":
            return Path(folder)
    return Path(folders[0][1]) if folders else None


# -- scoring ------------------------------------------------------------------------------
@dataclass
class Call:
    tool: str
    arguments: dict[str, Any]
    known: bool
    valid: bool
    refused: bool
    matched: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calls_of(steps: list[Step], tools: ToolRegistry) -> list[Call]:
    """Every tool call the model made on the run's path (one ``tool_result`` step each)."""
    from app.core.agents.tools import ToolError, check_arguments

    out = []
    for s in steps:
        if s.kind != "tool_result":
            continue
        name = s.tool or ""
        args = dict(s.arguments or {})
        known = name in tools
        valid = False
        if known:
            try:
                check_arguments(tools.get(name).parameters, args)
                valid = True
            except ToolError:
                valid = False
        out.append(Call(name, args, known, valid, bool(s.data.get("denied"))))
    return out


def match_calls(calls: list[Call], expected: list[ExpectedCall]) -> int:
    """Mark the calls that match an expected call (each expected call once); the count.

    A call matches when it is valid, names the expected tool and has every expected
    argument with the expected value (other arguments may be present).
    """
    free = list(range(len(expected)))
    n = 0
    for c in calls:
        if not c.valid:
            continue
        for j in free:
            e = expected[j]
            if c.tool == e.name and all(c.arguments.get(k) == v for k, v in e.arguments.items()):
                c.matched = True
                free.remove(j)
                n += 1
                break
    return n


def tool_accuracy(calls: list[Call], expected: list[ExpectedCall] | None) -> float | None:
    """Share of right calls. With expected calls: matched / max(calls made, calls expected)
    (an extra or a missing call costs alike; nothing expected and nothing made is 1). Without:
    calls of an existing tool with valid arguments / calls made (None when none was made)."""
    if expected is not None:
        matched = match_calls(calls, expected)
        denom = max(len(calls), len(expected))
        return 1.0 if denom == 0 else matched / denom
    if not calls:
        return None
    return sum(1 for c in calls if c.valid) / len(calls)


def run_checks(
    final: str | None,
    reference: str | None,
    checker: Checker | None,
    expected: list[ExpectedCall] | None,
    calls: list[Call],
    root: Path | None,
) -> dict[str, bool]:
    """Each check the task gives -> whether it holds."""
    from app.core.agents.builtin_tools import resolve_inside
    from app.core.agents.tools import ToolError
    from app.core.eval.metrics import contains

    answer = final or ""
    out: dict[str, bool] = {}
    if reference is not None and reference.strip():
        out["reference"] = final is not None and contains(answer, reference) == 1.0
    if checker is not None and checker.regex:
        out["regex"] = final is not None and patterns.search(checker.regex, answer) is not None
    if checker is not None and checker.file:
        ok = False
        if root is not None:
            try:
                path = resolve_inside(root, checker.file)
                if path.is_file():
                    ok = True
                    if checker.content:
                        with open(path, "rb") as fh:
                            text = fh.read(MAX_CHECK_READ).decode("utf-8", "replace")
                        ok = patterns.search(checker.content, text) is not None
            except ToolError:
                ok = False
        out["file"] = ok
    if expected is not None:
        out["tool_calls"] = sum(1 for c in calls if c.matched) == len(expected)
    return out


# -- the job ------------------------------------------------------------------------------
class _CountingClient(OpenAIChatClient):
    """The loop's OpenAI client, adding up the ``usage`` of every completion."""

    prompt_tokens = 0
    completion_tokens = 0

    def _request(self, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        obj = super()._request(path, body, timeout)
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if body is not None and isinstance(usage, dict):
            for key in ("prompt_tokens", "completion_tokens"):
                v = usage.get(key)
                if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                    setattr(self, key, getattr(self, key) + v)
        return obj


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:120]


def _endpoint(
    ws: Workspace, cfg: AgentEvalConfig, spec: AgentSpec, model: str, host: HostConnect
) -> AbstractContextManager[tuple[str, str]]:
    """(base_url, key) for one subject: the server given, else the model host with the model."""
    if cfg.base_url:
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        if cfg.api_key_env and not key:
            raise ConfigError(f"The environment variable {cfg.api_key_env} is not set.")
        return contextlib.nullcontext((cfg.base_url, key))
    from app.core.agents.loop import embedding_models
    from app.core.models.registry import ModelRegistry

    reg = ModelRegistry(ws)
    rec = reg.get(model)
    served = {rec.id: (str(rec.path), rec.format)}
    for mid in embedding_models(spec):
        emb = reg.get(mid)
        served[emb.id] = (str(emb.path), emb.format)
    return host(served, spec.template)


def _finish_orphan(ws: Workspace, marker: Path) -> None:
    """The agent run a killed task left 'running' is recorded as failed."""
    from app.core.agents.runs import RunStore
    from app.core.errors import NotFoundError

    try:
        run_id = marker.read_text(encoding="utf-8").strip()
    except OSError:
        return
    runs = RunStore(ws.db)
    try:
        if run_id and runs.get(run_id).status == "running":
            runs.finish(run_id, "failed", error="The evaluation stopped during this run.")
    except NotFoundError:
        pass


def _fail_run(ws: Workspace, run_id: list[str], message: str) -> None:
    from app.core.agents.runs import RunStore

    if run_id:
        with contextlib.suppress(DemoAIError):
            if RunStore(ws.db).get(run_id[0]).status == "running":
                RunStore(ws.db).finish(run_id[0], "failed", error=message)


@dataclass
class _Subject:
    key: str
    spec: AgentSpec  # the stored version, model replaced by the subject's
    original: AgentSpec


def run_task(
    ctx: JobContext,
    cfg: AgentEvalConfig,
    subject: _Subject,
    endpoint: tuple[str, str],
    row: Mapping[str, Any],
    idx: int,
) -> Any:
    """Run one task in a fresh scratch copy and score it; returns the EvalSample."""
    from app.core.agents.approvals import ApprovalStore
    from app.core.agents.docindex import OpenAIEmbedder
    from app.core.agents.loop import agent_tools, run_agent
    from app.core.agents.runs import RunStore
    from app.core.agents.tools import ToolCall
    from app.core.eval.runner import EvalSample

    ws = ctx.workspace
    task = str(row.get(cfg.input_column) or "")
    reference = _text(row.get(cfg.reference_column)) if cfg.reference_column else None
    expected = parse_expected(row.get(cfg.tools_column)) if cfg.tools_column else None
    checker = parse_checker(row.get(cfg.checker_column)) if cfg.checker_column else None
    scratch = ctx.run_dir / "scratch" / _slug(subject.key) / f"{idx:05d}"
    marker = scratch / "agent_run_id"
    if scratch.exists():  # a task the last attempt did not finish: start it afresh
        _finish_orphan(ws, marker)
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    base_url, key = endpoint
    model = cfg.model_name if cfg.base_url else split_subject(subject.key)[2]
    client = _CountingClient(base_url, key, model=model)
    approvals = ApprovalStore(ws.db).gate(subject.original, None)
    refused: list[str] = []
    run_id: list[str] = []

    def gate(grant: Any) -> bool:
        # Built-in tools act on the scratch copy; MCP servers only when the user approved them.
        return bool(grant.kind == "tool" or approvals(grant))

    def on_step(step: Step) -> None:
        if not run_id:
            run_id.append(step.run_id)
            marker.write_text(step.run_id, encoding="utf-8")
        ctx.check_cancelled()

    prediction: str | None = None
    error: str | None = None
    status = "failed"
    calls: list[Call] = []
    steps: list[Step] = []
    root: Path | None = None
    t0 = time.perf_counter()
    try:
        spec, _copies = scratch_spec(subject.spec, scratch)
        root = _check_root(spec)
        with agent_tools(
            spec,
            python_timeout_s=cfg.python_timeout_s,
            embedder_for=lambda mid: OpenAIEmbedder(base_url, key, mid),
            index_dir=scratch / "index",
            gate=gate,
        ) as tools:

            def approve(call: ToolCall) -> str:
                tool = tools.get(call.tool)
                if tool.source == "builtin" and tool.name in SCRATCH_TOOLS:
                    return "once"
                refused.append(call.tool)
                return "deny"

            result = run_agent(
                spec, task, client=client, runs=RunStore(ws.db), tools=tools,
                approve=approve, agents=None, on_step=on_step,
            )  # fmt: skip
            steps = result.steps
            calls = calls_of(steps, tools)
            status = result.status
            prediction = result.final
            acc = tool_accuracy(calls, expected)
        if status != "succeeded":
            error = f"agent run {status}: {result.error}"
    except DemoAIError as exc:  # a tool that cannot run here, a server that does not answer
        error = f"agent run failed: {exc.message}"
        acc = tool_accuracy(calls, expected)
        _fail_run(ws, run_id, exc.message)
    except BaseException:  # cancelled: the run is not left 'running'
        _fail_run(ws, run_id, "The evaluation was stopped during this run.")
        raise
    elapsed = time.perf_counter() - t0
    checks = run_checks(prediction, reference, checker, expected, calls, root)
    if refused:
        note = (
            f"refused (needs approval, not allowed in an eval): {', '.join(sorted(set(refused)))}"
        )
        error = "; ".join(filter(None, [error, note]))
    success = status == "succeeded" and prediction is not None and not refused
    success = success and all(checks.values())
    turns = sum(1 for s in steps if s.kind == "model" and not s.data.get("retry"))
    tokens = int(client.prompt_tokens + client.completion_tokens)
    scores: dict[str, float | None] = {
        "agent_success": float(success),
        "tool_accuracy": acc,
        "agent_steps": float(turns),
        "agent_tokens": float(tokens),
        "agent_time_s": elapsed,
    }
    extra = {
        "agent_run_id": run_id[0] if run_id else None,
        "status": status,
        "checks": checks,
        "calls": [c.to_dict() for c in calls],
        "expected_calls": [asdict(e) for e in expected] if expected is not None else None,
        "refused": sorted(set(refused)),
        "prompt_tokens": int(client.prompt_tokens),
        "completion_tokens": int(client.completion_tokens),
        "scratch": scratch.relative_to(ctx.run_dir).as_posix(),
    }
    return EvalSample(
        run_id=ctx.job_id, model_id=subject.key, idx=idx, input=task, prediction=prediction,
        reference=reference, scores=scores, error=error, latency_ms=elapsed * 1000.0,
        tokens=tokens, extra=extra,
    )  # fmt: skip


def run_agent_eval(ctx: JobContext, host: HostConnect, **params: Any) -> dict[str, Any]:
    """Job ``eval.agent``: every subject on every task; resumes after the stored samples."""
    from app.core.agents.spec import AgentStore
    from app.core.eval.runner import EvalStore, finish_run
    from app.core.models.registry import ModelRegistry

    ws: Workspace = ctx.workspace
    cfg = AgentEvalConfig.from_dict(params)
    if not cfg.models:
        validate_agent_eval(ws, cfg)
    store = EvalStore(ws)
    run_id = ctx.job_id
    store.create_run(run_id, cast(Any, cfg), job_id=ctx.job_id)  # no-op when submitted
    store.set_state(run_id, "running")
    rows = _rows(ws, cfg)
    total = len(rows) * len(cfg.models) or 1
    done_total = 0
    load_errors: dict[str, str] = {}
    agents = AgentStore(ws.db)
    ctx.log(f"evaluating {len(cfg.models)} agent/model pair(s) on {len(rows)} tasks "
            f"(attempt {ctx.attempt})")  # fmt: skip
    try:
        for key in cfg.models:
            name, version, model = split_subject(key)
            done = store.done_indices(run_id, key)
            done_total += len(done)
            todo = [i for i in range(len(rows)) if i not in done]
            if done:
                ctx.log(f"{key}: {len(done)} tasks already stored, {len(todo)} to go")
            if not todo:
                continue
            original = agents.get(name, version)
            spec = original
            if not cfg.base_url:
                rec = ModelRegistry(ws).get(model)
                spec = replace(original, model_id=rec.id, model_sha256=rec.sha256)
            subject = _Subject(key, spec, original)
            ctx.progress(done_total / total, f"starting {key}")
            try:
                endpoint_cm = _endpoint(ws, cfg, spec, model, host)
                endpoint = endpoint_cm.__enter__()
            except DemoAIError as exc:
                load_errors[key] = str(exc)
                ctx.log(f"{key}: the model could not be served: {exc}", "error")
                continue
            try:
                for i in todo:
                    ctx.check_cancelled()
                    ctx.progress(done_total / total, f"{key}: task {i + 1}/{len(rows)}")
                    sample = run_task(ctx, cfg, subject, endpoint, rows[i], i)
                    store.put_sample(sample)
                    done_total += 1
            finally:
                endpoint_cm.__exit__(None, None, None)
    except BaseException:
        store.set_state(run_id, "interrupted", errors=load_errors or None)
        raise
    summary: dict[str, Any] = {"aggregates": store.aggregates(run_id), "rows": len(rows)}
    return finish_run(ctx, store, run_id, summary, load_errors)
