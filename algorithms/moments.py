"""Weighted first and second moments of a partition, merged across workers without cancellation.

A partial is ``(weight, mean, scatter)``: the weight sum (1,), the weighted
mean (p,) and the centered scatter matrix ``sum_i w_i (x_i - mean)(x_i - mean)^T``
(p, p). Partials merge with the pairwise update of Chan, Golub and LeVeque,
so no step subtracts two large uncentered sums (dense data is centered on its
own partition first).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from drizzle_ml.program import Partition, Program

# Dense rows are centered in blocks of about this many entries (8 MB of float64),
# so that no centered copy of a whole partition is ever made.
_BLOCK_ENTRIES = 1 << 20


# Largest n*mean²/scatter ratio (per column) accepted from the uncentered Gram matrix.
_MAX_CANCELLATION = 1e4


def row_blocks(shape: tuple[int, int]):
    """``(lo, hi)`` row ranges covering ``shape[0]`` rows, each of at most ``_BLOCK_ENTRIES`` entries."""
    step = max(1, _BLOCK_ENTRIES // max(shape[1], 1))
    for lo in range(0, shape[0], step):
        yield lo, min(lo + step, shape[0])


def as_float64(X: Any) -> Any:
    """CSR ``X`` in float64; no copy when it already is."""
    return X if X.dtype == np.float64 else X.astype(np.float64)


def weight_and_mean(X: Any, sw: np.ndarray | None) -> tuple[float, np.ndarray]:
    """Weight sum and weighted mean (d,) of the rows of ``X`` (float64, dense or CSR)."""
    if sw is None:
        weight = float(X.shape[0])
        total = np.asarray(X.sum(axis=0, dtype=np.float64), dtype=np.float64).ravel()
    else:
        weight = float(sw.sum())
        total = np.asarray(X.T @ sw, dtype=np.float64).ravel()
    mean = total / weight if weight > 0 else np.zeros(X.shape[1])
    return weight, mean


def scatter(X: Any, sw: np.ndarray | None, weight: float, mean: np.ndarray) -> np.ndarray:
    """Centered scatter ``sum_i w_i (x_i - mean)(x_i - mean)^T``, shape (d, d).

    Unweighted float64 rows first try the uncentered Gram matrix, block by
    block with no copies (``X_b.T @ X_b`` runs as a symmetric rank-k update),
    minus ``n mean mean^T``; if that cancels more than 4 of the 16 digits in
    any column (a mean large next to the spread), the rows are centered block
    by block instead (no float64 copy of the whole partition). CSR always uses
    ``X^T W X - n mean mean^T``.
    """
    if sp.issparse(X):
        XW = X if sw is None else X.multiply(sw[:, None]).tocsr()
        G = np.asarray((X.T @ XW).toarray(), dtype=np.float64)
        G -= weight * np.outer(mean, mean)
        return G
    if sw is None and X.dtype == np.float64:
        G = np.zeros((X.shape[1], X.shape[1]))
        for lo, hi in row_blocks(X.shape):
            block = X[lo:hi]
            G += block.T @ block
        G -= weight * np.outer(mean, mean)
        with np.errstate(divide="ignore", invalid="ignore"):
            digits_lost = weight * mean * mean / np.diag(G)
        if np.all(digits_lost <= _MAX_CANCELLATION):
            return G
    m2 = np.zeros((X.shape[1], X.shape[1]))
    for lo, hi in row_blocks(X.shape):
        Xc = X[lo:hi] - mean
        m2 += Xc.T @ (Xc if sw is None else Xc * sw[lo:hi, None])
    return m2


def merge_moments(a_n: np.ndarray, a_mean: np.ndarray, a_m2: np.ndarray,
                   b_n: np.ndarray, b_mean: np.ndarray, b_m2: np.ndarray) -> None:
    """Chan et al.'s parallel merge of (weight, mean, centered M2), in place into the ``a_*`` arrays.

    ``a_m2``/``b_m2`` are (d, d) scatter matrices or (d,) diagonals.
    """
    na, nb = float(a_n[0]), float(b_n[0])
    if nb == 0.0:
        return
    if na == 0.0:
        a_n[...] = b_n
        a_mean[...] = b_mean
        a_m2[...] = b_m2
        return
    n = na + nb
    delta = b_mean - a_mean
    a_m2 += b_m2
    if a_m2.ndim == 2:
        a_m2 += np.outer(delta, delta * (na * nb / n))
    else:
        a_m2 += delta * delta * (na * nb / n)
    a_mean += delta * (nb / n)
    a_n[0] = n


def writable(partial: tuple) -> tuple:
    return tuple(p if p.flags.writeable else p.copy() for p in partial)



def partition_moments(X: Any, sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(weight (1,), mean (p,), scatter (p, p))`` of the rows of X (dense or CSR), in float64."""
    X = as_float64(X) if sp.issparse(X) else X
    weight, mean = weight_and_mean(X, sample_weight)
    p = X.shape[1]
    m2 = scatter(X, sample_weight, weight, mean) if weight > 0 else np.zeros((p, p))
    return np.array([weight]), mean, np.ascontiguousarray(m2)


def combine_moments(a, b):
    """Merge two moment partials (Chan et al.); writes into ``a`` and returns it."""
    a = writable(a)
    merge_moments(*a, *b)
    return a


def diag_scatter(X: Any, sw: np.ndarray | None, weight: float, mean: np.ndarray) -> np.ndarray:
    """Per-feature centered sums of squares ``sum_i w_i (x_ij - mean_j)^2``, shape (d,)."""
    if sp.issparse(X):
        sq = X.multiply(X)
        s2 = np.asarray(sq.sum(axis=0) if sw is None else sq.T @ sw, dtype=np.float64).ravel()
        return np.maximum(s2 - weight * mean * mean, 0.0)
    out = np.zeros(X.shape[1])
    for lo, hi in row_blocks(X.shape):
        centered = X[lo:hi] - mean
        centered *= centered
        out += centered.sum(axis=0) if sw is None else sw[lo:hi] @ centered
    return out


class FeatureMoments(Program):
    """One pass: weight sum, mean and per-feature centered sums of squares of X.

    Model (root only, nothing flows down): ``weight`` (1,), ``mean`` (d,),
    ``variance`` (d,) (population variance, ``ddof=0``).
    """

    shared = ()

    def local(self, model, part: Partition):
        X = as_float64(part.X) if sp.issparse(part.X) else part.X
        weight, mean = weight_and_mean(X, part.sample_weight)
        return np.array([weight]), mean, diag_scatter(X, part.sample_weight, weight, mean)

    def combine(self, a, b):
        return combine_moments(a, b)

    def update(self, model, total, iteration):
        weight, mean, m2 = (np.array(t) for t in total)
        return {"weight": weight, "mean": mean, "variance": m2 / weight[0]}, {"converged": True}

    @staticmethod
    def initial_model(n_features: int) -> dict[str, np.ndarray]:
        return {"weight": np.zeros(1), "mean": np.zeros(n_features), "variance": np.zeros(n_features)}
