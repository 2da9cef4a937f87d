"""The steps of a first run and whether each is done, read from the workspace (no Qt).

A step is done when the workspace holds what it produces: a model in the library,
a dataset, a conversation the model answered, a finished training run, a finished
evaluation, a finished export. Each check is one indexed COUNT query, so the Home
pane can recompute them on every change broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.workspace import Workspace


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    what: str  # what the step is for, one sentence
    pane: str  # the pane that does it
    pane_name: str
    done: bool
    detail: str  # what the workspace holds for it, or what is missing


#: Change-broadcast topics that can change a step (see app/ui/qt_changes.py).
TOPICS = frozenset(
    {"models", "datasets", "versions", "conversations", "runs", "arena", "jobs", "exports"}
)


def _count(ws: Workspace, sql: str, params: tuple[object, ...] = ()) -> int:
    row = ws.db.query_one(sql, params)
    return int(next(iter(row.values()))) if row else 0


def _newest_name(ws: Workspace, table: str) -> str:
    row = ws.db.query_one(f"SELECT name FROM {table} ORDER BY created_at DESC LIMIT 1")
    return str(row["name"]) if row else ""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def first_run_steps(ws: Workspace) -> list[Step]:
    """The six steps of the core loop, in order, with what is done."""
    models = _count(ws, "SELECT COUNT(*) FROM models")
    datasets = _count(ws, "SELECT COUNT(*) FROM datasets")
    chats = _count(
        ws,
        "SELECT COUNT(DISTINCT conversation_id) FROM messages WHERE role = 'assistant' "
        "AND error IS NULL",
    )
    trained = _count(
        ws, "SELECT COUNT(*) FROM jobs WHERE kind = 'train.lora' AND state = 'succeeded'"
    )
    evals = _count(ws, "SELECT COUNT(*) FROM eval_runs WHERE state = 'succeeded'")
    votes = _count(ws, "SELECT COUNT(*) FROM arena_matches WHERE vote IS NOT NULL")
    exports = _count(ws, "SELECT COUNT(*) FROM exports WHERE state = 'succeeded'")

    def held(n: int, word: str, newest: str = "") -> str:
        return f"{_plural(n, word)}" + (f", newest: {newest}" if newest else "")

    return [
        Step(
            "model",
            "Add a model",
            "A small model to try: the sample is Gemma 3 270M, a 253 MB GGUF that runs on a CPU. "
            "It is a base model, so Chat continues your text rather than following instructions.",
            "models",
            "Models",
            models > 0,
            held(models, "model", _newest_name(ws, "models")) if models else "No model yet.",
        ),
        Step(
            "data",
            "Add data",
            "A question/answer table to teach it: the sample has 40 questions about the "
            "workplace policies of an invented company.",
            "datasets",
            "Datasets",
            datasets > 0,
            held(datasets, "dataset", _newest_name(ws, "datasets"))
            if datasets
            else "No dataset yet.",
        ),
        Step(
            "chat",
            "Chat with the model",
            "Ask it one of the sample questions to see how it answers before training.",
            "chat",
            "Chat",
            chats > 0,
            f"{_plural(chats, 'conversation')} answered" if chats else "No answered chat yet.",
        ),
        Step(
            "finetune",
            "Fine-tune it on the data",
            "Train a LoRA adapter on a Hugging Face model (import its folder in Models: a GGUF "
            "file cannot be trained). The form maps question to the user turn and answer to "
            "the assistant turn.",
            "finetune",
            "Fine-tune",
            trained > 0,
            f"{_plural(trained, 'training run')} finished" if trained else "No finished run yet.",
        ),
        Step(
            "evaluate",
            "Evaluate against the base",
            "Score the fine-tuned model and its base on the same rows, or vote blind in the arena.",
            "evaluate",
            "Evaluate & Arena",
            evals > 0 or votes > 0,
            ", ".join(
                x
                for x in (
                    f"{_plural(evals, 'evaluation')} finished" if evals else "",
                    f"{_plural(votes, 'arena vote')}" if votes else "",
                )
                if x
            )
            or "No evaluation yet.",
        ),
        Step(
            "export",
            "Export it",
            "A verified GGUF file to run anywhere, or a Docker bundle for IT.",
            "export",
            "Export",
            exports > 0,
            f"{_plural(exports, 'export')} finished" if exports else "No export yet.",
        ),
    ]
