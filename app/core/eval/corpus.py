"""Corpus perplexity as an eval run (``demoai eval perplexity``).

A text file, or one column of a dataset version (its rows joined by a blank
line), is tokenized with BOS and cut into windows as ``llama-perplexity`` does
(method ``llama_cpp``: chunks of ``n_ctx`` tokens, first token replaced by BOS,
the second half scored) or as the Hugging Face guide does (method ``sliding``:
windows of ``n_ctx`` moved by ``stride``, each token scored once). Each window is
one sample of the run (its summed negative log-likelihood and token count in
``extra``); the run's aggregate is ``exp(sum nll / sum tokens)`` with a bootstrap
CI over windows (:func:`corpus_aggregate`), so ``eval show/compare/export/gate``
read it like any other run.

The job is the ``eval.run`` kind with ``task = "corpus_perplexity"`` in its
parameters (:func:`app.core.eval.runner.run_eval` hands it to :func:`run_perplexity`);
it resumes after the windows already stored.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError

if TYPE_CHECKING:
    from app.core.jobs.context import JobContext
    from app.core.jobs.store import Job
    from app.core.workspace.workspace import Workspace

TASK = "corpus_perplexity"
METRIC = "corpus_perplexity"
METHODS = ("llama_cpp", "sliding")
#: Largest text accepted (bytes); a bigger corpus gives a clear error, not a swap storm.
MAX_TEXT_BYTES = 64 << 20
#: Rows of a dataset column are joined with this.
ROW_SEPARATOR = "\n\n"
_PREVIEW_TOKENS = 24


@dataclass
class PerplexityConfig:
    """What a corpus perplexity run does; saved as the job's parameters and the run's config."""

    models: list[str]
    text_path: str | None = field(default=None, metadata={"help": "a UTF-8 text file"})
    dataset: str = field(default="", metadata={"help": "dataset ID[@VERSION] (with column)"})
    column: str | None = field(default=None, metadata={"help": "the dataset's text column"})
    method: str = "llama_cpp"
    n_ctx: int = 512
    stride: int | None = field(default=None, metadata={"help": "sliding only; default n_ctx"})
    threads: int = 0
    bootstrap: int = 1000
    seed: int = 0
    name: str = ""
    text_sha256: str | None = None  # set on submission: the file may not change afterwards
    task: str = TASK
    metrics: list[str] = field(default_factory=lambda: [METRIC])

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            self.models = [self.models]
        if not self.models:
            raise ConfigError("Give at least one model.")
        if (self.text_path is None) == (not self.column):
            raise ConfigError(
                "Give either a text file or a dataset column.",
                "Use --text FILE, or --dataset D[@V] --column C.",
            )
        if self.column and not self.dataset:
            raise ConfigError("A column needs its dataset (--dataset D[@V]).")
        if self.method not in METHODS:
            raise ConfigError(
                f"Unknown perplexity method '{self.method}'.", "Use 'llama_cpp' or 'sliding'."
            )
        if self.n_ctx < 16:
            raise ConfigError("The context (--n-ctx) must be at least 16 tokens.")
        if self.stride is not None and not 0 < self.stride <= self.n_ctx:
            raise ConfigError("The stride must be between 1 and the context.")
        if self.bootstrap < 0:
            raise ConfigError("bootstrap must be 0 (no CIs) or more.")
        self.metrics = [METRIC]
        self.task = TASK

    @property
    def judge_model(self) -> None:  # what EvalStore.create_run reads of an EvalConfig
        return None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PerplexityConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown perplexity settings: {', '.join(unknown)}.")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_perplexity_params(params: Mapping[str, Any]) -> bool:
    """True for the parameters of a corpus perplexity job (an ``eval.run`` kind)."""
    return params.get("task") == TASK


# -- the text -----------------------------------------------------------------------------
def _read_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"Cannot read the text file {path}: {exc.strerror or exc}.") from exc
    if not path.is_file():
        raise ConfigError(f"{path} is not a file.")
    if size > MAX_TEXT_BYTES:
        raise ConfigError(
            f"The text file is {size / 2**20:.0f} MiB; corpus perplexity reads at most "
            f"{MAX_TEXT_BYTES >> 20} MiB.",
            "Use a part of the text.",
        )
    return path.read_bytes()


def load_text(ws: Workspace, cfg: PerplexityConfig) -> str:
    """The corpus: the file's text (checked against its recorded sha256) or the joined column."""
    if cfg.text_path is not None:
        data = _read_file(Path(cfg.text_path))
        if cfg.text_sha256 and hashlib.sha256(data).hexdigest() != cfg.text_sha256:
            raise ConfigError(
                f"The text file {cfg.text_path} changed after the run was started.",
                "Start a new run on the file as it is now.",
            )
        return data.decode("utf-8", errors="replace")
    from app.core.data.store import DatasetStore

    store = DatasetStore(ws)
    ver = store.resolve(cfg.dataset)
    ref = f"{ver.dataset_id}@{ver.hash}"
    columns = list(store.parquet_file(ref).schema_arrow.names)
    if cfg.column not in columns:
        raise ConfigError(
            f"The dataset {cfg.dataset} has no column '{cfg.column}'. "
            f"Its columns are: {', '.join(columns)}.",
            "Choose one of these columns.",
        )
    col = store.read_table(ref, columns=[str(cfg.column)]).column(0)
    parts: list[str] = []
    size = 0
    for v in col.to_pylist():
        if v is None:
            continue
        s = v if isinstance(v, str) else str(v)
        size += len(s) + len(ROW_SEPARATOR)
        if size > MAX_TEXT_BYTES:
            raise ConfigError(
                f"The column '{cfg.column}' holds more than {MAX_TEXT_BYTES >> 20} MiB of text.",
                "Evaluate on a smaller version of the dataset.",
            )
        parts.append(s)
    return ROW_SEPARATOR.join(parts)


# -- scorers ------------------------------------------------------------------------------
def open_corpus_scorer(path: Path, fmt: str, cfg: PerplexityConfig) -> Any:
    """A GGUFCorpusScorer or HFCorpusScorer for the model (its engine is closed with it)."""
    from app.core.eval.perplexity import GGUFCorpusScorer, HFCorpusScorer
    from app.core.infer.engines import EngineOptions, open_engine

    opts = EngineOptions(threads=cfg.threads, n_ctx=cfg.n_ctx)
    if fmt == "gguf":
        return GGUFCorpusScorer(path, context=cfg.n_ctx, threads=opts.n_threads)
    engine: Any = open_engine(path, fmt, opts)
    limit = int(getattr(engine.model.config, "max_position_embeddings", 0) or 0)
    if limit and cfg.n_ctx > limit:
        engine.close()
        raise ConfigError(f"A context of {cfg.n_ctx} tokens is more than the model's {limit}.")
    scorer = HFCorpusScorer(engine.model, engine.tokenizer)
    scorer.close = engine.close  # type: ignore[attr-defined]
    return scorer


def _tokenizer_only(path: Path, fmt: str) -> Any:
    """Something with ``tokenize(text, add_special=True)`` that loads fast, or None."""
    if fmt == "gguf":
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose

        set_verbose(False)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        try:
            model: Any = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
        except (ValueError, OSError) as exc:
            from app.core.infer.engines import ModelLoadError

            raise ModelLoadError(f"llama.cpp could not read {path.name}: {exc}") from exc

        class _Vocab:
            def tokenize(self, text: str, add_special: bool = True) -> list[int]:
                return list(model.tokenize(text.encode("utf-8"), add_special, False))

            def close(self) -> None:
                model.close()

        return _Vocab()
    if fmt == "hf" and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)

        class _Tok:
            def tokenize(self, text: str, add_special: bool = True) -> list[int]:
                return list(tok(text, add_special_tokens=add_special)["input_ids"])

            def close(self) -> None:
                pass

        return _Tok()
    return None


def _too_short(n_tokens: int, cfg: PerplexityConfig, label: str) -> ConfigError:
    return ConfigError(
        f"The text is too short for corpus perplexity with {label}: it has {n_tokens} tokens "
        f"and a context of {cfg.n_ctx} needs at least {2 * cfg.n_ctx} (two contexts).",
        "Use a longer text or a smaller context (--n-ctx).",
    )


# -- submission ---------------------------------------------------------------------------
def prepare_perplexity(ws: Workspace, cfg: PerplexityConfig) -> PerplexityConfig:
    """Check models, text and length; pin the dataset version or the file's hash.

    Raises ConfigError (too short, missing column, unreadable file) or NotFoundError
    before any job exists.
    """
    from app.core.eval.runner import model_label, resolve_model

    resolved = [resolve_model(ws, m) for m in cfg.models]
    data = cfg.to_dict()
    if cfg.text_path is not None:
        path = Path(cfg.text_path).expanduser().resolve()
        raw = _read_file(path)
        sha = hashlib.sha256(raw).hexdigest()
        data.update(text_path=str(path), text_sha256=sha, dataset=f"text:{path.name}@{sha[:12]}")
        text = raw.decode("utf-8", errors="replace")
    else:
        from app.core.data.store import DatasetStore

        ver = DatasetStore(ws).resolve(cfg.dataset)
        data["dataset"] = f"{ver.dataset_id}@{ver.hash}"
        text = load_text(ws, PerplexityConfig.from_dict(data))
    pinned = PerplexityConfig.from_dict(data)
    # No tokenizer yields fewer tokens than a quarter of the bytes... but each token
    # covers at least one byte: fewer bytes than two contexts is surely too short.
    n_bytes = len(text.encode("utf-8"))
    if n_bytes + 1 < 2 * cfg.n_ctx:
        raise _too_short(n_bytes + 1, cfg, "any model")
    for model_id, path, fmt in resolved:
        tok = _tokenizer_only(path, fmt)
        if tok is None:
            continue  # checked in the job (an adapter's tokenizer comes with its base)
        try:
            n = len(tok.tokenize(text, add_special=True))
        finally:
            tok.close()
        if n < 2 * cfg.n_ctx:
            raise _too_short(n, cfg, model_label(ws, model_id))
    return pinned


def submit_perplexity(ws: Workspace, cfg: PerplexityConfig) -> Job:
    """Validate (see :func:`prepare_perplexity`), record the run and queue its job."""
    from app.core.eval.runner import KIND, EvalStore
    from app.core.jobs.store import JobService

    pinned = prepare_perplexity(ws, cfg)
    params = pinned.to_dict()
    title = f"Perplexity of {', '.join(cfg.models)} on {pinned.dataset}"
    job = JobService(ws).submit(KIND, params, title=title[:120])
    EvalStore(ws).create_run(job.id, pinned, job_id=job.id)
    return job


# -- aggregate ----------------------------------------------------------------------------
def corpus_aggregate(
    nlls: Sequence[float], counts: Sequence[int], *, n_boot: int, seed: int
) -> tuple[float, float, float]:
    """(exp(sum nll / sum tokens), CI low, CI high): a seeded percentile bootstrap over windows."""
    import numpy as np

    nll = np.asarray(nlls, dtype=np.float64)
    cnt = np.asarray(counts, dtype=np.float64)
    if nll.size == 0 or cnt.sum() <= 0:
        return math.nan, math.nan, math.nan
    value = math.exp(float(nll.sum() / cnt.sum()))
    if n_boot <= 0 or nll.size == 1:
        return value, value, value
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, nll.size, size=(n_boot, nll.size))
    stats = np.exp(nll[idx].sum(axis=1) / cnt[idx].sum(axis=1))
    return value, float(np.quantile(stats, 0.025)), float(np.quantile(stats, 0.975))


# -- the job ------------------------------------------------------------------------------
def run_perplexity(ctx: JobContext, **params: Any) -> dict[str, Any]:
    """The job: score every window of the corpus with each model; resumes after stored windows."""
    from app.core.errors import DemoAIError
    from app.core.eval.perplexity import corpus_spans
    from app.core.eval.runner import (
        EvalSample,
        EvalStore,
        finish_run,
        model_label,
        resolve_model,
    )

    ws: Workspace = ctx.workspace
    cfg = PerplexityConfig.from_dict(params)
    store = EvalStore(ws)
    run_id = ctx.job_id
    store.create_run(run_id, cfg, job_id=ctx.job_id)  # no-op when submitted
    store.set_state(run_id, "running")
    load_errors: dict[str, str] = {}
    windows: dict[str, int] = {}
    try:
        text = load_text(ws, cfg)
        ctx.log(
            f"corpus perplexity ({cfg.method}, n_ctx {cfg.n_ctx}) of {len(cfg.models)} model(s) "
            f"on {cfg.dataset}: {len(text)} characters (attempt {ctx.attempt})"
        )
        n_models = len(cfg.models)
        for m_i, model_ref in enumerate(cfg.models):
            model_id, path, fmt = resolve_model(ws, model_ref)
            label = model_label(ws, model_id)
            ctx.progress(m_i / n_models, f"loading {label}")
            try:
                scorer = open_corpus_scorer(path, fmt, cfg)
            except DemoAIError as exc:
                load_errors[model_id] = str(exc)
                ctx.log(f"{label} could not be loaded: {exc}", "error")
                continue
            try:
                tokens = scorer.tokenize(text, add_special=True)
                if len(tokens) < 2 * cfg.n_ctx:
                    raise _too_short(len(tokens), cfg, label)
                spans = corpus_spans(
                    tokens, context=cfg.n_ctx, method=cfg.method, bos=scorer.bos_id,
                    stride=cfg.stride,
                )  # fmt: skip
                windows[model_id] = len(spans)
                done = store.done_indices(run_id, model_id)
                todo = [i for i in range(len(spans)) if i not in done]
                if done:
                    ctx.log(f"{label}: {len(done)} windows already stored, {len(todo)} to go")
                per_call = getattr(scorer, "n_seq", None) or scorer.batch_size(spans[0])
                t0 = time.perf_counter()
                for g in range(0, len(todo), per_call):
                    ctx.check_cancelled()
                    group = todo[g : g + per_call]
                    nlls = scorer.score([spans[i] for i in group])
                    for i, nll in zip(group, nlls, strict=True):
                        sp = spans[i]
                        n = sp.n_scored
                        preview = scorer.detokenize(
                            sp.tokens[sp.first + 1 : sp.first + 1 + _PREVIEW_TOKENS]
                        )
                        store.put_sample(
                            EvalSample(
                                run_id=run_id,
                                model_id=model_id,
                                idx=i,
                                input=preview,
                                prediction=None,
                                reference=None,
                                scores={METRIC: math.exp(nll / n) if n else None},
                                error=None,
                                latency_ms=None,
                                tokens=n,
                                extra={"nll": nll, "n_tokens": n, "start": sp.start},
                            )
                        )
                    n_done = g + len(group)
                    rate = sum(spans[i].n_scored for i in todo[:n_done]) / max(
                        time.perf_counter() - t0, 1e-9
                    )
                    ctx.progress(
                        (m_i + (len(done) + n_done) / len(spans)) / n_models,
                        f"{label}: window {len(done) + n_done}/{len(spans)} "
                        f"({rate:.0f} scored tokens/s)",
                    )
            finally:
                scorer.close()
    except BaseException:
        store.set_state(run_id, "interrupted", errors=load_errors or None)
        raise
    summary: dict[str, Any] = {"aggregates": store.aggregates(run_id), "windows": windows}
    return finish_run(ctx, store, run_id, summary, load_errors)
