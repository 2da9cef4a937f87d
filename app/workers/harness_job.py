"""Job ``eval.harness``: an lm-evaluation-harness task against a library model.

The job starts the model host (:class:`HostProcess`) for the model and runs the
harness itself (``lm_eval.simple_evaluate``, the pinned version, imported only
here) with its ``local-completions`` client against it: the harness builds the
requests and scores the answers, so the numbers are the harness's. The task's
data is what :mod:`app.core.eval.harness` pinned at submission (library dataset
versions read as Parquet, or the task's own data files); the job runs with
``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` and the ``datasets`` cache in
its run folder, so nothing is downloaded.

Resume: every answered request is stored (JSON, never pickle; keyed by a hash of
the request) in ``requests.sqlite`` in the run folder as soon as its chunk is
done, so a killed or cancelled job, resumed, sends only the requests it had not
finished. lm-eval's own ``use_cache`` is not used: it stores pickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.eval.harness import HarnessConfig, check_code, check_files
from app.workers.host_client import HostProcess

if TYPE_CHECKING:
    from app.core.jobs.context import JobContext

#: Requests sent between two cancel checks and progress events.
CHUNK = 8
_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class RequestCache:
    """Answered harness requests: sha256 of (method, arguments) -> the answer as JSON."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path))
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        self.conn.commit()

    @staticmethod
    def key(method: str, args: Sequence[Any]) -> str:
        blob = json.dumps([method, list(args)], sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i in range(0, len(keys), 500):
            part = list(keys[i : i + 500])
            q = f"SELECT key, value FROM answers WHERE key IN ({','.join('?' * len(part))})"
            for k, v in self.conn.execute(q, part):
                out[k] = json.loads(v)
        return out

    def put_many(self, items: Sequence[tuple[str, Any]]) -> None:
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO answers(key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in items],
            )

    def close(self) -> None:
        self.conn.close()


def _plain(answer: Any) -> Any:
    """A harness answer as JSON keeps it: (float, bool) tuples become lists."""
    if isinstance(answer, tuple):
        return [_plain(a) for a in answer]
    return answer


def _answer(method: str, value: Any) -> Any:
    if method == "loglikelihood" and isinstance(value, list):
        return (float(value[0]), bool(value[1]))
    return value


def _resumable_lm(
    ctx: JobContext, cache: RequestCache, scoring: Any, generating: Any, stats: dict[str, int]
) -> Any:
    """An lm-eval ``LM`` that answers from the cache, else from the inner clients in chunks
    (log-likelihoods from the tokenizing client, generations from the text one)."""
    from lm_eval.api.model import LM

    class ResumableLM(LM):  # type: ignore[misc]
        def _run(self, method: str, requests: list[Any], inner: Any) -> list[Any]:
            keys = [cache.key(method, r.args) for r in requests]
            known = cache.get_many(keys)
            todo = [i for i, k in enumerate(keys) if k not in known]
            stats["cached"] += len(requests) - len(todo)
            total = len(requests)
            if todo and len(todo) < total:
                ctx.log(f"{method}: {total - len(todo)} of {total} requests answered before")
            done = total - len(todo)
            fn: Callable[[list[Any]], list[Any]] = getattr(inner, method)
            for g in range(0, len(todo), CHUNK):
                ctx.check_cancelled()
                group = todo[g : g + CHUNK]
                answers = fn([requests[i] for i in group])
                cache.put_many([(keys[i], _plain(a)) for i, a in zip(group, answers, strict=True)])
                for i, a in zip(group, answers, strict=True):
                    known[keys[i]] = _plain(a)
                stats["sent"] += len(group)
                done += len(group)
                ctx.progress(done / total, f"{method}: {done}/{total} requests")
            return [_answer(method, known[k]) for k in keys]

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
            return self._run("loglikelihood", requests, scoring)

        def loglikelihood_rolling(
            self, requests: list[Any], disable_tqdm: bool = False
        ) -> list[Any]:
            return self._run("loglikelihood_rolling", requests, scoring)

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
            return self._run("generate_until", requests, generating)

    return ResumableLM()


def _task_config(ctx: JobContext, cfg: HarnessConfig) -> dict[str, Any]:
    """The task's YAML as the harness loads it, reading the pinned data."""
    from lm_eval.tasks._yaml_loader import load_yaml

    check_code(cfg.code_files)  # the task's code is what the user approved
    tc: dict[str, Any] = load_yaml(cfg.task_yaml, resolve_func=True)
    data = cfg.data
    files: dict[str, list[str]]
    if "versions" in data:
        from app.core.data.store import DatasetStore

        store = DatasetStore(ctx.workspace)
        files = {s: [str(store.resolve(ref).data_path)] for s, ref in data["versions"].items()}
    else:
        check_files(data)
        files = {s: [e["path"] for e in entries] for s, entries in data["files"].items()}
    kwargs = dict(tc.get("dataset_kwargs") or {})
    kwargs["data_files"] = files
    tc.update(dataset_path=data["loader"], dataset_kwargs=kwargs, dataset_name=None)
    for key in ("test_split", "validation_split", "training_split", "fewshot_split"):
        if tc.get(key) is not None and str(tc[key]) not in files:
            tc[key] = None
    return tc


def _offline(run_dir: Path) -> None:
    """No download: the Hub and datasets offline, their caches in the run folder."""
    hf = run_dir / "hf"
    os.environ.update(_OFFLINE)
    os.environ["HF_HOME"] = str(hf)
    os.environ["HF_DATASETS_CACHE"] = str(hf / "datasets")
    import sys

    if "datasets" in sys.modules:  # read at its import; set it again if it came earlier
        import datasets

        datasets.config.HF_DATASETS_OFFLINE = True
        datasets.config.HF_HUB_OFFLINE = True


def _clients(base_url: str, token: str, model: str, path: Path, fmt: str, n_ctx: int) -> Any:
    """(the log-likelihood client, the generation client): lm-eval's local-completions."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    common: dict[str, Any] = {
        "model": model,
        "base_url": base_url + "/completions",
        "max_retries": 1,
        "max_length": n_ctx,
        "header": {"Authorization": f"Bearer {token}"},
        "timeout": 600,
    }
    has_tok = fmt == "hf" and any(
        (path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")
    )
    if has_tok:  # the model's own tokenizer with BOS, as `demoai eval run` scores
        scoring = LocalCompletionsAPI(
            tokenizer_backend="huggingface", tokenizer=str(path), add_bos_token=True, **common
        )
    else:  # the host's tokenizer (GGUF): /tokenize, without special tokens
        scoring = LocalCompletionsAPI(tokenizer_backend="remote", auth_token=token, **common)
    generating = LocalCompletionsAPI(tokenizer_backend="none", tokenized_requests=False, **common)
    return scoring, generating


def _sample_rows(
    cfg: HarnessConfig, run_id: str, model_id: str, samples: list[dict[str, Any]]
) -> tuple[list[Any], str]:
    """EvalSamples from the harness's samples of the first filter; (rows, that filter)."""
    from app.core.eval.harness_metrics import run_metric_name
    from app.core.eval.runner import EvalSample

    filters = list(dict.fromkeys(str(s.get("filter", "none")) for s in samples))
    first = filters[0] if filters else "none"
    rows = []
    for s in samples:
        if str(s.get("filter", "none")) != first:
            continue
        args = [a for a in _arguments(s)]
        context = str(args[0][0]) if args and args[0] else ""
        scores: dict[str, float | None] = {}
        for m in cfg.harness_metrics:
            name = run_metric_name(m, cfg.output_type)
            if name is None or name not in cfg.metrics:
                continue
            v = s.get(m)
            scores[name] = float(v) if isinstance(v, (int, float)) else None
        extra: dict[str, Any] = {"filter": first, "doc_hash": s.get("doc_hash")}
        target = s.get("target")
        prediction: str | None
        if cfg.output_type == "multiple_choice":
            lls = [float(r[0]) for r in s.get("filtered_resps") or []]
            conts = [str(a[1]) if len(a) > 1 else "" for a in args]
            best = max(range(len(lls)), key=lambda i: lls[i]) if lls else None
            extra.update(choice_logprobs=lls, choice=best, choices=conts)
            prediction = conts[best].strip() if best is not None and best < len(conts) else None
            if isinstance(target, int) and 0 <= target < len(conts):
                target = conts[target].strip()
        else:
            fr = s.get("filtered_resps")
            val = fr[0] if isinstance(fr, list) and fr else fr
            prediction = None if val is None else str(val)
            if not isinstance(val, str):
                extra["response"] = json.loads(json.dumps(_plain(val), default=str))
        rows.append(
            EvalSample(
                run_id=run_id,
                model_id=model_id,
                idx=int(s["doc_id"]),
                input=context,
                prediction=prediction,
                reference=None if target is None else str(target),
                scores=scores,
                error=None,
                latency_ms=None,
                tokens=None,
                extra=extra,
            )
        )
    return rows, first


def _arguments(sample: dict[str, Any]) -> list[Sequence[Any]]:
    """Each request's arguments of a harness sample (a dict in 0.4.13, a list before)."""
    args = sample.get("arguments")
    if isinstance(args, dict):
        out = []
        for v in args.values():
            out.append([v[k] for k in sorted(v)] if isinstance(v, dict) else v)
        return out
    return list(args or [])


def harness_job(ctx: JobContext, **params: Any) -> dict[str, Any]:
    """Job ``eval.harness``: run the task with the harness, store its samples as an eval run."""
    from app.core.eval.runner import EvalStore, finish_run, model_label, resolve_model
    from app.core.jobs.context import JobFailed

    ws = ctx.workspace
    cfg = HarnessConfig.from_dict(params)
    store = EvalStore(ws)
    run_id = ctx.job_id
    store.create_run(run_id, cfg, job_id=ctx.job_id)  # type: ignore[arg-type]
    store.set_state(run_id, "running")
    _offline(ctx.run_dir)
    stats = {"cached": 0, "sent": 0}
    try:
        model_id, path, fmt = resolve_model(ws, cfg.models[0])
        label = model_label(ws, model_id)
        ctx.log(
            f"harness task {cfg.task_name} ({cfg.output_type}) on {label}, "
            f"limit {cfg.limit}, {cfg.num_fewshot}-shot (attempt {ctx.attempt})"
        )
        task = _task_config(ctx, cfg)
        ctx.progress(None, f"starting the model host for {label}")
        host = HostProcess(
            threads=cfg.threads or ws.settings.threads,
            n_ctx=cfg.n_ctx,
            state_dir=ctx.run_dir / "host",
        )
        host.start({model_id: (path, fmt)})
        cache = RequestCache(ctx.run_dir / "requests.sqlite")
        try:
            import lm_eval
            from lm_eval.evaluator import simple_evaluate

            scoring, generating = _clients(
                host.base_url, host.token, model_id, path, fmt, cfg.n_ctx
            )
            lm = _resumable_lm(ctx, cache, scoring, generating, stats)
            try:
                out = simple_evaluate(
                    model=lm,
                    tasks=[task],
                    num_fewshot=cfg.num_fewshot,
                    limit=cfg.limit,
                    log_samples=True,
                    bootstrap_iters=min(cfg.bootstrap, 1000),
                )
            except (OSError, RuntimeError, ValueError, KeyError) as exc:
                raise JobFailed(
                    f"The harness could not run the task {cfg.task_name}: {exc}",
                    f"See the job's log; the host's log is {host.log_path}.",
                ) from exc
        finally:
            cache.close()
            host.stop()
        if out is None:
            raise JobFailed("The harness returned no results.")
        samples = out.get("samples", {}).get(cfg.task_name, [])
        rows, used_filter = _sample_rows(cfg, run_id, model_id, samples)
        for r in rows:
            store.put_sample(r)
        results = out.get("results", {}).get(cfg.task_name, {})
        harness = {
            "version": getattr(lm_eval, "__version__", ""),
            "task": cfg.task_name,
            "filter": used_filter,
            "results": json.loads(json.dumps(results, default=str)),
            "n_samples": out.get("n-samples", {}).get(cfg.task_name),
            "requests": dict(stats),
        }
        ctx.log(
            f"{len(rows)} documents; {stats['sent']} requests sent, "
            f"{stats['cached']} answered before"
        )
    except BaseException:
        store.set_state(run_id, "interrupted")
        raise
    summary: dict[str, Any] = {
        "aggregates": store.aggregates(run_id),
        "rows": len(rows),
        "harness": harness,
    }
    return finish_run(ctx, store, run_id, summary, {})
