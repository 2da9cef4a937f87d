"""Jobs ``data.self_instruct`` and ``data.augment``: the model host plus app.core.data.synth.

The core logic lives in :mod:`app.core.data.synth` (the core may not import the
workers); these entry points start a :class:`HostProcess` for the library model,
hand the synthesizer a completion function over ``/v1/completions`` and stop
the host when done, failed or cancelled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from app.core.data.synth import ModelInfo, SynthOutcome, augment, self_instruct
from app.core.jobs.context import JobFailed
from app.core.openai_client import ModelServerError, OpenAIClient
from app.workers.host_client import HostProcess

if TYPE_CHECKING:
    from app.core.jobs.context import JobContext


class HostCompleter:
    """``POST {base_url}/completions`` (non-streaming) as a :class:`Completer`."""

    def __init__(self, base_url: str, token: str, model: str, timeout: float = 600.0) -> None:
        self.client = OpenAIClient(base_url, token, model=model, timeout=timeout)
        self.model = model
        self.requests = 0

    def __call__(
        self,
        prompt: str,
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
        stop: Sequence[str],
    ) -> str:
        self.requests += 1
        try:
            return self.client.complete(
                prompt, max_tokens=max_tokens, temperature=temperature, seed=seed, stop=list(stop)
            ).text
        except ModelServerError as exc:
            raise JobFailed(exc.message, exc.hint) from None


@contextmanager
def _host(
    ctx: JobContext, model_id: str, threads: int | None, n_ctx: int
) -> Iterator[tuple[HostCompleter, ModelInfo]]:
    from app.core.models.registry import ModelRegistry

    rec = ModelRegistry(ctx.workspace).get(model_id)
    ctx.progress(None, f"starting the model host for {rec.name}")
    host = HostProcess(
        threads=ctx.workspace.settings.threads if threads is None else threads,
        n_ctx=n_ctx,
        state_dir=ctx.run_dir / "host",
    )
    host.start({rec.id: (rec.path, rec.format)})
    try:
        yield HostCompleter(host.base_url, host.token, rec.id), ModelInfo(rec.id, rec.sha256)
    finally:
        host.stop()


def _finish(ctx: JobContext, outcome: SynthOutcome, what: str) -> dict[str, Any]:
    result = outcome.result()
    ctx.result(result)
    if outcome.version is None:
        raise JobFailed(
            f"No {what} passed the filters in {outcome.attempts} attempts "
            f"(rejects: {json.dumps(result['rejects'])}).",
            "Try another seed, a higher temperature, more max_tokens or a larger model.",
        )
    return result


def self_instruct_job(
    ctx: JobContext,
    dataset: str,
    model: str,
    n_new: int = 10,
    instruction_column: str = "instruction",
    input_column: str | None = "input",
    output_column: str = "output",
    seed: int = 0,
    temperature: float = 0.8,
    max_tokens: int = 64,
    rouge_threshold: float = 0.7,
    num_shots: int = 6,
    generate_input: bool = False,
    max_attempts: int | None = None,
    threads: int | None = None,
    n_ctx: int = 4096,
) -> dict[str, Any]:
    """Job ``data.self_instruct``: new instruction rows as a new version of ``dataset``."""
    with _host(ctx, model, threads, n_ctx) as (complete, info):
        outcome = self_instruct(
            ctx.workspace,
            dataset,
            complete,
            info,
            instruction_column=instruction_column,
            input_column=input_column,
            output_column=output_column,
            n_new=n_new,
            seed=seed,
            temperature=temperature,
            max_tokens=max_tokens,
            rouge_threshold=rouge_threshold,
            num_shots=num_shots,
            generate_input=generate_input,
            max_attempts=max_attempts,
            progress=ctx.progress,
            check_cancelled=ctx.check_cancelled,
            log=ctx.log,
        )
    return _finish(ctx, outcome, "instruction")


def augment_job(
    ctx: JobContext,
    dataset: str,
    model: str,
    column: str,
    n: int = 1,
    seed: int = 0,
    temperature: float = 0.9,
    max_tokens: int = 64,
    near_dup_threshold: float = 0.8,
    max_rows: int | None = None,
    threads: int | None = None,
    n_ctx: int = 4096,
    prompt_template: str | None = None,
) -> dict[str, Any]:
    """Job ``data.augment``: ``n`` paraphrases of ``column`` per row as a new version."""
    with _host(ctx, model, threads, n_ctx) as (complete, info):
        outcome = augment(
            ctx.workspace,
            dataset,
            complete,
            info,
            column=column,
            n=n,
            seed=seed,
            temperature=temperature,
            max_tokens=max_tokens,
            near_dup_threshold=near_dup_threshold,
            max_rows=max_rows,
            prompt_template=prompt_template,
            progress=ctx.progress,
            check_cancelled=ctx.check_cancelled,
            log=ctx.log,
        )
    return _finish(ctx, outcome, "paraphrase")
