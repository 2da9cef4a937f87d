"""Datasets: streaming import, content-addressed versions, preparation operations, recipes.

The API the Datasets pane and the CLI use:

- :class:`DatasetStore` (``store``): ``list_datasets()``, ``get(ref)``, ``versions(ref)``,
  ``version(ref, hash)``, ``resolve("ID[@VERSION]")``, ``parquet_file(ref)`` /
  ``open_dataset(ref)`` / ``iter_batches(ref)`` for block reads without copying,
  ``read_table(ref)``, ``create_version(...)``, ``create_dataset(...)``,
  ``revert(ref, version)``, ``log(ref)``, ``rename``, ``delete``.
- :func:`import_dataset` (job ``data.import``), :func:`export_version`.
- :data:`OPS` / :func:`apply_op`, :class:`Recipe` / :func:`apply_recipe` /
  :func:`recipe_of` (job ``data.apply``), :func:`count_pii`, :func:`preview`.
- :func:`diff_versions`, :func:`ensure_sample_dataset`.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "VersionDiff": "diff",
    "diff_tables": "diff",
    "diff_versions": "diff",
    "EXPORT_FORMATS": "export",
    "export_version": "export",
    "FORMATS": "importers",
    "BadRow": "importers",
    "BadRowsError": "importers",
    "ImportResult": "importers",
    "import_dataset": "importers",
    "OPS": "ops",
    "OpSpec": "ops",
    "count_pii": "ops",
    "get_op": "ops",
    "preview": "ops",
    "register_op": "ops",
    "split_table": "ops",
    "Recipe": "recipes",
    "Step": "recipes",
    "apply_op": "recipes",
    "apply_recipe": "recipes",
    "recipe_of": "recipes",
    "ensure_sample_dataset": "samples",
    "CHUNK_ROWS": "store",
    "DatasetRecord": "store",
    "DatasetStore": "store",
    "VersionRecord": "store",
    "VersionWriter": "store",
    "hash_table": "store",
}


def __getattr__(name: str) -> Any:
    # Lazy: opening a workspace imports app.core.data.schema without loading pyarrow.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'app.core.data' has no attribute {name!r}")
    return getattr(import_module(f"app.core.data.{module}"), name)


__all__ = [
    "CHUNK_ROWS",
    "EXPORT_FORMATS",
    "FORMATS",
    "OPS",
    "BadRow",
    "BadRowsError",
    "DatasetRecord",
    "DatasetStore",
    "ImportResult",
    "OpSpec",
    "Recipe",
    "Step",
    "VersionDiff",
    "VersionRecord",
    "VersionWriter",
    "apply_op",
    "apply_recipe",
    "count_pii",
    "diff_tables",
    "diff_versions",
    "ensure_sample_dataset",
    "export_version",
    "get_op",
    "hash_table",
    "import_dataset",
    "preview",
    "recipe_of",
    "register_op",
    "split_table",
]
