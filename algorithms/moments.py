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


def partition_moments(X: Any, sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(weight (1,), mean (p,), scatter (p, p))`` of the rows of X (dense or CSR), in float64."""
    n = X.shape[0]
    sw = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    weight = float(n) if sw is None else float(sw.sum())
    if weight <= 0:  # all weights zero: contributes nothing
        p = X.shape[1]
        return np.zeros(1), np.zeros(p), np.zeros((p, p))
    if sp.issparse(X):
        X = X.astype(np.float64)
        mean = np.asarray(X.sum(axis=0) if sw is None else X.T @ sw).ravel() / weight
        Xw = X if sw is None else sp.diags(sw) @ X
        scatter = np.asarray((X.T @ Xw).toarray()) - weight * np.outer(mean, mean)
    else:
        X = np.asarray(X, dtype=np.float64)
        mean = (X.sum(axis=0) if sw is None else sw @ X) / weight
        centered = X - mean
        scatter = centered.T @ (centered if sw is None else centered * sw[:, None])
    return np.array([weight]), mean, scatter


def combine_moments(a, b):
    """Merge two moment partials (Chan et al.); writes into ``a`` and returns it."""
    wa, ma, sa = a
    wb, mb, sb = b
    na, nb = float(wa[0]), float(wb[0])
    if nb == 0:
        return a
    if na == 0:
        wa[:], ma[:], sa[:] = wb, mb, sb
        return a
    n = na + nb
    delta = mb - ma
    sa += sb
    sa += np.outer(delta, delta) * (na * nb / n)
    ma += delta * (nb / n)
    wa[0] = n
    return a

