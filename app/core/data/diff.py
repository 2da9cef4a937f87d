"""Compare two versions: schema changes, and rows added, removed, changed or moved.

Rows are reduced to 16-byte digests of their shared columns (the columns both
versions have with the same type), read block by block: about 32 bytes a row,
so versions far larger than memory can be compared.

Without a key, rows are identified by position, aligned the way a text diff
aligns lines: the common head and tail are trimmed, rows whose content occurs
once on each side anchor the alignment (the longest run of anchors in the same
order, as in patience diff) and the short stretches between anchors are
aligned exactly (difflib). What stays unaligned is a run of old rows replaced by
a run of new rows. A row found unaligned on both sides with the same content
was *moved* (a sort moves rows; it does not change them). Otherwise the old and
new rows of a run are paired as *changed* rows: one for one when the run
replaced as many rows as it holds, else by the most cells in common (rows with
no cell in common are not paired); the rest are *added* or *removed*. So
editing one cell is one changed row, and inserting or deleting a row shifts
nothing.

With a key column, rows are matched by key, and a matched row whose other
shared columns differ is changed.

The changes are kept as three numpy arrays (kind, old row, new row: 17 bytes a
change); :func:`read_changes` reads one page of them with the cells' before and
after values, so a viewer never holds more than a page of rows.
"""

from __future__ import annotations

import bisect
import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from app.core.data.ops import OpContext, Rows, row_digests
from app.core.data.store import DatasetStore, VersionRecord
from app.core.errors import ConfigError

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

#: Changes listed by ``to_dict`` (the CLI's ``--json``).
SAMPLE = 20
#: Kinds of change, in the order of their codes in ``VersionDiff.kinds``.
KINDS = ("changed", "added", "removed", "moved")
CHANGED, ADDED, REMOVED, MOVED = range(4)
#: A stretch between anchors up to this many rows (both sides) is aligned exactly.
EXACT_ROWS = 4_000
#: Old x new rows of one replaced run up to which rows are paired by cells in common.
PAIR_CELLS = 40_000
#: Rows read in all to pair rows by cells in common; beyond, runs are paired in order.
PAIR_ROWS = 20_000


@dataclass
class RowChange:
    """One changed row, with rows numbered as the table shows them (from 1)."""

    kind: str
    old_row: int | None
    new_row: int | None
    #: The row's values in the old and in the new version (None: not in that version).
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    #: Columns (shared by both versions) whose value differs.
    changed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class VersionDiff:
    """What changed from ``old`` to ``new``; the rows with :func:`read_changes`."""

    old: str
    new: str
    key: str | None
    #: Short labels (``v3``) of the versions, for people; ``old``/``new`` are the hashes.
    old_label: str = ""
    new_label: str = ""
    dataset_id: str = ""
    columns_added: list[str] = field(default_factory=list)
    columns_removed: list[str] = field(default_factory=list)
    type_changed: list[dict[str, str]] = field(default_factory=list)
    compared_columns: list[str] = field(default_factory=list)
    #: Every column of either version, in the order a table of changes shows them.
    columns: list[str] = field(default_factory=list)
    rows_added: int = 0
    rows_removed: int = 0
    rows_changed: int = 0
    rows_moved: int = 0
    rows_old: int = 0
    rows_new: int = 0
    #: One entry per change, in the order of the new version: its kind (index into
    #: ``KINDS``) and its old and new row (0-based; -1: none).
    kinds: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8), repr=False)
    old_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)
    new_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)

    @property
    def changes(self) -> int:
        """How many rows changed in any way (entries of the table of changes)."""
        return len(self.kinds)

    @property
    def schema_changed(self) -> bool:
        return bool(self.columns_added or self.columns_removed or self.type_changed)

    def entry(self, i: int) -> tuple[str, int | None, int | None]:
        """Change ``i``: (kind, old row, new row), rows numbered from 1."""
        o, n = int(self.old_rows[i]), int(self.new_rows[i])
        return KINDS[int(self.kinds[i])], (o + 1 if o >= 0 else None), (n + 1 if n >= 0 else None)

    def to_dict(self) -> dict[str, Any]:
        skip = {"kinds", "old_rows", "new_rows"}
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in skip}
        d["changes"] = self.changes
        d["first_changes"] = [
            dict(zip(("kind", "old_row", "new_row"), self.entry(i), strict=True))
            for i in range(min(SAMPLE, self.changes))
        ]
        return d


# -- alignment ------------------------------------------------------------------------
def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def _once(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The digests that occur once in ``d``, with their positions."""
    u, first, count = np.unique(d, return_index=True, return_counts=True)
    return u[count == 1], first[count == 1]


def _longest_increasing(seq: Sequence[int]) -> list[int]:
    """Positions in ``seq`` of a longest strictly increasing subsequence (n log n)."""
    tails: list[int] = []  # values
    tail_at: list[int] = []  # their positions
    back = [-1] * len(seq)
    for i, v in enumerate(seq):
        j = bisect.bisect_left(tails, v)
        if j == len(tails):
            tails.append(v)
            tail_at.append(i)
        else:
            tails[j], tail_at[j] = v, i
        back[i] = tail_at[j - 1] if j else -1
    out: list[int] = []
    i = tail_at[-1] if tail_at else -1
    while i >= 0:
        out.append(i)
        i = back[i]
    return out[::-1]


def _align(fo: np.ndarray, fn: np.ndarray, ctx: OpContext | None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (old row, new row) of equal rows, both increasing (see the module docstring)."""
    mo: list[np.ndarray] = []
    mn: list[np.ndarray] = []
    stack = [(0, len(fo), 0, len(fn))]
    while stack:
        if ctx is not None:
            ctx.step(None, "aligning rows")
        o0, o1, n0, n1 = stack.pop()
        head = _common_prefix(fo[o0:o1], fn[n0:n1])
        if head:
            mo.append(np.arange(o0, o0 + head))
            mn.append(np.arange(n0, n0 + head))
            o0, n0 = o0 + head, n0 + head
        tail = _common_prefix(fo[o0:o1][::-1], fn[n0:n1][::-1])
        if tail:
            mo.append(np.arange(o1 - tail, o1))
            mn.append(np.arange(n1 - tail, n1))
            o1, n1 = o1 - tail, n1 - tail
        if o0 == o1 or n0 == n1:
            continue
        if (o1 - o0) + (n1 - n0) <= EXACT_ROWS:
            a = [x.tobytes() for x in fo[o0:o1]]
            b = [x.tobytes() for x in fn[n0:n1]]
            sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
            for i, j, size in sm.get_matching_blocks():
                if size:
                    mo.append(np.arange(o0 + i, o0 + i + size))
                    mn.append(np.arange(n0 + j, n0 + j + size))
            continue
        uo, po = _once(fo[o0:o1])
        un, pn = _once(fn[n0:n1])
        _, io, jn = np.intersect1d(uo, un, assume_unique=True, return_indices=True)
        ao, an = po[io], pn[jn]
        order = np.argsort(ao, kind="stable")
        ao, an = ao[order], an[order]
        keep = _longest_increasing(an.tolist())
        if not keep:
            continue  # nothing in common: one replaced run
        ao, an = ao[keep] + o0, an[keep] + n0
        mo.append(ao)
        mn.append(an)
        bo = [o0, *(ao + 1).tolist()]
        eo = [*ao.tolist(), o1]
        bn = [n0, *(an + 1).tolist()]
        en = [*an.tolist(), n1]
        for s in zip(bo, eo, bn, en, strict=True):
            if s[0] < s[1] and s[2] < s[3]:
                stack.append(s)
    if not mo:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    o = np.concatenate(mo).astype(np.int64)
    n = np.concatenate(mn).astype(np.int64)
    order = np.argsort(o, kind="stable")
    return o[order], n[order]


def _multiset_match(da: np.ndarray, db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in ``da``, in ``db``) pairing equal digests, k-th occurrence with k-th."""
    if not len(da) or not len(db):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    _, inv = np.unique(np.concatenate([da, db]), return_inverse=True)
    inv = inv.reshape(-1).astype(np.int64)

    def keys(g: np.ndarray) -> np.ndarray:
        order = np.argsort(g, kind="stable")
        sg = g[order]
        starts = np.flatnonzero(np.r_[True, sg[1:] != sg[:-1]])
        occ_sorted = np.arange(len(sg)) - np.repeat(starts, np.diff(np.r_[starts, len(sg)]))
        occ = np.empty_like(occ_sorted)
        occ[order] = occ_sorted
        return g * (len(inv) + 1) + occ

    ka, kb = keys(inv[: len(da)]), keys(inv[len(da) :])
    _, ia, ib = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
    return ia.astype(np.int64), ib.astype(np.int64)


def _cell_texts(rows: Rows, idx: np.ndarray, columns: list[str]) -> dict[int, list[str]]:
    """Each row of ``idx``'s ``columns`` as canonical JSON, cell by cell."""
    if not len(idx) or not columns:
        return {int(i): [] for i in idx}
    t = take_rows(rows, idx, columns)
    cols = [
        [json.dumps(v, sort_keys=True, ensure_ascii=False, default=str) for v in t[c].to_pylist()]
        for c in columns
    ]
    return {int(i): [col[k] for col in cols] for k, i in enumerate(idx)}


def _pair_by_cells(
    ro: list[int], rn: list[int], co: dict[int, list[str]], cn: dict[int, list[str]]
) -> list[tuple[int, int]]:
    """Order-preserving pairs of ``ro`` x ``rn`` with the most cells in common (none: no pair)."""

    def sim(i: int, j: int) -> int:
        return sum(a == b for a, b in zip(co[i], cn[j], strict=True))

    m, k = len(ro), len(rn)
    best = [[0] * (k + 1) for _ in range(m + 1)]
    for a in range(m - 1, -1, -1):
        row, below = best[a], best[a + 1]
        for b in range(k - 1, -1, -1):
            s = sim(ro[a], rn[b])
            row[b] = max(below[b], row[b + 1], below[b + 1] + s if s else 0)
    pairs: list[tuple[int, int]] = []
    a = b = 0
    while a < m and b < k:
        s = sim(ro[a], rn[b])
        if s and best[a][b] == best[a + 1][b + 1] + s:
            pairs.append((ro[a], rn[b]))
            a, b = a + 1, b + 1
        elif best[a][b] == best[a + 1][b]:
            a += 1
        else:
            b += 1
    return pairs


def _positional(
    o: Rows, n: Rows, fo: np.ndarray, fn: np.ndarray, shared: list[str], ctx: OpContext | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(kinds, old rows, new rows, sort positions) of the changes, without a key."""
    mo, mn = _align(fo, fn, ctx)
    kinds: list[np.ndarray] = []
    olds: list[np.ndarray] = []
    news: list[np.ndarray] = []
    pos: list[np.ndarray] = []

    def add(kind: int, old: np.ndarray, new: np.ndarray, at: np.ndarray) -> None:
        kinds.append(np.full(len(at), kind, np.int8))
        olds.append(old.astype(np.int64))
        news.append(new.astype(np.int64))
        pos.append(at.astype(np.float64))

    free_o = np.ones(len(fo), bool)
    free_o[mo] = False
    free_n = np.ones(len(fn), bool)
    free_n[mn] = False
    uo, un = np.flatnonzero(free_o), np.flatnonzero(free_n)
    ia, ib = _multiset_match(fo[uo], fn[un])
    add(MOVED, uo[ia], un[ib], un[ib])
    free_o[uo[ia]] = False
    free_n[un[ib]] = False

    # Replaced runs: the stretches between consecutive aligned pairs.
    bo = np.r_[0, mo + 1]
    eo = np.r_[mo, len(fo)]
    bn = np.r_[0, mn + 1]
    en = np.r_[mn, len(fn)]
    runs = np.flatnonzero((eo > bo) | (en > bn))
    pending: list[tuple[list[int], list[int], float]] = []
    for r in runs.tolist():
        ro = [i for i in range(bo[r], eo[r]) if free_o[i]]
        rn = [j for j in range(bn[r], en[r]) if free_n[j]]
        pending.append((ro, rn, float(bn[r]) - 0.5))
    wanted = [
        (ro, rn)
        for ro, rn, _ in pending
        if ro and rn and len(ro) != len(rn) and len(ro) * len(rn) <= PAIR_CELLS
    ]
    by_cells = sum(len(ro) + len(rn) for ro, rn in wanted) <= PAIR_ROWS
    co: dict[int, list[str]] = {}
    cn: dict[int, list[str]] = {}
    if wanted and by_cells:
        co = _cell_texts(o, np.array(sorted(i for ro, _ in wanted for i in ro), np.int64), shared)
        cn = _cell_texts(n, np.array(sorted(j for _, rn in wanted for j in rn), np.int64), shared)
    for ro, rn, before in pending:
        if ro and rn and len(ro) == len(rn):
            pairs = list(zip(ro, rn, strict=True))
        elif ro and rn and by_cells and len(ro) * len(rn) <= PAIR_CELLS:
            pairs = _pair_by_cells(ro, rn, co, cn)
        elif ro and rn:
            pairs = list(zip(ro, rn, strict=False))
        else:
            pairs = []
        po = np.array([p[0] for p in pairs], np.int64)
        pn = np.array([p[1] for p in pairs], np.int64)
        add(CHANGED, po, pn, pn)
        left_o = np.setdiff1d(np.array(ro, np.int64), po)
        left_n = np.setdiff1d(np.array(rn, np.int64), pn)
        add(REMOVED, left_o, np.full(len(left_o), -1), np.full(len(left_o), before))
        add(ADDED, np.full(len(left_n), -1), left_n, left_n)
    if not kinds:
        e = np.empty(0, np.int64)
        return np.empty(0, np.int8), e, e, e.astype(np.float64)
    return np.concatenate(kinds), np.concatenate(olds), np.concatenate(news), np.concatenate(pos)


def _unique_keys(digests: np.ndarray, key: str, label: str) -> np.ndarray:
    if len(np.unique(digests)) != len(digests):
        raise ConfigError(
            f"The key column '{key}' has repeated values in the {label} version.",
            "Choose a column whose values are all different, or compare without a key.",
        )
    return digests


def _keyed(
    o: Rows, n: Rows, shared: list[str], key: str, ctx: OpContext | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    others = [c for c in shared if c != key]
    keys_ctx = None if ctx is None else _indeterminate(ctx)
    ko = _unique_keys(row_digests(o, [key], keys_ctx, "Reading old keys"), key, "old")
    kn = _unique_keys(row_digests(n, [key], keys_ctx, "Reading new keys"), key, "new")
    fo = row_digests(o, others, ctx, "Reading the old version")
    fn = row_digests(n, others, _after_half(ctx), "Reading the new version")
    match_of_new = np.full(len(kn), -1, np.int64)  # old row of each new row
    if len(ko):
        order = np.argsort(ko)
        ko_sorted = ko[order]
        at = np.minimum(np.searchsorted(ko_sorted, kn), len(ko) - 1)
        hit = ko_sorted[at] == kn
        match_of_new[hit] = order[at][hit]
    matched = match_of_new >= 0
    changed = matched.copy()
    changed[matched] = fo[match_of_new[matched]] != fn[matched]
    new_of_old = np.full(len(ko), -1, np.int64)
    new_of_old[match_of_new[matched]] = np.flatnonzero(matched)
    removed = np.flatnonzero(new_of_old < 0)
    # A removed row is listed after the new place of the last kept row before it.
    before = np.maximum.accumulate(np.r_[-1, new_of_old])[:-1][removed] + 0.5
    ch = np.flatnonzero(changed)
    ad = np.flatnonzero(~matched)
    kinds = np.concatenate(
        [np.full(len(ch), CHANGED), np.full(len(ad), ADDED), np.full(len(removed), REMOVED)]
    ).astype(np.int8)
    olds = np.concatenate([match_of_new[ch], np.full(len(ad), -1), removed]).astype(np.int64)
    news = np.concatenate([ch, ad, np.full(len(removed), -1)]).astype(np.int64)
    pos = np.concatenate([ch, ad, before]).astype(np.float64)
    return kinds, olds, news, pos


def _after_half(ctx: OpContext | None) -> OpContext | None:
    """``ctx`` for the second of two reads that each report 0 to 0.5."""
    if ctx is None:
        return None
    progress = ctx.progress

    def shifted(fraction: float | None, message: str) -> None:
        progress(None if fraction is None else 0.5 + fraction, message)

    return OpContext(progress=shifted, check_cancelled=ctx.check_cancelled)


def _indeterminate(ctx: OpContext) -> OpContext:
    progress = ctx.progress
    return OpContext(
        progress=lambda _f, message: progress(None, message), check_cancelled=ctx.check_cancelled
    )


def diff_tables(
    old: pa.Table | Rows,
    new: pa.Table | Rows,
    key: str | None = None,
    ctx: OpContext | None = None,
) -> VersionDiff:
    """The difference between two tables or versions (see the module docstring)."""
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
    d.columns = list(n.schema.names) + d.columns_removed
    if key is None:
        fo = row_digests(o, shared, ctx, "Reading the old version")
        fn = row_digests(n, shared, _after_half(ctx), "Reading the new version")
        kinds, olds, news, pos = _positional(o, n, fo, fn, shared, ctx)
    else:
        if key not in shared:
            raise ConfigError(
                f"The key column '{key}' must exist with the same type in both versions.",
                "Choose a column both versions have, or compare without a key.",
            )
        kinds, olds, news, pos = _keyed(o, n, shared, key, ctx)
    order = np.lexsort((np.where(olds >= 0, olds, news), pos))
    d.kinds, d.old_rows, d.new_rows = kinds[order], olds[order], news[order]
    counts = np.bincount(d.kinds, minlength=len(KINDS))
    d.rows_changed, d.rows_added, d.rows_removed, d.rows_moved = (int(c) for c in counts)
    return d


# -- reading the changed rows -----------------------------------------------------------
def take_rows(rows: Rows, idx: np.ndarray, columns: list[str] | None = None) -> pa.Table:
    """Rows ``idx`` (0-based, any order) of ``columns``; reads only the row groups they are in."""
    cols = list(rows.schema.names) if columns is None else columns
    idx = np.asarray(idx, np.int64)
    if not len(idx):
        return pa.schema([rows.schema.field(c) for c in cols]).empty_table()
    pf = getattr(rows, "pf", None)
    if pf is None:
        return rows.read().select(cols).take(pa.array(idx))
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    group = np.searchsorted(starts, idx, side="right") - 1
    parts: list[pa.Table] = []
    where = np.empty(len(idx), np.int64)  # position of each wanted row in the parts
    at = 0
    for g in np.unique(group).tolist():
        sel = np.flatnonzero(group == g)
        t = pf.read_row_group(g, columns=cols).take(pa.array(idx[sel] - starts[g]))
        parts.append(t)
        where[sel] = np.arange(at, at + len(sel))
        at += len(sel)
    return pa.concat_tables(parts).take(pa.array(where))


def read_changes(old: Rows, new: Rows, d: VersionDiff, start: int, count: int) -> list[RowChange]:
    """Changes ``start`` .. ``start + count`` of ``d`` with their cells' before and after."""
    stop = min(max(start, 0) + max(count, 0), d.changes)
    sl = slice(max(start, 0), stop)
    kinds, olds, news = d.kinds[sl], d.old_rows[sl], d.new_rows[sl]
    need_o = np.unique(olds[olds >= 0])
    need_n = np.unique(news[news >= 0])
    to = take_rows(old, need_o).to_pylist()
    tn = take_rows(new, need_n).to_pylist()
    by_o = dict(zip(need_o.tolist(), to, strict=True))
    by_n = dict(zip(need_n.tolist(), tn, strict=True))
    out: list[RowChange] = []
    for k, oi, ni in zip(kinds.tolist(), olds.tolist(), news.tolist(), strict=True):
        before = by_o.get(oi) if oi >= 0 else None
        after = by_n.get(ni) if ni >= 0 else None
        changed: list[str] = []
        if before is not None and after is not None:
            changed = [c for c in d.compared_columns if _differs(before.get(c), after.get(c))]
        out.append(
            RowChange(
                kind=KINDS[k],
                old_row=oi + 1 if oi >= 0 else None,
                new_row=ni + 1 if ni >= 0 else None,
                before=before,
                after=after,
                changed=changed,
            )
        )
    return out


def _differs(a: Any, b: Any) -> bool:
    if a is b or a == b:
        return False
    dump = json.dumps
    return bool(dump(a, sort_keys=True, default=str) != dump(b, sort_keys=True, default=str))


# -- versions -------------------------------------------------------------------------------
def version_labels(versions: list[VersionRecord]) -> dict[str, str]:
    """``v1``, ``v2``, ... by creation (oldest first), for each version's hash."""
    return {v.hash: f"v{i}" for i, v in enumerate(versions, 1)}


def diff_versions(
    workspace: Workspace,
    dataset: str,
    v1: str,
    v2: str,
    key: str | None = None,
    ctx: OpContext | None = None,
) -> VersionDiff:
    """Diff two versions of ``dataset`` (hashes or unique prefixes)."""
    store = DatasetStore(workspace)
    a = store.version(dataset, v1)
    b = store.version(dataset, v2)
    d = diff_tables(
        Rows.of(store.parquet_file(f"{a.dataset_id}@{a.hash}")),
        Rows.of(store.parquet_file(f"{b.dataset_id}@{b.hash}")),
        key,
        ctx,
    )
    labels = version_labels(store.versions(a.dataset_id))
    d.old, d.new, d.dataset_id = a.hash, b.hash, a.dataset_id
    d.old_label, d.new_label = labels.get(a.hash, a.short), labels.get(b.hash, b.short)
    return d


def read_version_changes(
    workspace: Workspace, d: VersionDiff, start: int, count: int
) -> list[RowChange]:
    """:func:`read_changes` for a diff of two versions (from :func:`diff_versions`)."""
    store = DatasetStore(workspace)
    old = Rows.of(store.parquet_file(f"{d.dataset_id}@{d.old}"))
    new = Rows.of(store.parquet_file(f"{d.dataset_id}@{d.new}"))
    return read_changes(old, new, d, start, count)
