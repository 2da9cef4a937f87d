"""Compare two versions: schema changes and rows added, removed, changed.

Without a key, rows are compared as a multiset of row fingerprints (over the
columns both versions share with the same type): a row whose content changed
counts as one removed and one added. With a key column, rows are matched by key
and a matched row whose other shared columns differ counts as changed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from app.core.data.ops import row_json
from app.core.data.store import DatasetStore
from app.core.errors import ConfigError

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


def _fingerprints(table: pa.Table, columns: list[str]) -> list[bytes]:
    return [
        hashlib.blake2b(s.encode("utf-8"), digest_size=16).digest()
        for s in row_json(table, columns)
    ]


def diff_tables(old: pa.Table, new: pa.Table, key: str | None = None) -> VersionDiff:
    """The difference between two tables (see the module docstring)."""
    o_types = {f.name: f.type for f in old.schema}
    n_types = {f.name: f.type for f in new.schema}
    d = VersionDiff(old="", new="", key=key, rows_old=old.num_rows, rows_new=new.num_rows)
    d.columns_added = [c for c in new.column_names if c not in o_types]
    d.columns_removed = [c for c in old.column_names if c not in n_types]
    d.type_changed = [
        {"column": c, "old": str(o_types[c]), "new": str(n_types[c])}
        for c in new.column_names
        if c in o_types and o_types[c] != n_types[c]
    ]
    shared = [c for c in new.column_names if c in o_types and o_types[c] == n_types[c]]
    d.compared_columns = shared
    if key is None:
        fo = _fingerprints(old, shared)
        fn = _fingerprints(new, shared)
        co, cn = Counter(fo), Counter(fn)
        d.rows_added = sum((cn - co).values())
        d.rows_removed = sum((co - cn).values())
        d.sample_added = [i for i, f in enumerate(fn) if f not in co][:SAMPLE]
        d.sample_removed = [i for i, f in enumerate(fo) if f not in cn][:SAMPLE]
        return d
    if key not in shared:
        raise ConfigError(f"The key column '{key}' must exist with the same type in both versions.")
    others = [c for c in shared if c != key]
    ko = [str(k) for k in old[key].to_pylist()]
    kn = [str(k) for k in new[key].to_pylist()]
    for keys, label in ((ko, "old"), (kn, "new")):
        if len(set(keys)) != len(keys):
            raise ConfigError(f"The key column '{key}' has repeated values in the {label} version.")
    old_fp = dict(zip(ko, _fingerprints(old, others), strict=True))
    old_set = set(ko)
    new_set = set(kn)
    for i, (k, f) in enumerate(zip(kn, _fingerprints(new, others), strict=True)):
        if k not in old_set:
            d.rows_added += 1
            if len(d.sample_added) < SAMPLE:
                d.sample_added.append(i)
        elif old_fp[k] != f:
            d.rows_changed += 1
            if len(d.sample_changed) < SAMPLE:
                d.sample_changed.append(i)
    for i, k in enumerate(ko):
        if k not in new_set:
            d.rows_removed += 1
            if len(d.sample_removed) < SAMPLE:
                d.sample_removed.append(i)
    return d


def diff_versions(
    workspace: Any, dataset: str, v1: str, v2: str, key: str | None = None
) -> VersionDiff:
    """Diff two versions of ``dataset`` (hashes or unique prefixes)."""
    store = DatasetStore(workspace)
    a = store.version(dataset, v1)
    b = store.version(dataset, v2)
    d = diff_tables(
        store.read_table(f"{a.dataset_id}@{a.hash}"),
        store.read_table(f"{b.dataset_id}@{b.hash}"),
        key,
    )
    d.old, d.new = a.hash, b.hash
    return d
