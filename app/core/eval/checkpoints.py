"""Evaluate every checkpoint of a training run: perplexity per step, to plot beside the loss.

Checkpoints are given as explicit ``(step, adapter_folder)`` pairs, where each
folder is a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``);
:func:`find_checkpoints` lists such folders under ``runs/<job>/checkpoints/``.
Training writes each resume checkpoint in that layout too (next to its raw
optimizer state), so every checkpoint of a run is evaluable; checkpoints written
before that (``adapter.safetensors`` only) are skipped.

:func:`eval_checkpoints_job` is the job kind ``eval.checkpoints``: for a
``train.lora`` job it scores the base model (step 0), each checkpoint and the
final adapter on the run's held-out texts, and records the points as metric
events ``ckpt_perplexity`` and ``ckpt_eval_loss`` (= log perplexity) keyed by
step, which the Fine-tune pane draws on the run's loss plot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError, NotFoundError
from app.core.jobs.context import JobContext
from app.core.store.files import atomic_write_json

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

#: The job kind, and the metric events it records (keyed by training step).
KIND = "eval.checkpoints"
METRIC_PPL = "ckpt_perplexity"
METRIC_LOSS = "ckpt_eval_loss"

_STEP = re.compile(r"checkpoint-(\d+)$")


def find_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of each ``checkpoints/checkpoint-<step>`` holding a PEFT adapter."""
    root = Path(run_dir)
    base = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    out = []
    for p in base.iterdir() if base.is_dir() else []:
        m = _STEP.search(p.name)
        if m and p.is_dir() and (p / "adapter_config.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def evaluate_checkpoints(
    base_model: str | Path,
    checkpoints: Sequence[tuple[int, str | Path]],
    texts: Sequence[str],
    *,
    context: int = 256,
    stride: int | None = None,
    threads: int = 0,
    include_base: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> list[dict[str, Any]]:
    """Sliding-window perplexity of ``texts`` (joined by blank lines) for the base and each step.

    Returns ``[{"step", "path", "perplexity", "n_tokens"}]`` sorted by step (the base is step 0).
    """
    from app.core.eval.perplexity import HFScorer, text_perplexity
    from app.core.infer.engines import EngineOptions, open_engine

    if not texts:
        raise ConfigError("Give some text to compute the perplexity on.")
    text = "\n\n".join(texts)
    todo: list[tuple[int, Path]] = [(int(s), Path(p)) for s, p in checkpoints]
    if include_base:
        todo.insert(0, (0, Path(base_model)))
    rows = []
    for step, path in sorted(todo, key=lambda t: t[0]):
        opts = EngineOptions(threads=threads, base_path=Path(base_model))
        engine: Any = open_engine(path, None, opts)
        try:
            res = text_perplexity(
                HFScorer(engine.model, engine.tokenizer), text, context=context, stride=stride
            )
        finally:
            engine.close()
        rows.append(
            {
                "step": step,
                "path": str(path),
                "perplexity": res.perplexity,
                "n_tokens": res.n_tokens,
            }
        )
        if on_step is not None:
            on_step(step, res.perplexity)
    return rows


# ----------------------------------------------------------------------------- the job


def run_adapters(run_dir: str | Path, result: dict[str, Any] | None) -> list[tuple[int, Path]]:
    """Checkpoints of a training run plus its final adapter (at ``result['steps']``), by step."""
    found = dict(find_checkpoints(Path(run_dir) / "checkpoints"))
    r = result or {}
    adapter = Path(str(r.get("adapter") or Path(run_dir) / "adapter"))
    if r.get("steps") is not None and (adapter / "adapter_config.json").is_file():
        found[int(r["steps"])] = adapter
    return sorted(found.items())


def render_record(record: dict[str, Any], data_format: str, tokenizer: Any) -> str:
    """One training record as the text the model was trained on (chat template applied)."""
    from app.core.train.data import to_messages

    if data_format == "prompt_completion":
        return str(record["prompt"]) + str(record["completion"])
    text: str = tokenizer.apply_chat_template(to_messages(record, data_format), tokenize=False)
    return text


def training_texts(
    config: Any, tokenizer: Any, max_samples: int | None = None
) -> tuple[list[str], str]:
    """Texts of a run's held-out split (all records without one), and which they are.

    The split is :func:`~app.core.train.data.split_eval` over the data file's records
    with the run's seed and ``eval_fraction`` (the training's own split, unless some
    records were dropped for having nothing to learn).
    """
    from app.core.train.data import read_records, split_eval

    records = read_records(Path(config.data_path).expanduser())
    _, held = split_eval(len(records), config.eval_fraction, config.seed)
    which = "held-out records" if held else "training records (the run has no eval split)"
    picked = [records[i] for i in held] if held else records
    if max_samples:
        picked = picked[:max_samples]
    return [render_record(r, config.data_format, tokenizer) for r in picked], which


def dataset_texts(
    workspace: Workspace, ref: str, column: str, max_samples: int | None = None
) -> list[str]:
    """The non-empty strings of one column of a dataset version."""
    from app.core.data.store import DatasetStore

    table = DatasetStore(workspace).read_table(ref, columns=[column])
    if max_samples:
        table = table.slice(0, max_samples)
    return [str(v) for v in table.column(column).to_pylist() if v not in (None, "")]


def eval_checkpoints_job(ctx: JobContext, **params: Any) -> dict[str, Any]:
    """Job ``eval.checkpoints``: perplexity of each checkpoint of a ``train.lora`` run.

    Params: ``train_job`` (the training job id, required); ``metric`` ("perplexity");
    ``max_samples`` (64); ``dataset`` + ``column`` (texts from a dataset version instead
    of the run's held-out records); ``context`` (256) and ``stride`` (sliding window);
    ``include_base`` (True: the base model as step 0); ``threads`` (0: automatic).
    """
    from transformers import AutoTokenizer

    from app.core.jobs.context import JobFailed
    from app.core.jobs.store import JobService
    from app.core.train.config import TrainConfig

    known = {
        "train_job",
        "metric",
        "max_samples",
        "dataset",
        "column",
        "context",
        "stride",
        "include_base",
        "threads",
    }
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"Unknown option(s) for {KIND}: {', '.join(unknown)}.")
    metric = str(params.get("metric") or "perplexity")
    if metric != "perplexity":
        raise ConfigError(f"Unknown checkpoint metric '{metric}'.", "Use 'perplexity'.")
    train_id = str(params.get("train_job") or "")
    if not train_id:
        raise ConfigError("Name the training job whose checkpoints to evaluate (train_job).")
    try:
        train_job = JobService(ctx.workspace).get(train_id)
    except NotFoundError as exc:
        raise JobFailed(f"There is no training job {train_id}.") from exc
    if train_job.kind != "train.lora":
        raise JobFailed(f"Job {train_id} is a {train_job.kind} job, not a training run.")
    config = TrainConfig.from_dict(train_job.params)
    base = Path(config.base_model).expanduser()
    adapters = run_adapters(train_job.run_dir, train_job.result)
    if not adapters:
        raise JobFailed(
            f"The run {train_id} has no checkpoint and no final adapter to evaluate.",
            "Train with save_every > 0, or let the run finish.",
        )
    max_samples = int(params.get("max_samples") or 64)
    if params.get("dataset"):
        if not params.get("column"):
            raise ConfigError("Give the dataset column that holds the texts (column).")
        texts = dataset_texts(
            ctx.workspace, str(params["dataset"]), str(params["column"]), max_samples
        )
        which = f"column {params['column']} of {params['dataset']}"
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        texts, which = training_texts(config, tokenizer, max_samples)
    if not texts:
        raise JobFailed("There is no text to compute the perplexity on.")
    include_base = bool(params.get("include_base", True))
    total = len(adapters) + (1 if include_base else 0)
    ctx.log(
        f"perplexity of {len(adapters)} checkpoint(s) of {train_id}"
        f"{' and the base model' if include_base else ''} on {len(texts)} {which}"
    )
    done = 0

    def on_step(step: int, ppl: float) -> None:
        nonlocal done
        done += 1
        ctx.metric(METRIC_PPL, step, ppl)
        ctx.metric(METRIC_LOSS, step, math.log(ppl))
        ctx.progress(done / total, f"step {step}: perplexity {ppl:.3f}")
        ctx.check_cancelled()

    ctx.progress(0.0, "loading the models")
    rows = evaluate_checkpoints(
        base,
        adapters,
        texts,
        context=int(params.get("context") or 256),
        stride=int(params["stride"]) if params.get("stride") else None,
        threads=int(params.get("threads") or 0),
        include_base=include_base,
        on_step=on_step,
    )
    final_step = int((train_job.result or {}).get("steps") or -1)
    for r in rows:
        r["eval_loss"] = math.log(r["perplexity"])
        r["kind"] = (
            "base"
            if include_base and r["step"] == 0
            else ("final" if r["step"] == final_step else "checkpoint")
        )
    result = {
        "train_job": train_id,
        "metric": metric,
        "texts": which,
        "n_samples": len(texts),
        "points": rows,
    }
    atomic_write_json(ctx.run_dir / "checkpoint_eval.json", result)
    ctx.artifact("checkpoint_eval", ctx.run_dir / "checkpoint_eval.json")
    ctx.result(result)
    return result
