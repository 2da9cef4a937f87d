"""Apply operations to versions, and recipes: recorded lists of steps that replay.

Every applied step writes a new version whose ``operation`` is
``{"name": ..., "params": {...}}`` with every parameter spelled out, so the
version history *is* the recipe (:func:`recipe_of`), and applying the same
recipe to a version with the same content gives the same result hash.
"""

from __future__ import annotations

import json
import os
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
    ctx = OpContext(
        open_version=lambda r: Rows.of(store.parquet_file(r)),
        scratch=store.root,
        progress=report,
        check_cancelled=check_cancelled,
    )
    pf = store.parquet_file(f"{src.dataset_id}@{src.hash}")
    with store.writer(src.dataset_id) as w:
        if spec.make is not None:
            fn = spec.make(full, ctx)
            n = max(pf.num_row_groups, 1)
            for i in range(pf.num_row_groups):
                ctx.step(i / n, f"{op}: block {i + 1}/{n}")
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
        message=message or op,
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

        def sub(fraction: float | None, message: str = "", i: int = i) -> None:
            report(None if fraction is None else (i + fraction) / total, message)

        v = apply_op(
            workspace,
            current,
            step.name,
            step.params,
            message=f"recipe step {i + 1}: {step.name}",
            progress=sub,
            check_cancelled=check_cancelled,
        )
        out.append(v)
        current = f"{v.dataset_id}@{v.hash}"
    return out


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
