"""Apply operations to versions, and recipes: recorded lists of steps that replay.

Every applied step writes a new version whose ``operation`` is
``{"name": ..., "params": {...}}`` with every parameter spelled out, so the
version history *is* the recipe (:func:`recipe_of`), and applying the same
recipe to a version with the same content gives the same result hash.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from app.core.data.ops import OpContext, Rows, get_op
from app.core.data.store import DatasetStore, VersionRecord
from app.core.errors import ConfigError
from app.core.store.files import atomic_write_json

if TYPE_CHECKING:
    from app.core.jobs.context import JobContext
    from app.core.workspace.workspace import Workspace

ProgressFn = Callable[[float | None, str], None]
RECIPE_FORMAT = 1


@dataclass
class Step:
    """One operation with its parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params}


@dataclass
class Recipe:
    """An ordered list of steps, saved as JSON."""

    steps: list[Step] = field(default_factory=list)
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECIPE_FORMAT,
            "name": self.name,
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | list[Any]) -> Recipe:
        """From ``{"steps": [...]}`` or a bare list of ``{"name", "params"}`` steps."""
        raw = data.get("steps", []) if isinstance(data, dict) else data
        if isinstance(data, dict) and int(data.get("format", 1)) > RECIPE_FORMAT:
            raise ConfigError("This recipe was written by a newer DemoAI.", "Update DemoAI.")
        steps = []
        for i, s in enumerate(raw):
            if not isinstance(s, dict) or not isinstance(s.get("name"), str):
                raise ConfigError(f"Recipe step {i + 1} needs a 'name' (and optional 'params').")
            params = s.get("params") or {}
            if not isinstance(params, dict):
                raise ConfigError(f"Recipe step {i + 1}: 'params' must be an object.")
            get_op(s["name"]).resolve(params)  # validate early, before any work
            steps.append(Step(s["name"], dict(params)))
        name = data.get("name", "") if isinstance(data, dict) else ""
        return cls(steps, str(name or ""))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recipe:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"There is no recipe file {path}.") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"The recipe {path} is not valid JSON: {exc}.") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_json(path, self.to_dict())


def _noop(fraction: float | None, message: str = "") -> None:
    return None


def apply_op(
    workspace: Workspace,
    ref: str,
    op: str,
    params: dict[str, Any] | None = None,
    *,
    message: str | None = None,
    progress: ProgressFn | None = None,
    check_cancelled: Callable[[], None] | None = None,
) -> VersionRecord:
    """Apply one operation to version ``ref`` (``DATASET[@VERSION]``); returns the new version.

    The new version's parent is ``ref`` and it becomes the dataset's current version.
    """
    store = DatasetStore(workspace)
    src = store.resolve(ref)
    spec = get_op(op)
    full = spec.resolve(dict(params or {}))
    report = progress or _noop

    def named(fraction: float | None, message: str = "") -> None:
        # Operations report "dedupe: 1,000 rows read": a person reads the title instead.
        detail = message.removeprefix(f"{op}: ")
        report(fraction, f"{spec.title}: {detail}" if detail else spec.title)

    ctx = OpContext(
        open_version=lambda r: Rows.of(store.parquet_file(r)),
        scratch=store.root,
        progress=named,
        check_cancelled=check_cancelled,
    )
    pf = store.parquet_file(f"{src.dataset_id}@{src.hash}")
    with store.writer(src.dataset_id) as w:
        if spec.make is not None:
            fn = spec.make(full, ctx)
            n = max(pf.num_row_groups, 1)
            for i in range(pf.num_row_groups):
                ctx.step(i / n, f"block {i + 1} of {n}")
                w.write(fn(pf.read_row_group(i)))
        else:
            assert spec.plan is not None
            for part in spec.plan(full, ctx)(Rows.of(pf)):
                w.write(part)
    # Nothing written (every row filtered out): the output columns of an empty input.
    empty = (
        None
        if w.schema is not None
        else spec.run_on_table(full, pf.schema_arrow.empty_table(), ctx).schema
    )
    return store.commit(
        w,
        dataset_id=src.dataset_id,
        message=message or spec.title,
        operation={"name": op, "params": full},
        parent=src.hash,
        empty_schema=empty,
        action=op,
    )


def apply_recipe(
    workspace: Workspace,
    ref: str,
    recipe: Recipe,
    *,
    progress: ProgressFn | None = None,
    check_cancelled: Callable[[], None] | None = None,
) -> list[VersionRecord]:
    """Apply each step in turn, one version per step; returns the new versions."""
    report = progress or _noop
    out: list[VersionRecord] = []
    current = ref
    total = max(len(recipe.steps), 1)
    for i, step in enumerate(recipe.steps):
        label = step_label(i, len(recipe.steps), step.name)
        title = f"{get_op(step.name).title}: "

        def sub(
            fraction: float | None,
            message: str = "",
            i: int = i,
            label: str = label,
            title: str = title,
        ) -> None:
            detail = message.removeprefix(title)
            report(
                None if fraction is None else (i + fraction) / total,
                f"{label} · {detail}" if detail else label,
            )

        v = apply_op(
            workspace,
            current,
            step.name,
            step.params,
            message=label,
            progress=sub,
            check_cancelled=check_cancelled,
        )
        out.append(v)
        current = f"{v.dataset_id}@{v.hash}"
    return out


def step_label(index: int, count: int, op: str) -> str:
    """How a person reads a recipe step: "Step 1 of 2: Map to a training format"."""
    try:
        title = get_op(op).title
    except ConfigError:
        title = op
    return f"Step {index + 1} of {count}: {title}" if count > 1 else title


def recipe_of(workspace: Workspace, ref: str) -> Recipe:
    """The steps that made version ``ref`` from its import (following parents)."""
    store = DatasetStore(workspace)
    v: VersionRecord | None = store.resolve(ref)
    steps: list[Step] = []
    while v is not None:
        op = v.operation
        if op.get("name") in ("import", "create", "edit") or v.parent_hash is None:
            break
        steps.append(Step(str(op["name"]), dict(op.get("params") or {})))
        v = store.version(v.dataset_id, v.parent_hash)
    return Recipe(list(reversed(steps)))


def apply_job(
    ctx: JobContext,
    dataset: str,
    steps: list[dict[str, Any]],
) -> dict[str, Any]:
    """Job ``data.apply``: apply a recipe's steps to ``dataset`` (``ID[@VERSION]``)."""
    recipe = Recipe.from_dict(steps)
    versions = apply_recipe(
        ctx.workspace,
        dataset,
        recipe,
        progress=ctx.progress,
        check_cancelled=ctx.check_cancelled,
    )
    result: dict[str, Any] = {
        "dataset_id": versions[-1].dataset_id if versions else None,
        "versions": [v.hash for v in versions],
        "version": versions[-1].hash if versions else None,
        "rows": versions[-1].rows if versions else None,
    }
    ctx.result(result)
    return result


def table_of(workspace: Workspace, ref: str) -> pa.Table:
    """Convenience: the whole table of a version."""
    return DatasetStore(workspace).read_table(ref)


# -- column mappings (a table to a training format) ----------------------------------------------
#: Column names that usually hold the prompt, an optional extra input, the answer, a system
#: message: the first found (case-insensitive) is proposed.
PROMPT_NAMES = ("prompt", "instruction", "question", "query", "input", "user", "text")
INPUT_NAMES = ("input", "context")
RESPONSE_NAMES = ("response", "output", "answer", "completion", "assistant", "reply", "target")
SYSTEM_NAMES = ("system", "system_prompt")
#: The columns of each training format (as app/core/train/data.py reads them).
TRAINING_FORMATS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "instruction": ("instruction", "output"),
}


def training_format_of(columns: list[str]) -> str | None:
    """The training format whose columns ``columns`` has, or None (a mapping is needed)."""
    for fmt, needed in TRAINING_FORMATS.items():
        if all(c in columns for c in needed):
            return fmt
    return None


@dataclass
class ColumnMapping:
    """Which columns become the user turn (prompt), the assistant turn (completion) and the
    system message: the ``map_template`` step, in the words of its form."""

    user: str = ""
    assistant: str = ""
    #: A second column appended to the user turn after a blank line (e.g. ``input``).
    extra: str | None = None
    #: A column holding a system message per row.
    system: str | None = None
    format: str = "chat"

    def step(self) -> Step:
        """The ``map_template`` step this mapping is (what recipes and manifests record)."""

        def ref(column: str) -> str:
            return "{" + column + "}"

        user = ref(self.user) + (f"\n\n{ref(self.extra)}" if self.extra else "")
        return Step(
            "map_template",
            get_op("map_template").resolve(
                {
                    "format": self.format,
                    "system": ref(self.system) if self.system else None,
                    "user_template": user,
                    "assistant_template": ref(self.assistant),
                    "prompt_template": user,
                    "completion_template": ref(self.assistant),
                }
            ),
        )

    def problems(self, columns: list[str]) -> dict[str, str]:
        """Field -> what is wrong with it on a table with ``columns`` (empty: usable)."""
        have = ", ".join(columns) or "no columns"
        out: dict[str, str] = {}
        for name, value, needed in (
            ("user", self.user, True),
            ("assistant", self.assistant, True),
            ("extra", self.extra, False),
            ("system", self.system, False),
        ):
            if not value:
                if needed:
                    out[name] = "Choose a column."
            elif value not in columns:
                out[name] = f"The dataset has no column '{value}' (it has {have})."
            elif any(ch in value for ch in "{}[].:!"):
                out[name] = f"A column named '{value}' cannot be mapped: rename it first."
        if self.user and self.user == self.assistant and "user" not in out:
            out["assistant"] = "Choose a different column from the user turn."
        if self.format not in ("chat", "prompt_completion"):
            out["format"] = "Choose chat or prompt/completion."
        return out


def propose_mapping(columns: list[str]) -> ColumnMapping:
    """A mapping guessed from common column names (question -> user, answer -> assistant).

    Fields it cannot guess stay empty, for the person to choose.
    """
    lower = {c.lower(): c for c in reversed(columns)}

    def first(names: tuple[str, ...], taken: set[str]) -> str | None:
        for n in names:
            if n in lower and lower[n] not in taken:
                return lower[n]
        return None

    user = first(PROMPT_NAMES, set()) or ""
    assistant = first(RESPONSE_NAMES, {user}) or ""
    extra = first(INPUT_NAMES, {user, assistant}) if user.lower() == "instruction" else None
    system = first(SYSTEM_NAMES, {user, assistant, extra or ""})
    return ColumnMapping(user=user, assistant=assistant, extra=extra, system=system)


def mapping_of(step: dict[str, Any] | Step) -> ColumnMapping | None:
    """The mapping a ``map_template`` step made by :meth:`ColumnMapping.step` stands for
    (None when its templates are anything else)."""
    name = step.name if isinstance(step, Step) else step.get("name")
    params = step.params if isinstance(step, Step) else step.get("params") or {}
    if name != "map_template":
        return None
    full = get_op("map_template").resolve(dict(params))
    rx = r"\{([^{}\[\].:!]+)\}"
    fmt = full["format"]
    user_t = full["user_template" if fmt == "chat" else "prompt_template"]
    asst_t = full["assistant_template" if fmt == "chat" else "completion_template"]
    m_user = re.fullmatch(rx + r"(?:\n\n" + rx + ")?", user_t)
    m_asst = re.fullmatch(rx, asst_t)
    m_sys = re.fullmatch(rx, full["system"]) if full["system"] else None
    if m_user is None or m_asst is None or (full["system"] and m_sys is None):
        return None
    return ColumnMapping(
        user=m_user.group(1),
        extra=m_user.group(2),
        assistant=m_asst.group(1),
        system=m_sys.group(1) if m_sys else None,
        format=fmt,
    )
