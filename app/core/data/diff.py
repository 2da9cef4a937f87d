"""Compare two versions: schema changes and rows added, removed, changed.

Without a key, rows are compared as a multiset of row fingerprints (over the
columns both versions share with the same type): a row whose content changed
counts as one removed and one added. With a key column, rows are matched by key
and a matched row whose other shared columns differ counts as changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from app.core.data.ops import Rows, row_digests
from app.core.data.store import DatasetStore
from app.core.errors import ConfigError

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

SAMPLE = 20


@dataclass
class VersionDiff:
    """What changed from ``old`` to ``new``."""

    old: str
    new: str
    key: str | None
    columns_added: list[str] = field(default_factory=list)
    columns_removed: list[str] = field(default_factory=list)
    type_changed: list[dict[str, str]] = field(default_factory=list)
    compared_columns: list[str] = field(default_factory=list)
    rows_added: int = 0
    rows_removed: int = 0
    rows_changed: int = 0
    rows_old: int = 0
    rows_new: int = 0
    #: Row indices (up to 20 each) for a viewer: added in new, removed in old, changed in new.
    sample_added: list[int] = field(default_factory=list)
    sample_removed: list[int] = field(default_factory=list)
    sample_changed: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _first(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)[:SAMPLE]]


def _unique_keys(digests: np.ndarray, key: str, label: str) -> np.ndarray:
    if len(np.unique(digests)) != len(digests):
        raise ConfigError(f"The key column '{key}' has repeated values in the {label} version.")
    return digests


def diff_tables(old: pa.Table | Rows, new: pa.Table | Rows, key: str | None = None) -> VersionDiff:
    """The difference between two tables or versions (see the module docstring).

    Each row is reduced to 16-byte digests (of its key, and of its other shared
    columns as canonical JSON) read block by block, so two versions far larger than
    memory can be compared: about 32 bytes a row.
    """
    o = old if isinstance(old, Rows) else Rows.of(old)
    n = new if isinstance(new, Rows) else Rows.of(new)
    o_types = {f.name: f.type for f in o.schema}
    n_types = {f.name: f.type for f in n.schema}
    d = VersionDiff(old="", new="", key=key, rows_old=o.num_rows, rows_new=n.num_rows)
    d.columns_added = [c for c in n.schema.names if c not in o_types]
    d.columns_removed = [c for c in o.schema.names if c not in n_types]
    d.type_changed = [
        {"column": c, "old": str(o_types[c]), "new": str(n_types[c])}
        for c in n.schema.names
        if c in o_types and o_types[c] != n_types[c]
    ]
    shared = [c for c in n.schema.names if c in o_types and o_types[c] == n_types[c]]
    d.compared_columns = shared
    if key is None:
        fo, fn = row_digests(o, shared), row_digests(n, shared)
        uo, co = np.unique(fo, return_counts=True)
        un, cn = np.unique(fn, return_counts=True)
        in_old = np.zeros(len(un), dtype=np.int64)  # occurrences in old of each new row
        if len(uo):
            at = np.minimum(np.searchsorted(uo, un), len(uo) - 1)
            hit = uo[at] == un
            in_old[hit] = co[at][hit]
        common = int(np.minimum(cn, in_old).sum())  # rows in both, as multisets
        d.rows_added = n.num_rows - common
        d.rows_removed = o.num_rows - common
        d.sample_added = _first(~np.isin(fn, uo))
        d.sample_removed = _first(~np.isin(fo, un))
        return d
    if key not in shared:
        raise ConfigError(f"The key column '{key}' must exist with the same type in both versions.")
    others = [c for c in shared if c != key]
    ko = _unique_keys(row_digests(o, [key]), key, "old")
    kn = _unique_keys(row_digests(n, [key]), key, "new")
    fo, fn = row_digests(o, others), row_digests(n, others)
    matched = np.zeros(len(kn), dtype=bool)
    changed = np.zeros(len(kn), dtype=bool)
    if len(ko):
        order = np.argsort(ko)
        ko_sorted = ko[order]
        at = np.minimum(np.searchsorted(ko_sorted, kn), len(ko) - 1)
        matched = ko_sorted[at] == kn
        changed = matched & (fo[order][at] != fn)
    removed = ~np.isin(ko, kn)
    d.rows_added = int((~matched).sum())
    d.rows_changed = int(changed.sum())
    d.rows_removed = int(removed.sum())
    d.sample_added = _first(~matched)
    d.sample_changed = _first(changed)
    d.sample_removed = _first(removed)
    return d


def diff_versions(
    workspace: Workspace, dataset: str, v1: str, v2: str, key: str | None = None
) -> VersionDiff:
    """Diff two versions of ``dataset`` (hashes or unique prefixes)."""
    store = DatasetStore(workspace)
    a = store.version(dataset, v1)
    b = store.version(dataset, v2)
    d = diff_tables(
        Rows.of(store.parquet_file(f"{a.dataset_id}@{a.hash}")),
        Rows.of(store.parquet_file(f"{b.dataset_id}@{b.hash}")),
        key,
    )
    d.old, d.new = a.hash, b.hash
    return d
