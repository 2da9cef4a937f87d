"""Export a version as JSONL, CSV, Parquet or a Hugging Face dataset folder, atomically.

Files are written under a temporary name beside the target and renamed into
place; a failed export leaves no partial file or folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv

from app.core.data.store import CHUNK_ROWS, DatasetStore
from app.core.errors import ConfigError
from app.core.store.files import atomic_open, owned_temp_name

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

EXPORT_FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet", "hf")


def _nested_to_json(batch: pa.RecordBatch) -> pa.RecordBatch:
    """CSV cannot hold lists or structs: those columns become JSON text."""
    cols = []
    fields = []
    for f, col in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_nested(f.type):
            vals = [
                None if v is None else json.dumps(v, ensure_ascii=False) for v in col.to_pylist()
            ]
            cols.append(pa.array(vals, pa.string()))
            fields.append(pa.field(f.name, pa.string()))
        else:
            cols.append(col)
            fields.append(f)
    return pa.RecordBatch.from_arrays(cols, schema=pa.schema(fields))


def export_version(
    workspace: Workspace,
    ref: str,
    fmt: str,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write version ``ref`` (``DATASET[@VERSION]``) to ``out`` in ``fmt``; returns ``out``."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(
            f"Unknown export format '{fmt}'.", f"Use one of: {', '.join(EXPORT_FORMATS)}."
        )
    store = DatasetStore(workspace)
    v = store.resolve(ref)
    target = Path(out).expanduser().absolute()
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} already exists.", "Choose another path or remove it first.")
    target.parent.mkdir(parents=True, exist_ok=True)
    pf = store.parquet_file(f"{v.dataset_id}@{v.hash}")
    if fmt == "parquet":
        with atomic_open(target, "wb") as fh, open(v.data_path, "rb") as src:
            shutil.copyfileobj(src, fh, 4 << 20)
    elif fmt == "jsonl":
        with atomic_open(target, "w") as fh:
            for batch in pf.iter_batches(batch_size=CHUNK_ROWS):
                for row in batch.to_pylist():
                    fh.write(json.dumps(row, ensure_ascii=False, default=str))
                    fh.write("\n")
    elif fmt == "csv":
        with atomic_open(target, "wb") as fh:
            writer: pacsv.CSVWriter | None = None
            for batch in pf.iter_batches(batch_size=CHUNK_ROWS):
                b = _nested_to_json(batch)
                if writer is None:
                    writer = pacsv.CSVWriter(fh, b.schema)
                writer.write_batch(b)
            if writer is None:
                empty = pa.RecordBatch.from_pylist([], schema=pf.schema_arrow)
                writer = pacsv.CSVWriter(fh, _nested_to_json(empty).schema)
            writer.close()
    else:
        import datasets  # heavy: only here

        tmp = target.parent / owned_temp_name(target.name)
        try:
            ds = datasets.Dataset(pf.read())
            ds.save_to_disk(str(tmp))
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
