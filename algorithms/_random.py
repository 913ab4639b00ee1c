"""Random numbers keyed by global row index, so results do not depend on the partitioning.

A worker holding rows ``lo:hi`` draws the same numbers for those rows as a
single worker holding everything would: each number is a hash of
``(seed, stream, row)``, not a position in a sequential generator.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # Wrapping uint64 arithmetic is the point here.
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def row_uniform(seed: int, stream: int, row_offset: int, n_rows: int) -> np.ndarray:
    """Uniform floats in (0, 1), shape (n_rows,), for global rows ``row_offset ...``.

    ``seed`` and ``stream`` (e.g. an iteration number) select independent
    sequences; the value for a row never depends on which worker holds it.
    """
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    key = _splitmix64(key ^ np.uint64(stream & 0xFFFFFFFFFFFFFFFF))
    rows = np.arange(row_offset, row_offset + n_rows, dtype=np.uint64)
    bits = _splitmix64(rows ^ key[0]) >> np.uint64(11)  # 53 random bits
    return (bits.astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def seed_from(random_state) -> int:
    """A 63-bit seed from a scikit-learn ``random_state`` (None, int or RandomState)."""
    from sklearn.utils import check_random_state

    return int(check_random_state(random_state).randint(0, 2**63 - 1, dtype=np.int64))
