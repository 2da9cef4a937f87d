"""Training from the libraries: a base model by id, a dataset version by ref, and the
adapter registered back in the model library with its lineage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError
from app.core.train.config import TrainConfig

if TYPE_CHECKING:
    from app.core.jobs.context import JobContext
    from app.core.workspace.workspace import Workspace


def training_data_file(
    ws: Workspace, dataset_ref: str, mapping: dict[str, Any] | None = None
) -> tuple[Path, str]:
    """A JSONL copy of a dataset version for training, cached beside the version.

    With ``mapping`` (a ``map_template`` step, ``{"name", "params"}``) the rows are mapped
    to a training format on the way: the file is named after the step's hash, so each
    mapping of a version is written once. Versions are immutable and content-addressed,
    so the file is written once. Returns the file and the pinned ``ID@HASH`` ref.
    """
    from app.core.data.export import export_version
    from app.core.data.store import DatasetStore

    store = DatasetStore(ws)
    v = store.resolve(dataset_ref)
    pinned = f"{v.dataset_id}@{v.hash}"
    if mapping is None:
        out = v.path / "train.jsonl"
        if not out.exists():
            export_version(ws, pinned, "jsonl", out, overwrite=True)
        return out, pinned
    step = _mapping_step(mapping)
    key = hashlib.sha256(json.dumps(step, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    out = v.path / f"train-mapped-{key}.jsonl"
    if not out.exists():
        from app.core.data.ops import OpContext, get_op
        from app.core.store.files import atomic_open

        spec = get_op(step["name"])
        assert spec.make is not None
        transform = spec.make(spec.resolve(step["params"]), OpContext())
        pf = store.parquet_file(pinned)
        with atomic_open(out, "w") as fh:
            for i in range(pf.num_row_groups):
                for row in transform(pf.read_row_group(i)).to_pylist():
                    fh.write(json.dumps(row, ensure_ascii=False, default=str))
                    fh.write("\n")
    return out, pinned


def _mapping_step(mapping: dict[str, Any]) -> dict[str, Any]:
    """The mapping as a full ``map_template`` step (defaults filled in), checked."""
    from app.core.data.recipes import Recipe

    steps = Recipe.from_dict([mapping]).steps
    if steps[0].name != "map_template":
        raise ConfigError(
            f"A training mapping is a map_template step, not '{steps[0].name}'.",
            "Map the columns in the Fine-tune form or with Datasets › Prepare.",
        )
    from app.core.data.ops import get_op

    return {"name": "map_template", "params": get_op("map_template").resolve(steps[0].params)}


def config_from_library(
    ws: Workspace,
    base: str,
    dataset: str,
    *,
    preset: str | None = None,
    mapping: dict[str, Any] | None = None,
    **overrides: Any,
) -> TrainConfig:
    """A TrainConfig for library model ``base`` (id or name) and dataset ``ID[@VERSION]``.

    ``mapping`` (a ``map_template`` step) maps a dataset whose columns are not a training
    format for this run; it is recorded in the config (``data_mapping``) and the manifest.
    """
    from app.core.models.registry import ModelRegistry

    rec = ModelRegistry(ws).get(base)
    if rec.format != "hf":
        raise ConfigError(
            f"'{rec.name}' is a {rec.format.upper()} model: training needs Hugging Face weights "
            "(a folder with config.json and safetensors).",
            "Import the original HF model folder of the same model and train on that.",
        )
    data, pinned = training_data_file(ws, dataset, mapping)
    fields: dict[str, Any] = {
        "base_model": str(rec.path),
        "data_path": str(data),
        "base_model_id": rec.id,
        "dataset_version": pinned,
        **overrides,
    }
    if mapping is not None:
        step = _mapping_step(mapping)
        fields["data_mapping"] = step
        if "data_format" not in overrides:
            fields["data_format"] = step["params"]["format"]
    if "data_format" not in overrides:
        from app.core.train.data import detect_format, read_records

        fmt = detect_format(read_records(data)[:1])
        if fmt is None:
            raise ConfigError(
                "The dataset has none of the columns training understands: 'messages', "
                "'prompt'+'completion', or 'instruction'+'output'.",
                "Choose the columns in the Fine-tune form (it offers the mapping), or map them with "
                "Datasets › Prepare… › Map to a training format.",
            )
        fields["data_format"] = fmt
    return TrainConfig.preset(preset, **fields) if preset else TrainConfig.from_dict(fields)


def register_adapter(
    ws: Workspace, config: TrainConfig, adapter: Path, manifest: dict[str, Any]
) -> str | None:
    """Register a finished adapter in the model library (lineage: fine-tuned from the base)."""
    if not config.base_model_id:
        return None
    from app.core.models.registry import ModelRegistry

    reg = ModelRegistry(ws)
    details = {
        "job_id": manifest.get("job_id"),
        "dataset_version": config.dataset_version,
        "data_mapping": config.data_mapping,
        "data_sha256": manifest.get("data", {}).get("sha256"),
        "seed": config.seed,
        "method": config.method,
        "metrics": manifest.get("metrics") or manifest.get("final_metrics"),
    }
    rec = reg.register_derived(
        adapter,
        "lora",
        parents=[(config.base_model_id, "fine-tuned-from", details)],
        name=config.name or f"{reg.get(config.base_model_id).name}-lora",
        notes=f"Fine-tuned by job {manifest.get('job_id')}",
    )
    return str(rec.id)


def merge_job(ctx: JobContext, adapter: str, name: str | None = None) -> dict[str, Any]:
    """Job ``train.merge``: merge a library adapter into its base -> a new registered HF model."""
    from app.core.models.registry import ModelRegistry
    from app.core.train.merge import merge_adapter

    reg = ModelRegistry(ctx.workspace)
    rec = reg.get(adapter)
    if rec.format != "lora":
        raise ConfigError(f"'{rec.name}' is not a LoRA adapter; only adapters can be merged.")
    parents = [e for e in reg.lineage(rec.id).parents if e.relation == "fine-tuned-from"]
    if not parents:
        raise ConfigError(
            f"The base model of '{rec.name}' is not in the library.",
            "Import the base model folder, then merge with 'demoai train merge'.",
        )
    base = reg.get(parents[0].model_id)
    ctx.progress(None, f"merging {rec.name} into {base.name}")
    out = ctx.workspace.models_dir / f".merge-{ctx.job_id}"
    merge_adapter(base.path, rec.path, out)
    ctx.progress(0.9, "registering the merged model")
    merged = reg.register_derived(
        out,
        "hf",
        parents=[
            (base.id, "merged-from", {"role": "base"}),
            (rec.id, "merged-from", {"role": "adapter"}),
        ],
        name=name or f"{rec.name}-merged",
    )
    result = {"model_id": merged.id, "name": merged.name}
    ctx.artifact("model", merged.path)
    ctx.result(result)
    return result
