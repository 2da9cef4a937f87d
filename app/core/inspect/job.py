"""The inspector's entry points: a report on one model, and the ``models.inspect`` job."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import NotFoundError
from app.core.inspect.architecture import architecture
from app.core.inspect.tensors import open_tensors

if TYPE_CHECKING:
    from app.core.jobs.context import JobContext
    from app.core.workspace.workspace import Workspace

ProgressFn = Callable[[float | None, str], None]
REPORT_NAME = "inspect.json"
ATTENTION_NAME = "attention.npy"


@dataclass(frozen=True)
class Target:
    """A model to inspect: a library model or a path on disk."""

    path: Path
    label: str
    model_id: str | None
    is_adapter: bool
    sha256: dict[str, str]  # file name -> sha256 known from the library


def cache_dir(ws: Workspace) -> Path:
    return ws.root / "cache" / "inspect"


def resolve(ws: Workspace, ref: str) -> Target:
    """A library model (id, name, id prefix) or else an existing file or folder."""
    from app.core.models import ModelRegistry

    reg = ModelRegistry(ws)
    try:
        rec = reg.get(ref)
    except NotFoundError:
        p = Path(ref).expanduser()
        if not p.exists():
            raise NotFoundError(
                f"No library model and no file or folder called '{ref}'.",
                "Give a model id or name (`demoai models list`), or a path to a .gguf file, "
                "a .safetensors file or a model folder.",
            ) from None
        p = p.resolve()
        return Target(p, p.name, None, (p / "adapter_config.json").is_file(), {})
    sha = {Path(f.relpath).name: f.sha256 for f in reg.files(rec.id)}
    return Target(rec.path, rec.name, rec.id, rec.format == "lora", sha)


def inspect_model(
    ws: Workspace,
    model: str,
    *,
    stats: bool = False,
    compare: str | None = None,
    prompt: str | None = None,
    max_tokens: int = 24,
    attention_file: Path | None = None,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """The report: architecture always; weight statistics, LoRA updates, comparison, and a
    prompt through the model (``probe``: loads the model, so only in a worker) on request."""
    target = resolve(ws, model)
    ts = open_tensors(target.path)
    report: dict[str, Any] = {
        "model": {
            "ref": model,
            "id": target.model_id,
            "name": target.label,
            "path": str(target.path),
            "adapter": target.is_adapter,
        },
        "architecture": architecture(ts),
    }
    steps = [
        s
        for s, on in (
            ("stats", stats),
            ("lora", stats and target.is_adapter),
            ("compare", compare is not None),
            ("probe", bool(prompt)),
        )
        if on
    ]

    def sub(i: int) -> Callable[[float, str], None]:
        def report_progress(fraction: float, message: str) -> None:
            if progress:
                progress((i + fraction) / len(steps), f"{steps[i]}: {message}")

        return report_progress

    for i, step in enumerate(steps):
        if step == "stats":
            from app.core.inspect.stats import model_stats

            report["stats"] = model_stats(
                ts,
                cache_dir=cache_dir(ws),
                known_sha256=target.sha256,
                progress=sub(i),
                cancelled=cancelled,
            )
        elif step == "lora":
            from app.core.inspect.lora import lora_updates

            report["lora"] = lora_updates(target.path, progress=sub(i), cancelled=cancelled)
        elif step == "compare" and compare is not None:
            from app.core.inspect.compare import compare_models

            other = resolve(ws, compare)
            report["compare"] = compare_models(
                ts, open_tensors(other.path), progress=sub(i), cancelled=cancelled
            )
            report["compare"]["other_model"] = {
                "ref": compare,
                "id": other.model_id,
                "name": other.label,
            }
        elif step == "probe" and prompt:
            from app.core.inspect.probe import probe

            found = probe(
                target.path,
                prompt,
                max_tokens=max_tokens,
                attention_file=attention_file,
                progress=functools.partial(_known_fraction, sub(i)),
            )
            found.pop("_attention_array", None)
            report["probe"] = found
    return report


def _known_fraction(
    report: Callable[[float, str], None], fraction: float | None, message: str
) -> None:
    report(fraction or 0.0, message)


def inspect_job(
    ctx: JobContext,
    model: str,
    stats: bool = True,
    compare: str | None = None,
    prompt: str | None = None,
    max_tokens: int = 24,
) -> dict[str, Any]:
    """Job ``models.inspect``: write the report to ``runs/<job>/inspect.json``."""
    from app.core.store import atomic_write_text

    t0 = time.monotonic()
    report = inspect_model(
        ctx.workspace,
        model,
        stats=stats,
        compare=compare,
        prompt=prompt,
        max_tokens=max_tokens,
        attention_file=ctx.run_dir / ATTENTION_NAME,
        progress=ctx.progress,
        cancelled=ctx.cancelled,
    )
    path = ctx.run_dir / REPORT_NAME
    atomic_write_text(path, json.dumps(report, allow_nan=True) + "\n")
    ctx.artifact("inspect-report", path)
    result: dict[str, Any] = {
        "report": str(path),
        "model": report["model"],
        "tensor_count": report["architecture"]["tensor_count"],
        "params": report["architecture"]["params"],
        "seconds": round(time.monotonic() - t0, 3),
    }
    if "stats" in report:
        result["outliers"] = [t["name"] for t in report["stats"]["tensors"] if t["outlier"]]
        result["cached"] = report["stats"]["cached"]
    if report.get("probe"):
        result["answer"] = report["probe"]["text"]
        if report["probe"].get("attention"):
            ctx.artifact("attention", ctx.run_dir / ATTENTION_NAME)
    if "compare" in report:
        result["compared"] = len(report["compare"]["tensors"])
    ctx.result(result)
    return result


def load_report(path: str | Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text("utf-8"))
    return data
