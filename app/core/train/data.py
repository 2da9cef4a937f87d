"""Training data: read JSONL, map to chat, tokenize with masked labels, pack, order.

Labels are ``-100`` (ignored by the loss) everywhere except the tokens the
model should learn to produce: the assistant turns of chat data (rendered with
the model's own chat template) or the completion of prompt/completion data.
The order of the data is a pure function of the seed, the epoch and the step,
so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100

#: Columns each data format needs (``input`` of instruction data is optional).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "instruction": ("instruction", "output"),
}


class DataError(ValueError):
    """The data file cannot be used; the message says where and why."""


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file (or a JSON file holding a list of objects)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        data = json.loads(text)
        if not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path.name}: every item of the list must be a JSON object")
        return list(data)
    records: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path.name} line {n} is not valid JSON: {exc.msg}") from exc
        if not isinstance(rec, dict):
            raise DataError(f"{path.name} line {n} is not a JSON object")
        records.append(rec)
    return records


def detect_format(records: Sequence[dict[str, Any]]) -> str | None:
    """The data format the first record fits, or None."""
    if not records:
        return None
    first = records[0]
    for fmt, cols in REQUIRED_COLUMNS.items():
        if all(c in first for c in cols):
            return fmt
    return None


def check_data_file(path: Path, data_format: str) -> list[str]:
    """Problems with the data file for this format (empty when usable)."""
    if not path.is_file():
        return [f"data file {path} does not exist"]
    try:
        records = read_records(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, DataError) as exc:
        return [f"cannot read the data file: {exc}"]
    if not records:
        return [f"data file {path.name} has no records"]
    cols = REQUIRED_COLUMNS.get(data_format, ())
    for n, rec in enumerate(records, 1):
        missing = [c for c in cols if c not in rec]
        if missing:
            have = ", ".join(sorted(rec)) or "nothing"
            guess = detect_format([rec])
            hint = f"; it looks like {guess} data" if guess and guess != data_format else ""
            return [
                f"data record {n} lacks column(s) {', '.join(missing)} needed by "
                f"data_format {data_format} (it has {have}{hint})"
            ]
        if data_format == "chat":
            problem = _check_messages(rec["messages"])
            if problem:
                return [f"data record {n}: {problem}"]
    return []


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return "each message needs 'role' and 'content'"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message: nothing to learn"
    return None


def to_messages(record: dict[str, Any], data_format: str) -> list[dict[str, str]]:
    """A chat record, or an instruction record mapped to a user and an assistant turn."""
    if data_format == "chat":
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in record["messages"]]
    if data_format == "instruction":
        prompt = str(record["instruction"])
        extra = record.get("input")
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": str(record["output"])},
        ]
    raise DataError(f"records of format {data_format} are not chat")


@dataclass
class Example:
    """One tokenized example (or a packed row of several)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _label_spans(
    tokenizer: Any, messages: list[dict[str, str]], assistant_only: bool
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the loss is computed on."""
    text: str = tokenizer.apply_chat_template(messages, tokenize=False)
    if not assistant_only:
        return text, [(0, len(text))]
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix: str = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True
        )
        upto: str = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (upto.startswith(prefix) and text.startswith(upto)):
            raise DataError(
                "the chat template does not render conversations incrementally; "
                "set assistant_only_loss to false"
            )
        spans.append((len(prefix), len(upto)))
    return text, spans


def _encode(
    tokenizer: Any, text: str, spans: list[tuple[int, int]], add_special: bool
) -> tuple[list[int], list[int]]:
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels: list[int] = []
    for tok, (start, end) in zip(ids, enc["offset_mapping"], strict=True):
        inside = end > start and any(a <= start < b for a, b in spans)
        labels.append(tok if inside else IGNORE_INDEX)
    return ids, labels


def tokenize_record(
    record: dict[str, Any],
    tokenizer: Any,
    data_format: str,
    max_seq_len: int,
    *,
    assistant_only: bool = True,
) -> Example | None:
    """Tokenize one record with its label mask; None when nothing is left to learn."""
    if data_format == "prompt_completion":
        prompt, completion = str(record["prompt"]), str(record["completion"])
        text = prompt + completion
        spans = [(len(prompt), len(text))] if assistant_only else [(0, len(text))]
        ids, labels = _encode(tokenizer, text, spans, add_special=True)
        eos = tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(int(eos))
            labels.append(int(eos))
    else:
        text, spans = _label_spans(tokenizer, to_messages(record, data_format), assistant_only)
        ids, labels = _encode(tokenizer, text, spans, add_special=False)
    ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    if all(x == IGNORE_INDEX for x in labels[1:]):
        return None
    return Example(ids, labels, list(range(len(ids))))


def pack(examples: Sequence[Example], max_seq_len: int) -> list[Example]:
    """Concatenate examples, in order, into rows of at most ``max_seq_len`` tokens.

    Position ids restart at 0 for each example: with no attention mask,
    transformers builds a block-diagonal causal mask from them, so packed
    examples never attend to each other (padding-free packing).
    """
    rows: list[Example] = []
    cur = Example([], [], [])
    for ex in examples:
        if cur.input_ids and len(cur.input_ids) + len(ex.input_ids) > max_seq_len:
            rows.append(cur)
            cur = Example([], [], [])
        cur.input_ids += ex.input_ids
        # The first token of each example is never a target of the previous one.
        cur.labels += [IGNORE_INDEX, *ex.labels[1:]]
        cur.position_ids += ex.position_ids
    if cur.input_ids:
        rows.append(cur)
    return rows


def split_eval(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the train and eval examples: a seeded, stable split."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    k = max(1, min(n - 1, round(n * fraction)))
    order = list(range(n))
    random.Random(seed * 7919 + 17).shuffle(order)
    held = set(order[:k])
    return [i for i in range(n) if i not in held], sorted(held)


class DataOrder:
    """Which samples form micro-batch number ``k`` of the run: a function of the seed.

    Each epoch uses its own permutation seeded from (seed, epoch), so a run that
    resumes at any step gets the same batches as one that never stopped.
    """

    def __init__(self, n_samples: int, batch_size: int, seed: int) -> None:
        if n_samples < 1:
            raise DataError("no training examples left (all were empty or cut away)")
        self.n = n_samples
        self.batch_size = min(batch_size, n_samples)
        self.seed = seed
        self.batches_per_epoch = -(-self.n // self.batch_size)
        self._cache: tuple[int, list[int]] | None = None

    def permutation(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            order = list(range(self.n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._cache = (epoch, order)
        return self._cache[1]

    def batch(self, micro_index: int) -> tuple[int, list[int]]:
        """(epoch, sample indices) of micro-batch ``micro_index`` (0-based, counted over the run)."""
        epoch, b = divmod(micro_index, self.batches_per_epoch)
        perm = self.permutation(epoch)
        return epoch, perm[b * self.batch_size : (b + 1) * self.batch_size]


def collate(samples: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """Tensors for one micro-batch, right-padded.

    Packed rows get no attention mask: padding gets its own position ids (a
    separate "sequence" that nothing attends to) and transformers keeps the
    examples apart from the position ids. Unpacked rows get the usual padding
    mask, which is the cheaper path through attention.
    """
    import torch

    width = max(len(s.input_ids) for s in samples)
    packed = any(0 in s.position_ids[1:] for s in samples)
    ids, labels, pos, mask = [], [], [], []
    for s in samples:
        pad = width - len(s.input_ids)
        ids.append(s.input_ids + [pad_id] * pad)
        labels.append(s.labels + [IGNORE_INDEX] * pad)
        pos.append(s.position_ids + list(range(pad)))
        mask.append([1] * len(s.input_ids) + [0] * pad)
    batch = {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(pos, dtype=torch.long),
    }
    if not packed:
        batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
    return batch
