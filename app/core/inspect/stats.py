"""Weight statistics per tensor, streamed one chunk at a time, cached by file hash.

Per tensor: mean, std, min, max, L2 norm, the share of near-zero values
(``|x| < 2**-26``, about 1.5e-8), the count of non-finite values and a histogram
on fixed, signed powers-of-two bins (the same edges for every tensor, so tensors
and models compare bin for bin). The histogram costs one integer shift per value:
the bin of a float32 is read from its sign and exponent bits.

Sums are kept in float64 around a shift (the tensor's first value), so the
standard deviation of a tensor whose mean is far from zero (norm weights near 1)
does not cancel away.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.inspect.tensors import TensorInfo, TensorSet, UnsupportedTensorError

#: Smallest and largest power-of-two magnitude bins: |x| in [2**k, 2**(k+1)) for k in this range;
#: below 2**K_MIN is the near-zero bin, at or above 2**K_MAX the top bin (with inf and NaN).
K_MIN, K_MAX = -26, 7
N_MAG = K_MAX - K_MIN + 1  # 34 magnitude bins per sign
N_BINS = 2 * N_MAG + 1  # negatives (largest first), near zero, positives
NEAR_ZERO = 2.0**K_MIN

#: Bump when the statistics or their JSON change: old cache files are then ignored.
STATS_VERSION = 1


def bin_edges() -> list[float]:
    """The N_BINS - 1 inner edges of the histogram; the first and last bins are open."""
    pos = [2.0**k for k in range(K_MIN + 1, K_MAX + 1)]
    return [*(-e for e in reversed(pos)), -NEAR_ZERO, NEAR_ZERO, *pos]


def _lut() -> np.ndarray:
    """Sign-and-exponent field (9 bits of a float32) -> histogram bin."""
    lut = np.empty(512, dtype=np.int64)
    for field_ in range(512):
        sign, exp = field_ >> 8, field_ & 0xFF
        k = exp - 127  # |x| in [2**k, 2**(k+1)); exp 0 (zero, denormals) is far below K_MIN
        if k < K_MIN:
            lut[field_] = N_MAG
            continue
        m = min(k, K_MAX) - K_MIN  # 0 .. N_MAG-1
        lut[field_] = N_MAG + 1 + m if sign == 0 else N_MAG - 1 - m
    return lut


_LUT = _lut()


@dataclass
class TensorStats:
    """Statistics of one tensor."""

    name: str
    n: int
    mean: float
    std: float
    min: float
    max: float
    l2: float
    near_zero: float  # share of values with |x| < 2**-26
    nonfinite: int
    histogram: list[int] = field(default_factory=list)
    outlier: bool = False
    outlier_ratio: float | None = None  # norm / median norm of its module type

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Accumulator:
    """Running sums over float32 chunks."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: float | None = None
        self.s1 = 0.0  # sum(x - shift)
        self.s2 = 0.0  # sum((x - shift)**2)
        self.lo = math.inf
        self.hi = -math.inf
        self.fields = np.zeros(512, dtype=np.int64)

    def add(self, chunk: np.ndarray) -> None:
        x = np.ascontiguousarray(chunk, dtype=np.float32).reshape(-1)
        if x.size == 0:
            return
        if self.shift is None:
            first = float(x[0])
            self.shift = first if math.isfinite(first) else 0.0
        d = x.astype(np.float64)
        d -= self.shift
        self.s1 += float(d.sum())
        self.s2 += float(np.dot(d, d))
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        self.fields += np.bincount(x.view(np.uint32) >> 23, minlength=512)
        self.n += x.size

    def result(self, name: str) -> TensorStats:
        n = self.n
        if n == 0:
            return TensorStats(name, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, [0] * N_BINS)
        k = self.shift or 0.0
        mean = k + self.s1 / n
        var = max(0.0, self.s2 / n - (self.s1 / n) ** 2)
        sumsq = self.s2 + 2 * k * self.s1 + n * k * k
        hist = np.bincount(_LUT, weights=self.fields, minlength=N_BINS).astype(np.int64)
        nonfinite = int(self.fields[255] + self.fields[511])
        return TensorStats(
            name=name,
            n=n,
            mean=mean,
            std=math.sqrt(var),
            min=self.lo,
            max=self.hi,
            l2=math.sqrt(max(0.0, sumsq)),
            near_zero=float(hist[N_MAG]) / n,
            nonfinite=nonfinite,
            histogram=[int(v) for v in hist],
        )


def tensor_stats(ts: TensorSet, info: TensorInfo) -> TensorStats:
    """Statistics of one tensor, read chunk by chunk."""
    acc = _Accumulator()
    for chunk in ts.chunks(info):
        acc.add(chunk)
    return acc.result(info.name)


# -- module types and outliers --------------------------------------------------------

_LAYER = re.compile(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)")


def layer_of(name: str) -> int | None:
    """The first numeric segment of a tensor name (its layer), if any."""
    m = _LAYER.search(name)
    return int(m.group(0)) if m else None


def module_type(name: str) -> str:
    """The name with its layer index replaced by ``*``: what the tensor is, in every layer."""
    return _LAYER.sub("*", name, count=1)


def flag_outliers(stats: Iterable[TensorStats], factor: float = 3.0) -> None:
    """Mark tensors whose L2 norm is ``factor`` times above or below the median of their type.

    Only module types repeated in at least three layers are judged (a median of two says
    nothing). ``outlier_ratio`` is set for every judged tensor.
    """
    groups: dict[str, list[TensorStats]] = {}
    for s in stats:
        if layer_of(s.name) is not None:
            groups.setdefault(module_type(s.name), []).append(s)
    for members in groups.values():
        if len(members) < 3:
            continue
        median = float(np.median([m.l2 for m in members]))
        for m in members:
            if median > 0:
                ratio = m.l2 / median
                m.outlier_ratio = ratio
                m.outlier = ratio > factor or ratio < 1 / factor
            else:
                m.outlier_ratio = None
                m.outlier = m.l2 > 0


# -- whole models, with a cache -------------------------------------------------------

ProgressFn = Callable[[float, str], None]


def file_key(ts: TensorSet, known_sha256: dict[str, str] | None = None) -> str:
    """Cache key of a model's weights: the sha256 of its files when the registry knows them,

    else a hash of each file's resolved path, size and modification time (cheap, and changed
    by any rewrite).
    """
    h = hashlib.sha256(f"inspect-stats-v{STATS_VERSION}\n".encode())
    for f in ts.files:
        sha = (known_sha256 or {}).get(f.name)
        if sha:
            h.update(f"sha256 {sha}\n".encode())
        else:
            st = f.stat()
            h.update(f"file {f.resolve()} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def model_stats(
    ts: TensorSet,
    *,
    cache_dir: Path | None = None,
    known_sha256: dict[str, str] | None = None,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Statistics of every tensor of a model, outliers flagged; cached in ``cache_dir``.

    Returns ``{"key", "bins", "tensors": [TensorStats dicts], "skipped": [{name, reason}],
    "cached": bool}``. ``cancelled()`` is polled between chunks; when it turns true the
    function raises :class:`app.core.jobs.context.Cancelled`.
    """
    from app.core.jobs.context import Cancelled

    key = file_key(ts, known_sha256)
    cache = cache_dir / f"stats-{key}.json" if cache_dir else None
    if cache and cache.is_file():
        try:
            data: dict[str, Any] = json.loads(cache.read_text("utf-8"))
            if data.get("version") == STATS_VERSION:
                data["cached"] = True
                return data
        except (OSError, json.JSONDecodeError):
            pass  # a damaged cache is recomputed
    total = sum(t.nbytes for t in ts.tensors) or 1
    done = 0
    results: list[TensorStats] = []
    skipped: list[dict[str, str]] = []
    for info in ts.tensors:
        if progress:
            progress(done / total, info.name)
        acc = _Accumulator()
        try:
            for chunk in ts.chunks(info):
                if cancelled and cancelled():
                    raise Cancelled
                acc.add(chunk)
        except UnsupportedTensorError as exc:
            skipped.append({"name": info.name, "reason": exc.message})
        else:
            results.append(acc.result(info.name))
        done += info.nbytes
    flag_outliers(results)
    data = {
        "version": STATS_VERSION,
        "key": key,
        "bins": bin_edges(),
        "near_zero_threshold": NEAR_ZERO,
        "tensors": [r.to_dict() for r in results],
        "skipped": skipped,
    }
    if cache:
        from app.core.store import atomic_write_json

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, data)
    if progress:
        progress(1.0, "done")
    data["cached"] = False
    return data
