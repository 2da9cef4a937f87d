"""Synthetic data: Self-Instruct and paraphrase augmentation with a local model.

Self-Instruct (Wang et al., 2022): sample a few seed (and earlier generated)
instructions into a few-shot prompt, let the model propose a new one, reject it
by heuristics (length, punctuation/non-text start, mostly non-ASCII, words a
text model cannot act on such as "image" or "plot", copied from the prompt) and
by ROUGE-L F-measure >= ``rouge_threshold`` against every instruction kept so
far, then ask the model for the output (and optionally an input).

Augmentation: ``n`` paraphrases of one column per row through a few-shot
paraphrase prompt; empty, identical and near-duplicate paraphrases (MinHash,
against the source and the row's other paraphrases) are dropped.

The model is reached through a :class:`Completer` (text completion), injected
by the caller: the worker job (``app.workers.synth_jobs``) wraps the model host,
unit tests pass scripted proposals. Every request has its own seed derived from
the job seed and the attempt, so a rerun with the same seed gives the same rows.
Generated rows carry provenance columns (:data:`PROVENANCE`) and land, after the
original rows, as a new version of the dataset.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from app.core.data.minhash import near_duplicates
from app.core.data.store import DatasetStore, VersionRecord
from app.core.errors import ConfigError

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

#: Provenance columns of generated rows (null on original rows).
PROVENANCE: dict[str, pa.DataType] = {
    "gen_model_id": pa.string(),
    "gen_model_sha256": pa.string(),
    "gen_prompt": pa.string(),
    "gen_seed": pa.int64(),
    "gen_method": pa.string(),
    "gen_source_row": pa.int64(),
}

#: Words that make an instruction unsuitable for a text-only model (Self-Instruct's list).
BLACKLIST = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
)
_BLACKLIST_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in BLACKLIST) + r")\b", re.I)

MIN_WORDS = 3
MAX_WORDS = 150

ProgressFn = Callable[[float | None, str], None]
LogFn = Callable[[str], None]


class Completer(Protocol):
    """A text completion: ``prompt`` -> the model's continuation."""

    def __call__(
        self,
        prompt: str,
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
        stop: Sequence[str],
    ) -> str: ...


@dataclass(frozen=True)
class ModelInfo:
    """What provenance records about the generating model."""

    id: str
    sha256: str


@dataclass
class SynthOutcome:
    """What a generation run produced."""

    version: VersionRecord | None
    generated: int
    attempts: int
    rejects: dict[str, int] = field(default_factory=dict)
    requested: int = 0

    def result(self) -> dict[str, Any]:
        v = self.version
        return {
            "dataset_id": v.dataset_id if v else None,
            "version": v.hash if v else None,
            "rows": v.rows if v else None,
            "generated": self.generated,
            "requested": self.requested,
            "attempts": self.attempts,
            "rejects": dict(sorted(self.rejects.items())),
        }


def derive_seed(seed: int, *parts: object) -> int:
    """A request seed (0..2**32-1) from the job seed and the attempt: stable across runs."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def clean_instruction(text: str) -> str:
    """The first line of a proposal, without a leading task number and surrounding quotes."""
    line = text.strip().split("\n", 1)[0].strip()
    line = re.sub(r"^(task\s*)?\d+\s*[:.)]\s*", "", line, flags=re.I).strip()
    return line


def heuristic_reject(instruction: str, prompt_instructions: Sequence[str] = ()) -> str | None:
    """Why ``instruction`` is rejected before the similarity check (None: it passes)."""
    text = instruction.strip()
    if not text:
        return "empty"
    first = text[0]
    if not first.isascii() or not first.isalnum():
        return "starts_with_punctuation" if first.isascii() else "non_text_start"
    non_ascii = sum(1 for c in text if not c.isascii())
    if non_ascii > len(text) / 2:
        return "non_ascii"
    words = text.split()
    if len(words) <= MIN_WORDS:
        return "too_short"
    if len(words) > MAX_WORDS:
        return "too_long"
    if _BLACKLIST_RE.search(text):
        return "blacklisted_word"
    if _norm(text) in {_norm(p) for p in prompt_instructions}:
        return "copied_from_prompt"
    return None


class RougeFilter:
    """Rejects texts whose ROUGE-L F-measure with any kept text is >= ``threshold``."""

    def __init__(self, texts: Sequence[str], threshold: float = 0.7) -> None:
        from rouge_score import rouge_scorer

        self.threshold = threshold
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.texts: list[str] = [t for t in texts if t and t.strip()]

    def max_score(self, text: str) -> float:
        best = 0.0
        for t in self.texts:
            f = float(self._scorer.score(t, text)["rougeL"].fmeasure)
            if f > best:
                best = f
                if best >= self.threshold:
                    break
        return best

    def accepts(self, text: str) -> bool:
        return self.max_score(text) < self.threshold

    def add(self, text: str) -> None:
        self.texts.append(text)


# -- prompts ---------------------------------------------------------------------------------
PROPOSE_HEADER = "Come up with a series of tasks:\n"


def proposal_prompt(instructions: Sequence[str]) -> str:
    """Self-Instruct's few-shot prompt: numbered tasks, then the next number."""
    lines = "".join(f"Task {i + 1}: {t.strip()}\n" for i, t in enumerate(instructions))
    return f"{PROPOSE_HEADER}{lines}Task {len(instructions) + 1}:"


#: Characters of a seed example's input/output kept in a prompt (keeps prompts in context).
EXAMPLE_CHARS = 600


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS].rstrip() + " ..."


def _example(instruction: str, inp: str | None, out: str | None) -> str:
    s = f"Instruction: {_clip(instruction)}\n"
    if inp:
        s += f"Input: {_clip(inp)}\n"
    if out is not None:
        s += f"Output: {_clip(out)}\n\n"
    return s


def instance_prompt(
    examples: Sequence[tuple[str, str | None, str]], instruction: str, inp: str | None
) -> str:
    """Few-shot instruction -> output prompt, ending in ``Output:``."""
    shots = "".join(_example(i, x, o) for i, x, o in examples)
    return shots + _example(instruction, inp, None) + "Output:"


def input_prompt(examples: Sequence[tuple[str, str | None, str]], instruction: str) -> str:
    """Few-shot instruction -> input prompt, ending in ``Input:``."""
    shots = "".join(_example(i, x, o) for i, x, o in examples if x)
    return shots + f"Instruction: {instruction.strip()}\nInput:"


PARAPHRASE_SHOTS = (
    (
        "Summarize the following paragraph in two sentences.",
        "Write a two-sentence summary of the paragraph below.",
    ),
    (
        "What is the capital city of Australia?",
        "Which city is the capital of Australia?",
    ),
    (
        "Give three tips for staying healthy during winter.",
        "List three ways to stay healthy in the winter months.",
    ),
)


def paraphrase_prompt(text: str, template: str | None = None) -> str:
    """The paraphrase prompt for ``text``: our few-shot prompt ending in ``Paraphrase:``,
    or the user's ``template`` (e.g. from the prompt library) with ``{{text}}`` filled in."""
    if template is not None:
        from app.core.agents.prompts import render

        return render(template, {"text": " ".join(text.split())})
    shots = "".join(f"Sentence: {a}\nParaphrase: {b}\n\n" for a, b in PARAPHRASE_SHOTS)
    return f"{shots}Sentence: {' '.join(text.split())}\nParaphrase:"


def check_paraphrase_template(template: str) -> None:
    """A custom paraphrase prompt must use ``{{text}}`` and no other variable."""
    from app.core.agents.prompts import variables

    names = variables(template)
    if "text" not in names:
        raise ConfigError(
            "The paraphrase prompt must contain {{text}} where the row's text goes.",
            "For example: Rewrite in other words: {{text}}\nRewritten:",
        )
    other = [v for v in names if v != "text"]
    if other:
        raise ConfigError(
            f"The paraphrase prompt uses variable(s) {', '.join(other)}; only {{{{text}}}} is filled in."
        )


# -- tables ----------------------------------------------------------------------------------
def _check_text_column(table: pa.Table, name: str) -> None:
    if name not in table.column_names:
        raise ConfigError(
            f"The dataset has no column '{name}'.", f"Columns: {', '.join(table.column_names)}."
        )
    t = table.schema.field(name).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
        raise ConfigError(f"Column '{name}' is {t}, not text.")


def append_rows(table: pa.Table, rows: list[dict[str, Any]]) -> pa.Table:
    """``table`` with the provenance columns (null where missing) and then ``rows``."""
    for name, typ in PROVENANCE.items():
        if name not in table.column_names:
            table = table.append_column(pa.field(name, typ), pa.nulls(table.num_rows, typ))
    schema = table.schema
    fields = []
    for f in schema:
        if pa.types.is_null(f.type):
            fields.append(pa.field(f.name, pa.string()))
        else:
            fields.append(f)
    schema = pa.schema(fields)
    table = table.cast(schema)
    new = pa.Table.from_pylist(rows, schema=schema)
    return pa.concat_tables([table, new])


def _str(v: Any) -> str:
    return "" if v is None else str(v)


# -- self-instruct ---------------------------------------------------------------------------
def self_instruct(
    workspace: Workspace,
    dataset: str,
    complete: Completer,
    model: ModelInfo,
    *,
    instruction_column: str = "instruction",
    input_column: str | None = "input",
    output_column: str = "output",
    n_new: int = 10,
    seed: int = 0,
    temperature: float = 0.8,
    max_tokens: int = 64,
    rouge_threshold: float = 0.7,
    num_shots: int = 6,
    num_machine_shots: int = 2,
    generate_input: bool = False,
    max_attempts: int | None = None,
    progress: ProgressFn | None = None,
    check_cancelled: Callable[[], None] | None = None,
    log: LogFn | None = None,
) -> SynthOutcome:
    """Generate up to ``n_new`` instruction rows; a new version of ``dataset`` with them."""
    if n_new < 1:
        raise ConfigError("n_new must be at least 1.")
    if temperature <= 0:
        raise ConfigError("temperature must be above 0 (sampling, not greedy).")
    if not 0 < rouge_threshold <= 1:
        raise ConfigError("rouge_threshold must be in (0, 1].")
    store = DatasetStore(workspace)
    src = store.resolve(dataset)
    table = store.read_table(f"{src.dataset_id}@{src.hash}")
    _check_text_column(table, instruction_column)
    _check_text_column(table, output_column)
    if input_column and input_column not in table.column_names:
        input_column = None
    if input_column:
        _check_text_column(table, input_column)
    seeds_i = [_str(v) for v in table.column(instruction_column).to_pylist()]
    seeds_o = [_str(v) for v in table.column(output_column).to_pylist()]
    seeds_x = (
        [_str(v) for v in table.column(input_column).to_pylist()]
        if input_column
        else [""] * len(seeds_i)
    )
    seed_tasks = [i for i in seeds_i if i.strip()]
    if not seed_tasks:
        raise ConfigError(f"Column '{instruction_column}' has no seed instructions.")
    examples = [
        (i, x or None, o) for i, x, o in zip(seeds_i, seeds_x, seeds_o, strict=True) if i and o
    ]
    rouge = RougeFilter(seed_tasks, rouge_threshold)
    max_attempts = max_attempts or max(20, n_new * 10)
    rejects: Counter[str] = Counter()
    generated: list[str] = []
    rows: list[dict[str, Any]] = []
    attempts = 0
    while len(rows) < n_new and attempts < max_attempts:
        if check_cancelled:
            check_cancelled()
        attempt = attempts
        attempts += 1
        rng = random.Random(derive_seed(seed, "shots", attempt))
        n_machine = min(num_machine_shots, len(generated))
        shots = rng.sample(generated, n_machine) if n_machine else []
        shots += rng.sample(seed_tasks, min(num_shots - n_machine, len(seed_tasks)))
        rng.shuffle(shots)
        prompt = proposal_prompt(shots)
        req_seed = derive_seed(seed, "propose", attempt)
        raw = complete(
            prompt,
            seed=req_seed,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=["\n", "Task "],
        )
        instruction = clean_instruction(raw)
        reason = heuristic_reject(instruction, shots)
        if reason is None and not rouge.accepts(instruction):
            reason = "rouge_similar"
        if reason is not None:
            rejects[reason] += 1
            if progress:
                progress(len(rows) / n_new, f"{len(rows)}/{n_new} kept, {attempts} attempts")
            if log:
                log(f"attempt {attempt}: rejected ({reason}): {instruction[:120]!r}")
            continue
        prompts = [prompt]
        k = min(3, len(examples))
        shots_x = rng.sample(examples, k) if k else []
        inp: str | None = None
        if input_column and generate_input:
            if check_cancelled:
                check_cancelled()
            p_in = input_prompt(shots_x, instruction)
            prompts.append(p_in)
            inp = complete(
                p_in,
                seed=derive_seed(seed, "input", attempt),
                temperature=temperature,
                max_tokens=max_tokens,
                stop=["\n"],
            ).strip()
        if check_cancelled:
            check_cancelled()
        p_out = instance_prompt(shots_x, instruction, inp)
        prompts.append(p_out)
        output = complete(
            p_out,
            seed=derive_seed(seed, "output", attempt),
            temperature=temperature,
            max_tokens=max_tokens,
            stop=["\n\n", "\nInstruction:", "Instruction:"],
        ).strip()
        if not output:
            rejects["empty_output"] += 1
            continue
        rouge.add(instruction)
        generated.append(instruction)
        row: dict[str, Any] = {
            instruction_column: instruction,
            output_column: output,
            "gen_model_id": model.id,
            "gen_model_sha256": model.sha256,
            "gen_prompt": json.dumps(prompts, ensure_ascii=False),
            "gen_seed": req_seed,
            "gen_method": "self_instruct",
            "gen_source_row": None,
        }
        if input_column:
            row[input_column] = inp or ""
        rows.append(row)
        if log:
            log(f"attempt {attempt}: kept {instruction[:120]!r}")
        if progress:
            progress(len(rows) / n_new, f"{len(rows)}/{n_new} kept, {attempts} attempts")
    params = {
        "dataset": f"{src.dataset_id}@{src.hash}",
        "model": model.id,
        "model_sha256": model.sha256,
        "instruction_column": instruction_column,
        "input_column": input_column,
        "output_column": output_column,
        "n_new": n_new,
        "seed": seed,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "rouge_threshold": rouge_threshold,
        "generated": len(rows),
        "attempts": attempts,
        "rejects": dict(sorted(rejects.items())),
    }
    version = _new_version(
        store, src, table, rows, f"self-instruct: {len(rows)} generated rows for review",
        "self_instruct", params,
    )  # fmt: skip
    return SynthOutcome(version, len(rows), attempts, dict(rejects), n_new)


# -- augmentation ----------------------------------------------------------------------------
def augment(
    workspace: Workspace,
    dataset: str,
    complete: Completer,
    model: ModelInfo,
    *,
    column: str,
    n: int = 1,
    seed: int = 0,
    temperature: float = 0.9,
    max_tokens: int = 64,
    near_dup_threshold: float = 0.8,
    attempts_per_paraphrase: int = 2,
    max_rows: int | None = None,
    prompt_template: str | None = None,
    progress: ProgressFn | None = None,
    check_cancelled: Callable[[], None] | None = None,
    log: LogFn | None = None,
) -> SynthOutcome:
    """``n`` paraphrases of ``column`` per row (other columns copied); a new version.

    ``prompt_template`` replaces the built-in few-shot prompt; ``{{text}}`` is the row's text.
    """
    if n < 1:
        raise ConfigError("n must be at least 1.")
    if prompt_template is not None:
        check_paraphrase_template(prompt_template)
    if temperature <= 0:
        raise ConfigError("temperature must be above 0 (sampling, not greedy).")
    store = DatasetStore(workspace)
    src = store.resolve(dataset)
    table = store.read_table(f"{src.dataset_id}@{src.hash}")
    _check_text_column(table, column)
    total = table.num_rows if max_rows is None else min(max_rows, table.num_rows)
    originals = table.slice(0, total).to_pylist()
    rejects: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    attempts = 0
    for i, orig in enumerate(originals):
        source = _str(orig.get(column)).strip()
        if not source:
            rejects["empty_source"] += 1
            continue
        prompt = paraphrase_prompt(source, prompt_template)
        kept: list[str] = []
        for j in range(n * max(1, attempts_per_paraphrase)):
            if len(kept) >= n:
                break
            if check_cancelled:
                check_cancelled()
            attempts += 1
            req_seed = derive_seed(seed, "paraphrase", i, j)
            text = complete(
                prompt, seed=req_seed, temperature=temperature, max_tokens=max_tokens, stop=["\n"]
            )
            text = " ".join(text.split())
            if not text:
                rejects["empty"] += 1
                continue
            if _norm(text) in {_norm(t) for t in (source, *kept)}:
                rejects["duplicate"] += 1
                continue
            if near_duplicates([source, *kept, text], threshold=near_dup_threshold)[-1:] == [
                len(kept) + 1
            ]:
                rejects["near_duplicate"] += 1
                continue
            kept.append(text)
            row = dict(orig)
            row.update(
                {
                    column: text,
                    "gen_model_id": model.id,
                    "gen_model_sha256": model.sha256,
                    "gen_prompt": prompt,
                    "gen_seed": req_seed,
                    "gen_method": "paraphrase",
                    "gen_source_row": i,
                }
            )
            rows.append(row)
        if progress:
            progress((i + 1) / max(total, 1), f"row {i + 1}/{total}: {len(rows)} paraphrases")
        if log:
            log(f"row {i}: kept {len(kept)} of {n}")
    params = {
        "dataset": f"{src.dataset_id}@{src.hash}",
        "model": model.id,
        "model_sha256": model.sha256,
        "column": column,
        "n": n,
        "seed": seed,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "near_dup_threshold": near_dup_threshold,
        "max_rows": max_rows,
        "prompt_template": prompt_template,
        "generated": len(rows),
        "attempts": attempts,
        "rejects": dict(sorted(rejects.items())),
    }
    version = _new_version(
        store, src, table, rows, f"augment: {len(rows)} paraphrases of '{column}' for review",
        "paraphrase", params,
    )  # fmt: skip
    return SynthOutcome(version, len(rows), attempts, dict(rejects), n * total)


def _new_version(
    store: DatasetStore,
    src: VersionRecord,
    table: pa.Table,
    rows: list[dict[str, Any]],
    message: str,
    op: str,
    params: dict[str, Any],
) -> VersionRecord | None:
    """Original rows + generated rows as a new version for review (None when nothing passed)."""
    if not rows:
        return None
    return store.create_version(
        src.dataset_id,
        append_rows(table, rows),
        message=message,
        operation={"name": op, "params": params},
        parent=src.hash,
    )
