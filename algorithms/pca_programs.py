"""Principal component analysis as engine programs (the estimator is in :mod:`~drizzle_ml.algorithms.pca`).

Two programs:

:class:`CovariancePCA`
    One iteration: every worker reduces its rows to (weight sum, mean, centered
    scatter matrix); partials merge with Chan et al.'s parallel formula; the
    root eigendecomposes the covariance matrix.
:class:`SubspacePCA`
    Randomized block subspace (power) iteration for the top components when a
    ``d x d`` matrix is too big to move or decompose: only ``d x l`` blocks
    cross the tree.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from drizzle_ml.program import Partition, Program

from .moments import (
    as_float64,
    combine_moments,
    diag_scatter,
    merge_moments,
    partition_moments,
    row_blocks,
    weight_and_mean,
    writable,
)

SVD_SOLVERS = ("covariance", "subspace")

_EPS = np.finfo(np.float64).eps


# -- programs ---------------------------------------------------------------------------


class CovariancePCA(Program):
    """PCA from the covariance matrix, in one iteration.

    Model: ``mean`` (d,), ``variances`` (d,) eigenvalues of the covariance in
    decreasing order, ``eigenvectors`` (d, d) in matching columns, ``n`` (1,)
    total weight. ``local`` reads nothing from the model (``shared = ()``).

    Partial: ``(n (1,), mean (d,), M2 (d, d))``, the weight sum, mean and
    centered scatter matrix of the worker's rows; ``combine`` merges them with
    Chan et al.'s formula ``M2 = M2a + M2b + delta delta^T na nb / n``.
    """

    shared: tuple[str, ...] = ()

    def local(self, model, part: Partition):
        return partition_moments(part.X, part.sample_weight)

    def combine(self, a, b):
        return combine_moments(a, b)

    def update(self, model, total, iteration):
        n_arr, mean, m2 = total
        n = float(n_arr[0])
        cov = m2 / (n - 1.0)
        variances, vectors = np.linalg.eigh(cov)
        variances = variances[::-1].copy()
        variances[variances < 0.0] = 0.0
        new = {
            "mean": mean.copy(),
            "variances": variances,
            "eigenvectors": np.ascontiguousarray(vectors[:, ::-1]),
            "n": n_arr.copy(),
        }
        return new, {"total_variance": float(variances.sum()), "converged": True}


class SubspacePCA(Program):
    """Top principal components by block subspace (power) iteration on the covariance.

    Model, shared (read by ``local``): ``Q`` (d, l) orthonormal block, ``mean``
    (d,) the centering used by ``local``. Root only: ``V`` (d, l) Ritz vectors
    of the last block, ``ritz`` (l,) their Ritz values of the scatter matrix
    (decreasing), ``n`` (1,) total weight, ``total_ss`` (1,) total centered sum
    of squares.

    Partial: ``(n (1,), mean (d,), m2 (d,), Y (d, l))``: weight sum, mean and
    per-feature centered sums of squares of the worker's rows (merged by Chan
    et al.'s formula), and ``Y = X_c^T W X_c Q`` centered at the model's mean
    ``m`` (summed). Dense rows are centered in blocks of rows, never as a whole
    partition; CSR rows stay sparse, with ``Z = X Q - 1 (m^T Q)``,
    ``Y = X^T W Z - m (1^T W Z)``. The structure is the same every iteration.

    Iteration 0 runs with the initial mean (zero) and establishes the true mean
    ``mu``; its ``Y`` is corrected by ``- n delta (delta^T Q)``, ``delta = mu - m``
    (exact algebra, only rounding-sensitive, and it only seeds the next block).
    From iteration 1 on ``m == mu`` exactly. Each update does Rayleigh-Ritz on
    the block, orthonormalizes ``C Q U`` for the next block, and stops when the
    sine of the largest principal angle between the top-``k`` Ritz subspaces of
    two successive iterations is at most ``tol``. Ritz vectors whose Ritz value
    is numerically zero (beyond the rank of the data) are left out of the test.
    """

    shared: tuple[str, ...] = ("Q", "mean")

    def __init__(self, n_components: int, tol: float = 1e-12):
        self.n_components, self.tol = n_components, tol

    def local(self, model, part: Partition):
        X = part.X
        sw = part.sample_weight
        Q, m = model["Q"], model["mean"]
        n_features = X.shape[1]
        if sp.issparse(X):
            X = as_float64(X)
            weight, mean = weight_and_mean(X, sw)
            m2 = diag_scatter(X, sw, weight, mean) if weight > 0 else np.zeros(n_features)
            # Sparse rows stay sparse: Z = X Q - 1 (m^T Q), Y = X^T W Z - m (1^T W Z).
            Z = np.asarray(X @ Q, dtype=np.float64)
            Z -= m @ Q
            if sw is not None:
                Z *= sw[:, None]
            Y = np.asarray(X.T @ Z, dtype=np.float64)
            Y -= np.outer(m, Z.sum(axis=0))
            return np.array([weight]), mean, m2, np.ascontiguousarray(Y)
        # Dense rows are centered block by block (float64, no copy of the whole
        # partition): X Q - 1 (m^T Q) would cancel badly when the mean is large
        # compared with the spread.
        weight, mean = weight_and_mean(X, sw)
        m2 = np.zeros(n_features)
        Y = np.zeros(Q.shape)
        for lo, hi in row_blocks(X.shape):
            block = np.array(X[lo:hi], dtype=np.float64)  # a copy, in float64
            w = None if sw is None else sw[lo:hi, None]
            if weight > 0:
                dev = block - mean
                dev *= dev
                m2 += dev.sum(axis=0) if w is None else (dev * w).sum(axis=0)
            block -= m
            Z = block @ Q
            if w is not None:
                Z *= w
            Y += block.T @ Z
        return np.array([weight]), mean, m2, Y

    def combine(self, a, b):
        a = writable(a)
        merge_moments(a[0], a[1], a[2], b[0], b[1], b[2])
        np.add(a[3], b[3], out=a[3])
        return a

    def update(self, model, total, iteration):
        n_arr, mean, m2, Y = total
        n = float(n_arr[0])
        Q, m = model["Q"], model["mean"]
        mu = mean.copy()
        delta = mu - m
        Yc = Y - n * np.outer(delta, delta @ Q) if delta.any() else Y.copy()
        H = Q.T @ Yc
        ritz, U = np.linalg.eigh(0.5 * (H + H.T))
        ritz, U = ritz[::-1].copy(), U[:, ::-1]
        V = Q @ U
        Q_next, _ = np.linalg.qr(Yc @ U)
        k = self.n_components
        top = ritz[0] if ritz.size else 0.0
        k_eff = int(np.count_nonzero(ritz[:k] > 100 * max(Q.shape[0], 100) * _EPS * top)) if top > 0 else 0
        if k_eff == 0:
            angle = 0.0
        else:
            P, W = model["V"][:, :k_eff], V[:, :k_eff]
            angle = float(np.linalg.norm(W - P @ (P.T @ W), 2))
        converged = iteration >= 1 and angle <= self.tol
        new = {
            "Q": np.ascontiguousarray(Q_next),
            "mean": mu,
            "V": np.ascontiguousarray(V),
            "ritz": ritz,
            "n": n_arr.copy(),
            "total_ss": np.array([float(m2.sum())]),
        }
        return new, {"angle": angle, "converged": converged}
