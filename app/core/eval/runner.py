"""Eval runs: models x a dataset version x metrics, as the resumable job ``eval.run``.

Per-sample results go to ``eval_samples`` as each one completes, so a killed run
keeps what it did and a resumed one continues after the last stored sample.
Aggregates carry seeded bootstrap 95% confidence intervals.

Public API (for the UI and the CLI): :class:`EvalConfig`, :func:`validate_eval`,
:func:`submit_eval`, :class:`EvalStore` (runs, samples, aggregates, compare,
worst cases, export) and the job entry :func:`run_eval`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError, DemoAIError, NotFoundError
from app.core.eval.judge import DEFAULT_RUBRIC, judge_prompt, judge_sample
from app.core.eval.metrics import canonical_name, get_metric
from app.core.store.files import atomic_write_text

if TYPE_CHECKING:
    from app.core.eval.corpus import PerplexityConfig
    from app.core.eval.perplexity import TokenScorer
    from app.core.infer.engines import Engine
    from app.core.jobs.context import JobContext
    from app.core.jobs.store import Job
    from app.core.workspace.workspace import Workspace

KIND = "eval.run"
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_ .-]*)\}")


@dataclass
class EvalConfig:
    """What an eval run does. Validated on creation; saved as the job's parameters."""

    models: list[str] = field(metadata={"help": "model ids/names in the library (or paths)"})
    dataset: str = field(metadata={"help": "dataset reference ID[@VERSION]"})
    input_column: str = field(metadata={"help": "column with the model input"})
    reference_column: str | None = field(
        default=None, metadata={"help": "column with the expected answer"}
    )
    metrics: list[str] = field(default_factory=lambda: ["exact_match", "f1"])
    prompt_template: str = field(
        default="{input}", metadata={"help": "prompt; {input} and {COLUMN} are replaced"}
    )
    choices_column: str | None = field(
        default=None, metadata={"help": "multiple choice: a column holding the list of choices"}
    )
    chat: bool = field(default=False, metadata={"help": "wrap the prompt in the chat template"})
    temperature: float = 0.0
    max_tokens: int = 64
    stop: list[str] = field(default_factory=list)
    seed: int = 0
    judge_model: str | None = None
    rubric: str = DEFAULT_RUBRIC
    n_ctx: int = 2048
    threads: int = 0
    limit: int | None = field(default=None, metadata={"help": "evaluate the first N rows only"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the CIs"})
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            self.models = [self.models]
        if not self.models:
            raise ConfigError("Give at least one model to evaluate.")
        if not self.metrics:
            raise ConfigError("Give at least one metric.")
        self.metrics = list(dict.fromkeys(canonical_name(m) for m in self.metrics))
        if "{" not in self.prompt_template:
            raise ConfigError(
                "The prompt template has no field: use {input} (or {COLUMN}) where the input goes."
            )
        if "mc_accuracy" in self.metrics and not self.choices_column:
            raise ConfigError("mc_accuracy needs a choices column (--choices COLUMN).")
        if "judge" in self.metrics and not self.judge_model:
            raise ConfigError("The judge metric needs a judge model (--judge MODEL).")
        needs_ref = [m for m in self.metrics if get_metric(m).needs_reference]
        if needs_ref and not self.reference_column:
            raise ConfigError(f"The metrics {', '.join(needs_ref)} need a reference column.")
        if self.max_tokens < 1 or self.n_ctx < 16:
            raise ConfigError("max_tokens must be >= 1 and n_ctx >= 16.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit must be at least 1.")
        if self.bootstrap < 0:
            raise ConfigError("bootstrap must be 0 (no CIs) or more.")
        if "corpus_perplexity" in self.metrics:
            raise ConfigError(
                "corpus_perplexity is measured on a whole text, not per sample.",
                "Use `demoai eval perplexity`.",
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown eval settings: {', '.join(unknown)}.")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def generates(self) -> bool:
        """True when the metrics need the model's answer (not only log-likelihoods)."""
        return any(
            get_metric(m).kind != "model" or m in ("latency_ms", "tokens_per_s")
            for m in self.metrics
        )


# -- validation and submission ------------------------------------------------------------
def _template_fields(template: str) -> list[str]:
    return [m.group(1) for m in _FIELD.finditer(template)]


def render_prompt(template: str, row: Mapping[str, Any], input_column: str) -> str:
    """``template`` with ``{input}`` and ``{COLUMN}`` replaced by the row's values."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        val = row.get(input_column) if key == "input" else row.get(key)
        return "" if val is None else str(val)

    return _FIELD.sub(sub, template)


def model_label(ws: Workspace, model_id: str) -> str:
    """What a person reads for a model: its library name, else the reference as given."""
    from app.core.models.registry import ModelRegistry

    try:
        return ModelRegistry(ws).get(model_id).name
    except NotFoundError:
        return Path(model_id).name or model_id


def resolve_model(ws: Workspace, ref: str) -> tuple[str, Path, str]:
    """(model id, path, format) of a library model (id or name) or a model path."""
    from app.core.models.registry import ModelRegistry

    try:
        rec = ModelRegistry(ws).get(ref)
        return rec.id, Path(rec.path), rec.format
    except NotFoundError:
        p = Path(ref).expanduser()
        if p.exists():
            from app.core.infer.engines import detect_format

            return str(p), p, detect_format(p)
        raise


def validate_eval(ws: Workspace, cfg: EvalConfig) -> dict[str, Any]:
    """Check the dataset, its columns and the models before anything starts.

    Returns ``{"dataset_ref": "ID@HASH", "rows": N, "columns": [...]}``; raises
    ConfigError / NotFoundError with the columns the dataset has.
    """
    from app.core.data.store import DatasetStore

    store = DatasetStore(ws)
    ver = store.resolve(cfg.dataset)
    pf = store.parquet_file(f"{ver.dataset_id}@{ver.hash}")
    columns = list(pf.schema_arrow.names)
    wanted = {"input column": cfg.input_column}
    if cfg.reference_column:
        wanted["reference column"] = cfg.reference_column
    if cfg.choices_column:
        wanted["choices column"] = cfg.choices_column
    for f in _template_fields(cfg.prompt_template):
        if f != "input":
            wanted[f"prompt field {{{f}}}"] = f
    for what, col in wanted.items():
        if col not in columns:
            raise ConfigError(
                f"The dataset {cfg.dataset} has no {what} '{col}'. "
                f"Its columns are: {', '.join(columns)}.",
                "Choose one of these columns.",
            )
    for m in [*cfg.models, *([cfg.judge_model] if cfg.judge_model else [])]:
        resolve_model(ws, m)
    return {
        "dataset_ref": f"{ver.dataset_id}@{ver.hash}",
        "rows": int(pf.metadata.num_rows),
        "columns": columns,
    }


def submit_eval(ws: Workspace, cfg: EvalConfig) -> Job:
    """Validate, pin the dataset version, record the run and queue its ``eval.run`` job."""
    from app.core.jobs.store import JobService

    info = validate_eval(ws, cfg)
    params = cfg.to_dict()
    params["dataset"] = info["dataset_ref"]  # pinned: a later version does not change the run
    title = f"Evaluate {', '.join(cfg.models)} on {cfg.dataset}"
    job = JobService(ws).submit(KIND, params, title=title[:120])
    EvalStore(ws).create_run(job.id, EvalConfig.from_dict(params), job_id=job.id)
    return job


# -- storage ------------------------------------------------------------------------------
@dataclass
class EvalRun:
    id: str
    job_id: str | None
    name: str
    state: str
    config: dict[str, Any]
    dataset_ref: str
    models: list[str]
    metrics: list[str]
    summary: dict[str, Any] | None
    errors: dict[str, str]
    judge_prompt: str | None
    created_at: float
    finished_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalSample:
    run_id: str
    model_id: str
    idx: int
    input: str
    prediction: str | None
    reference: str | None
    scores: dict[str, float | None]
    error: str | None
    latency_ms: float | None
    tokens: int | None
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded); (nan, nan) for no values."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    if n_boot <= 0 or arr.size == 1:
        m = float(arr.mean())
        return m, m
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def _corpus_ci(
    fn: Callable[[Sequence[str], Sequence[Sequence[str]]], float],
    preds: list[str],
    refs: list[list[str]],
    *,
    n_boot: int,
    seed: int,
) -> tuple[float, float]:
    import numpy as np

    if not preds:
        return math.nan, math.nan
    n_boot = min(n_boot, 200)  # a corpus statistic per resample is slower than a mean
    if n_boot <= 0 or len(preds) == 1:
        v = fn(preds, refs)
        return v, v
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(preds), size=len(preds))
        stats.append(fn([preds[i] for i in idx], [refs[i] for i in idx]))
    return float(np.quantile(stats, 0.025)), float(np.quantile(stats, 0.975))


def _refs(reference: str | None) -> list[str]:
    if reference is None:
        return []
    if reference.startswith("["):
        try:
            val = json.loads(reference)
            if isinstance(val, list):
                return [str(v) for v in val]
        except ValueError:
            pass
    return [reference]


class EvalStore:
    """Eval runs and their samples in the workspace database."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.db = ws.db

    # -- runs --
    def create_run(
        self, run_id: str, cfg: EvalConfig | PerplexityConfig, *, job_id: str | None = None
    ) -> EvalRun:
        self.db.execute(
            "INSERT OR IGNORE INTO eval_runs(id, job_id, name, state, config, dataset_ref, "
            "dataset_version, models, metrics, judge_prompt, created_at) "
            "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                job_id,
                cfg.name,
                json.dumps(cfg.to_dict()),
                cfg.dataset,
                cfg.dataset.partition("@")[2],
                json.dumps(cfg.models),
                json.dumps(cfg.metrics),
                judge_prompt("{input}", "{prediction}", "{reference}", cfg.rubric)
                if cfg.judge_model
                else None,
                time.time(),
            ),
        )
        return self.get_run(run_id)

    def _state(self, r: dict[str, Any]) -> str:
        """The run's state; a 'running' run whose job is over (killed, terminated) is interrupted."""
        state = str(r["state"])
        if state == "running" and r["job_id"]:
            job = self.db.query_one("SELECT state FROM jobs WHERE id = ?", (r["job_id"],))
            if job is None or job["state"] not in ("queued", "running", "cancelling"):
                return "interrupted"
        return state

    def _run(self, r: dict[str, Any]) -> EvalRun:
        return EvalRun(
            id=r["id"],
            job_id=r["job_id"],
            name=r["name"],
            state=self._state(r),
            config=json.loads(r["config"]),
            dataset_ref=r["dataset_ref"],
            models=json.loads(r["models"]),
            metrics=json.loads(r["metrics"]),
            summary=json.loads(r["summary"]) if r["summary"] else None,
            errors=json.loads(r["errors"]) if r["errors"] else {},
            judge_prompt=r["judge_prompt"],
            created_at=r["created_at"],
            finished_at=r["finished_at"],
        )

    def get_run(self, ref: str) -> EvalRun:
        """A run by id or unique id prefix."""
        rows = self.db.query("SELECT * FROM eval_runs WHERE id = ?", (ref,))
        if not rows and len(ref) >= 4:
            rows = self.db.query("SELECT * FROM eval_runs WHERE id LIKE ?", (ref + "%",))
        if len(rows) != 1:
            if rows:
                raise ConfigError(f"'{ref}' matches {len(rows)} eval runs.", "Give more of the id.")
            raise NotFoundError(f"No eval run '{ref}'.", "List runs with `demoai eval list`.")
        return self._run(rows[0])

    def list_runs(self) -> list[EvalRun]:
        """Every run, newest first."""
        return [
            self._run(r)
            for r in self.db.query("SELECT * FROM eval_runs ORDER BY created_at DESC, id DESC")
        ]

    def set_state(
        self,
        run_id: str,
        state: str,
        *,
        summary: dict[str, Any] | None = None,
        errors: dict[str, str] | None = None,
    ) -> None:
        finished = time.time() if state in ("succeeded", "failed", "cancelled") else None
        self.db.execute(
            "UPDATE eval_runs SET state = ?, summary = COALESCE(?, summary), "
            "errors = COALESCE(?, errors), finished_at = ? WHERE id = ?",
            (
                state,
                json.dumps(summary) if summary is not None else None,
                json.dumps(errors) if errors is not None else None,
                finished,
                run_id,
            ),
        )

    def delete_run(self, run_id: str) -> None:
        run = self.get_run(run_id)
        with self.db.transaction() as c:
            c.execute("DELETE FROM eval_samples WHERE run_id = ?", (run.id,))
            c.execute("DELETE FROM eval_runs WHERE id = ?", (run.id,))

    # -- samples --
    def done_indices(self, run_id: str, model_id: str) -> set[int]:
        rows = self.db.query(
            "SELECT idx FROM eval_samples WHERE run_id = ? AND model_id = ?", (run_id, model_id)
        )
        return {int(r["idx"]) for r in rows}

    def put_sample(self, s: EvalSample) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO eval_samples(run_id, model_id, idx, input, prediction, "
            "reference, scores, error, latency_ms, tokens, extra, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s.run_id,
                s.model_id,
                s.idx,
                s.input,
                s.prediction,
                s.reference,
                json.dumps(s.scores),
                s.error,
                s.latency_ms,
                s.tokens,
                json.dumps(s.extra),
                time.time(),
            ),
        )

    def _sample(self, r: dict[str, Any]) -> EvalSample:
        return EvalSample(
            run_id=r["run_id"],
            model_id=r["model_id"],
            idx=int(r["idx"]),
            input=r["input"],
            prediction=r["prediction"],
            reference=r["reference"],
            scores=json.loads(r["scores"]),
            error=r["error"],
            latency_ms=r["latency_ms"],
            tokens=r["tokens"],
            extra=json.loads(r["extra"]) if r["extra"] else {},
        )

    def samples(
        self,
        run_id: str,
        model_id: str | None = None,
        *,
        sort_by: str | None = None,
        ascending: bool = True,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[EvalSample]:
        """Per-sample results, by index or sorted by a metric (missing scores last)."""
        run = self.get_run(run_id)
        sql, args = "SELECT * FROM eval_samples WHERE run_id = ?", [run.id]
        if model_id is not None:
            sql += " AND model_id = ?"
            args.append(model_id)
        if sort_by is None:
            sql += " ORDER BY model_id, idx"
            if limit is not None:
                sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
            return [self._sample(r) for r in self.db.query(sql, args)]
        key = canonical_name(sort_by)
        out = [self._sample(r) for r in self.db.query(sql, args)]
        have = [s for s in out if s.scores.get(key) is not None]
        missing = [s for s in out if s.scores.get(key) is None]
        have.sort(key=lambda s: (float(s.scores[key] or 0.0), s.idx), reverse=not ascending)
        ordered = have + missing
        return ordered[offset : None if limit is None else offset + limit]

    def worst_cases(
        self, run_id: str, metric: str, *, model_id: str | None = None, n: int = 10
    ) -> list[EvalSample]:
        """The ``n`` samples that score worst on ``metric`` (lowest, or highest when lower is better)."""
        spec = get_metric(metric)
        return self.samples(
            run_id, model_id, sort_by=spec.name, ascending=spec.higher_is_better, limit=n
        )

    # -- aggregates --
    def aggregates(self, run_id: str, *, n_boot: int | None = None) -> dict[str, Any]:
        """{model: {metric: {value, ci_low, ci_high, n, errors}}} from the stored samples."""
        run = self.get_run(run_id)
        cfg = run.config
        boots = int(cfg.get("bootstrap", 1000)) if n_boot is None else n_boot
        seed = int(cfg.get("seed", 0))
        out: dict[str, Any] = {}
        for model in run.models:
            model_id = self._stored_model_id(run.id, model)
            rows = self.samples(run.id, model_id)
            per: dict[str, Any] = {}
            for m in run.metrics:
                spec = get_metric(m)
                vals = [float(v) for s in rows if (v := s.scores.get(m)) is not None]
                errors = sum(1 for s in rows if s.scores.get(m) is None)
                if m == "corpus_perplexity":  # exp(sum nll / sum tokens), CI over windows
                    from app.core.eval.corpus import corpus_aggregate

                    done = [s for s in rows if "nll" in s.extra]
                    value, lo, hi = corpus_aggregate(
                        [float(s.extra["nll"]) for s in done],
                        [int(s.extra["n_tokens"]) for s in done],
                        n_boot=boots,
                        seed=seed,
                    )
                elif spec.corpus is not None:
                    scored = [s for s in rows if s.scores.get(m) is not None]
                    preds = [(s.prediction or "").strip() for s in scored]
                    refs = [_refs(s.reference) for s in scored]
                    value = spec.corpus(preds, refs) if preds else math.nan
                    lo, hi = _corpus_ci(spec.corpus, preds, refs, n_boot=boots, seed=seed)
                else:
                    value = sum(vals) / len(vals) if vals else math.nan
                    lo, hi = bootstrap_ci(vals, n_boot=boots, seed=seed)
                per[m] = {
                    "value": _num(value),
                    "ci_low": _num(lo),
                    "ci_high": _num(hi),
                    "n": len(vals),
                    "errors": errors,
                }
            out[model_id] = per
        return out

    def _stored_model_id(self, run_id: str, model: str) -> str:
        """The id samples are stored under for ``model`` as written in the config."""
        row = self.db.query_one(
            "SELECT model_id FROM eval_samples WHERE run_id = ? AND model_id = ? LIMIT 1",
            (run_id, model),
        )
        if row:
            return model
        try:
            return resolve_model(self.ws, model)[0]
        except DemoAIError:
            return model

    def compare(self, run_ids: Sequence[str]) -> list[dict[str, Any]]:
        """One row per (run, model, metric) with the aggregate and its CI."""
        rows: list[dict[str, Any]] = []
        for rid in run_ids:
            run = self.get_run(rid)
            agg = run.summary.get("aggregates") if run.summary else None
            if not agg:
                agg = self.aggregates(run.id)
            for model, per in agg.items():
                for metric, a in per.items():
                    rows.append({"run_id": run.id, "model": model, "metric": metric, **a})
        return rows

    # -- export --
    def export(self, run_id: str, path: str | Path, fmt: str | None = None) -> Path:
        """Write the run (config, aggregates, samples) as JSON, or its samples as CSV; atomic."""
        run = self.get_run(run_id)
        p = Path(path)
        fmt = (fmt or p.suffix.lstrip(".") or "json").lower()
        samples = self.samples(run.id)
        if fmt == "json":
            data = {
                "run": run.to_dict(),
                "aggregates": self.aggregates(run.id),
                "samples": [s.to_dict() for s in samples],
            }
            atomic_write_text(p, json.dumps(data, indent=2, ensure_ascii=False, default=str))
        elif fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            head = [
                "model_id",
                "idx",
                "input",
                "prediction",
                "reference",
                "error",
                "latency_ms",
                "tokens",
                *run.metrics,
            ]
            w.writerow(head)
            for s in samples:
                w.writerow(
                    [
                        s.model_id,
                        s.idx,
                        s.input,
                        s.prediction,
                        s.reference,
                        s.error,
                        s.latency_ms,
                        s.tokens,
                        *[s.scores.get(m) for m in run.metrics],
                    ]
                )
            atomic_write_text(p, buf.getvalue())
        else:
            raise ConfigError(f"Unknown export format '{fmt}'.", "Use .json or .csv.")
        return p


def _num(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


# -- the job ------------------------------------------------------------------------------
def _choices(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = [c for c in value.split("|")]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"choices must be a non-empty list, not {value!r}")
    return [str(c) for c in value]


def _correct_choice(reference: Any, choices: list[str]) -> int:
    if isinstance(reference, int) and 0 <= reference < len(choices):
        return reference
    ref = str(reference).strip()
    for i, c in enumerate(choices):
        if c.strip() == ref:
            return i
    if ref.isdigit() and int(ref) < len(choices):
        return int(ref)
    if len(ref) == 1 and ref.upper() in "ABCDEFGHIJ"[: len(choices)]:
        return "ABCDEFGHIJ".index(ref.upper())
    raise ValueError(f"the reference {ref!r} is none of the choices {choices}")


def _sep(prompt: str) -> str:
    return "" if not prompt or prompt[-1].isspace() else " "


class _ModelRunner:
    """One loaded model: generation through the engine, log-likelihoods through a scorer."""

    def __init__(self, cfg: EvalConfig, path: Path, fmt: str) -> None:
        from app.core.infer.engines import EngineOptions, open_engine

        self.cfg, self.path, self.fmt = cfg, path, fmt
        opts = EngineOptions(threads=cfg.threads, n_ctx=cfg.n_ctx)
        self.engine: Engine = open_engine(path, fmt, opts)
        self._scorer: TokenScorer | None = None
        self._own_scorer: Any = None

    @property
    def scorer(self) -> TokenScorer:
        if self._scorer is None:
            from app.core.eval.perplexity import GGUFScorer, HFScorer

            eng: Any = self.engine
            if self.fmt == "gguf":
                self._own_scorer = GGUFScorer(
                    self.path, n_ctx=self.cfg.n_ctx, threads=self.engine.options.n_threads
                )
                self._scorer = self._own_scorer
            else:
                self._scorer = HFScorer(eng.model, eng.tokenizer, self.cfg.n_ctx)
        return self._scorer

    def generate(self, prompt: str) -> tuple[str, int, float]:
        """(text, completion tokens, seconds)."""
        from app.core.infer.sampling import SamplingParams

        cfg = self.cfg
        params = SamplingParams(
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
            seed=cfg.seed,
            stop=tuple(cfg.stop),
        )
        t0 = time.perf_counter()
        stream: Iterator[Any]
        if cfg.chat:
            stream = self.engine.chat([{"role": "user", "content": prompt}], params)
        else:
            stream = self.engine.complete(prompt, params)
        parts, n = [], 0
        for chunk in stream:
            parts.append(chunk.text)
            if chunk.usage is not None:
                n = chunk.usage.completion_tokens
        return "".join(parts), n, time.perf_counter() - t0

    def close(self) -> None:
        if self._own_scorer is not None:
            self._own_scorer.close()
        self.engine.close()


def score_sample(
    cfg: EvalConfig,
    runner: Any,
    row: Mapping[str, Any],
    idx: int,
    run_id: str,
    model_id: str,
) -> EvalSample:
    """Everything about one sample for one model (errors recorded on the sample)."""
    from app.core.eval.perplexity import continuation_logprob

    prompt = render_prompt(cfg.prompt_template, row, cfg.input_column)
    raw_ref = row.get(cfg.reference_column) if cfg.reference_column else None
    if isinstance(raw_ref, (list, tuple)):
        reference: str | None = json.dumps([str(r) for r in raw_ref], ensure_ascii=False)
    else:
        reference = None if raw_ref is None else str(raw_ref)
    refs = _refs(reference)
    scores: dict[str, float | None] = {}
    errors: list[str] = []
    extra: dict[str, Any] = {}
    prediction: str | None = None
    tokens: int | None = None
    latency: float | None = None
    if cfg.generates:
        try:
            prediction, tokens, secs = runner.generate(prompt)
            latency = secs * 1000.0
        except DemoAIError as exc:
            errors.append(f"generation failed: {exc}")
    for m in cfg.metrics:
        spec = get_metric(m)
        try:
            if m == "mc_accuracy":
                choices = _choices(row.get(cfg.choices_column or ""))
                gold = _correct_choice(raw_ref, choices)
                sep = _sep(prompt)
                lls = [continuation_logprob(runner.scorer, prompt, sep + c)[0] for c in choices]
                best = max(range(len(choices)), key=lambda i: lls[i])
                extra["choice_logprobs"] = lls
                extra["choice"] = best
                if prediction is None:
                    prediction = choices[best]
                scores[m] = float(best == gold)
            elif m == "perplexity":
                if not refs:
                    raise ValueError("no reference to score")
                lp, n = continuation_logprob(runner.scorer, prompt, _sep(prompt) + refs[0])
                scores[m] = math.exp(-lp / n) if n else None
            elif m == "latency_ms":
                scores[m] = latency
            elif m == "tokens_per_s":
                scores[m] = (tokens / (latency / 1000.0)) if latency and tokens else None
            elif m == "judge":
                scores[m] = None  # filled in by the judge pass
            elif spec.fn is not None:
                scores[m] = None if prediction is None else spec.fn(prediction.strip(), refs)
        except (ValueError, DemoAIError) as exc:
            scores[m] = None
            errors.append(f"{m}: {exc}")
    return EvalSample(
        run_id=run_id,
        model_id=model_id,
        idx=idx,
        input=prompt,
        prediction=prediction,
        reference=reference,
        scores=scores,
        error="; ".join(errors) or None,
        latency_ms=latency,
        tokens=tokens,
        extra=extra,
    )


def _rows(ws: Workspace, cfg: EvalConfig) -> list[dict[str, Any]]:
    from app.core.data.store import DatasetStore

    cols = [cfg.input_column]
    for c in (
        cfg.reference_column,
        cfg.choices_column,
        *[f for f in _template_fields(cfg.prompt_template) if f != "input"],
    ):
        if c and c not in cols:
            cols.append(c)
    table = DatasetStore(ws).read_table(cfg.dataset, columns=cols)
    if cfg.limit is not None:
        table = table.slice(0, cfg.limit)
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def run_eval(ctx: JobContext, **params: Any) -> dict[str, Any]:
    """Job ``eval.run``: evaluate each model on the dataset; resumes after the stored samples."""
    from app.core.eval.corpus import is_perplexity_params, run_perplexity

    if is_perplexity_params(params):  # `demoai eval perplexity`: same kind, same store
        return run_perplexity(ctx, **params)
    ws: Workspace = ctx.workspace
    cfg = EvalConfig.from_dict(params)
    store = EvalStore(ws)
    run_id = ctx.job_id
    store.create_run(run_id, cfg, job_id=ctx.job_id)  # no-op when submitted by submit_eval
    store.set_state(run_id, "running")
    rows = _rows(ws, cfg)
    total = len(rows) * len(cfg.models) or 1
    done_total = 0
    load_errors: dict[str, str] = {}
    ctx.log(f"evaluating {len(cfg.models)} model(s) on {len(rows)} rows (attempt {ctx.attempt})")
    try:
        for model_ref in cfg.models:
            model_id, path, fmt = resolve_model(ws, model_ref)
            label = model_label(ws, model_id)
            done = store.done_indices(run_id, model_id)
            done_total += len(done)
            todo = [i for i in range(len(rows)) if i not in done]
            if done:
                ctx.log(f"{label}: {len(done)} samples already stored, {len(todo)} to go")
            if not todo:
                continue
            ctx.progress(done_total / total, f"loading {label}")
            try:
                runner = _ModelRunner(cfg, path, fmt)
            except DemoAIError as exc:
                load_errors[model_id] = str(exc)
                ctx.log(f"{label} could not be loaded: {exc}", "error")
                continue
            try:
                for i in todo:
                    ctx.check_cancelled()
                    sample = score_sample(cfg, runner, rows[i], i, run_id, model_id)
                    store.put_sample(sample)
                    done_total += 1
                    ctx.progress(done_total / total, f"{label}: sample {i + 1}/{len(rows)}")
            finally:
                runner.close()
        if "judge" in cfg.metrics and cfg.judge_model:
            _judge_pass(ctx, cfg, store, run_id)
    except BaseException:
        store.set_state(run_id, "interrupted", errors=load_errors or None)
        raise
    summary: dict[str, Any] = {"aggregates": store.aggregates(run_id), "rows": len(rows)}
    return finish_run(ctx, store, run_id, summary, load_errors)


def finish_run(
    ctx: JobContext,
    store: EvalStore,
    run_id: str,
    summary: dict[str, Any],
    load_errors: dict[str, str],
) -> dict[str, Any]:
    """End an eval job: its aggregates as metrics, then the run failed (naming the models
    that did not load; the others' results are kept) or succeeded. Returns the result."""
    from app.core.jobs.context import JobFailed

    for model, per in summary["aggregates"].items():
        for metric, agg in per.items():
            if agg.get("value") is not None:
                ctx.metric(f"{model}/{metric}", 0, float(agg["value"]))
    if load_errors:
        store.set_state(run_id, "failed", summary=summary, errors=load_errors)
        names = "; ".join(f"{m}: {e}" for m, e in load_errors.items())
        raise JobFailed(
            f"Could not load {len(load_errors)} model(s): {names}. "
            "The results of the other models are kept.",
            "Check the model files (demoai models show ID), then resume the run.",
        )
    store.set_state(run_id, "succeeded", summary=summary, errors={})
    result = {"run_id": run_id, **summary}
    ctx.result(result)
    return result


def _judge_pass(ctx: JobContext, cfg: EvalConfig, store: EvalStore, run_id: str) -> None:
    """Score every sample without a judge score yet, with the judge model loaded once."""
    from app.core.infer.sampling import SamplingParams

    pending = [
        s
        for s in store.samples(run_id)
        if s.scores.get("judge") is None
        and "judge_error" not in s.extra
        and s.prediction is not None
    ]
    if not pending:
        return
    judge_id, path, fmt = resolve_model(ctx.workspace, cfg.judge_model or "")
    ctx.progress(None, f"loading the judge {model_label(ctx.workspace, judge_id)}")
    judge_cfg = EvalConfig.from_dict(
        {**cfg.to_dict(), "chat": True, "max_tokens": 128, "temperature": 0.0, "stop": []}
    )
    runner = _ModelRunner(judge_cfg, path, fmt)
    params = SamplingParams(temperature=0.0, max_tokens=128, seed=cfg.seed)

    def ask(prompt: str) -> str:
        return "".join(
            c.text for c in runner.engine.chat([{"role": "user", "content": prompt}], params)
        )

    try:
        for n, s in enumerate(pending):
            ctx.check_cancelled()
            apply_judge(store, s, ask, cfg.rubric)
            ctx.progress((n + 1) / len(pending), f"judging {n + 1}/{len(pending)}")
    finally:
        runner.close()


def apply_judge(store: EvalStore, s: EvalSample, judge: Callable[[str], str], rubric: str) -> None:
    """Judge one stored sample and store the verdict (an unparseable reply is a sample error)."""
    verdict, prompt = judge_sample(judge, s.input, s.prediction or "", s.reference, rubric)
    s.scores["judge"] = verdict.score
    s.extra["judge_rationale"] = verdict.rationale
    s.extra["judge_raw"] = verdict.raw
    s.extra["judge_prompt"] = prompt
    if verdict.error:
        s.extra["judge_error"] = verdict.error
        s.error = "; ".join(filter(None, [s.error, verdict.error]))
    store.put_sample(s)
