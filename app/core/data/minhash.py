"""MinHash signatures over character shingles and LSH banding, with numpy.

Shingle hashes are a deterministic 64-bit polynomial rolling hash of code points
(no Python ``hash``, which changes per process), folded to 32 bits; the
``num_perm`` permutations are multiply-shift hashes with seeded coefficients.
Candidate pairs come from LSH bands and are confirmed by the estimated Jaccard
similarity (the share of equal signature values).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_MASK32 = np.uint64(0xFFFFFFFF)


def _coefficients(
    num_perm: int, seed: int
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def shingle_hashes(text: str, k: int = 5) -> npt.NDArray[np.uint64]:
    """Distinct 32-bit hashes (as uint64) of the character k-grams of ``text``."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if cps.size == 0:
        return np.zeros(1, dtype=np.uint64)
    if cps.size < k:
        k = int(cps.size)
    n = cps.size - k + 1
    h = np.zeros(n, dtype=np.uint64)
    mult = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        for j in range(k):
            h = h * mult + cps[j : j + n]
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return np.unique(h & _MASK32)


def signatures(
    texts: Sequence[str], num_perm: int = 128, k: int = 5, seed: int = 1
) -> npt.NDArray[np.uint32]:
    """One MinHash signature (``num_perm`` uint32) per text."""
    a, b = _coefficients(num_perm, seed)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for i, t in enumerate(texts):
            sh = shingle_hashes(t, k)
            # multiply-shift: high 32 bits of (a*x + b) mod 2^64
            hv = (np.outer(sh, a) + b) >> np.uint64(32)
            out[i] = hv.min(axis=0).astype(np.uint32)
    return out


def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimizing false positives + false negatives at ``threshold``."""

    def integrate(f: object, lo: float, hi: float) -> float:
        steps = 100
        dx = (hi - lo) / steps
        return sum(f(lo + (i + 0.5) * dx) for i in range(steps)) * dx  # type: ignore[operator]

    best = (1, num_perm)
    best_err = math.inf
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        if rows == 0:
            break
        fp = integrate(lambda s, r=rows, b=bands: 1 - (1 - s**r) ** b, 0.0, threshold)
        fn = integrate(lambda s, r=rows, b=bands: 1 - (1 - (1 - s**r) ** b), threshold, 1.0)
        if fp + fn < best_err:
            best_err = fp + fn
            best = (bands, rows)
    return best


def near_duplicates(
    texts: Sequence[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    k: int = 5,
    seed: int = 1,
) -> list[int]:
    """Indices of texts that are near-duplicates of an earlier kept text (to drop)."""
    if not texts:
        return []
    return near_duplicates_of(signatures(texts, num_perm, k, seed), threshold)


def near_duplicates_of(sig: npt.NDArray[np.uint32], threshold: float = 0.8) -> list[int]:
    """Rows of a signature matrix that are near-duplicates of an earlier kept row (to drop)."""
    n, num_perm = sig.shape
    if n == 0:
        return []
    bands, rows = optimal_bands(threshold, num_perm)
    candidates: dict[int, set[int]] = defaultdict(set)
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        part = np.ascontiguousarray(sig[:, band * rows : (band + 1) * rows])
        for i in range(n):
            buckets[part[i].tobytes()].append(i)
        for members in buckets.values():
            # Each member against the ones just before it (bounded for huge buckets).
            for idx in range(1, len(members)):
                candidates[members[idx]].update(members[max(0, idx - 32) : idx])
    dropped: set[int] = set()
    for j in sorted(candidates):
        for i in sorted(candidates[j]):
            if i in dropped:
                continue
            if float(np.mean(sig[i] == sig[j])) >= threshold:
                dropped.add(j)
                break
    return sorted(dropped)
