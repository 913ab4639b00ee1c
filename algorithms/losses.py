"""Data terms of linear models over a flat parameter vector, evaluated on one partition.

Parameters are laid out as ``w = [coef.ravel(), intercept]`` with ``coef`` of
shape (n_outputs, n_features) and ``intercept`` of shape (n_outputs,) (absent
without an intercept). A partition's evaluation returns sums, not means, so
that partials add up across workers:

``(grad_sum, stats)`` with ``grad_sum`` of shape (n_params,) and
``stats = [loss_sum, weight_sum]``, both float64 whatever the data's dtype.

The optimizer turns them into the objective
``f(w) = (loss_sum + alpha/2 * ||coef||²) / weight_sum``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

KINDS = ("binomial", "multinomial", "squared")
_BLOCK_BYTES = 2 * 1024 * 1024  # rows per block: the block stays in L2/L3 for the second product


class LinearLoss:
    """Loss of a linear model ``z = X @ coef.T + intercept``.

    kind : {"binomial", "multinomial", "squared"}
        ``binomial``: y in {0, 1}, one output. ``multinomial``: y integer class
        codes in [0, n_outputs). ``squared``: half squared error, y of shape
        (n,) for one output or (n, n_outputs).
    n_features, n_outputs : sizes of ``coef``
    fit_intercept : whether ``w`` ends with an intercept per output
    """

    def __init__(self, kind: str, n_features: int, n_outputs: int = 1, fit_intercept: bool = True):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.n_features, self.n_outputs = kind, int(n_features), int(n_outputs)
        self.fit_intercept = bool(fit_intercept)
        self.n_coef = self.n_features * self.n_outputs
        self.n_params = self.n_coef + (self.n_outputs if self.fit_intercept else 0)

    def split(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(coef, intercept)`` views of ``w``: shapes (n_outputs, n_features) and (n_outputs,)."""
        coef = w[: self.n_coef].reshape(self.n_outputs, self.n_features)
        return coef, (w[self.n_coef :] if self.fit_intercept else None)

    def touched(self, X: Any) -> np.ndarray | None:
        """The entries of ``w`` these rows read and can give a nonzero gradient (sorted), or None for all.

        For sparse rows: the coefficients of the columns that hold a value,
        for every output, and the intercepts.
        """
        if not sp.issparse(X):
            return None
        columns = np.unique(sp.csr_matrix(X).indices).astype(np.int64)
        coords = (np.arange(self.n_outputs, dtype=np.int64)[:, None] * self.n_features + columns[None, :]).ravel()
        if self.fit_intercept:
            coords = np.concatenate([coords, self.n_coef + np.arange(self.n_outputs, dtype=np.int64)])
        return coords

    def penalty_mask(self) -> np.ndarray:
        """1.0 for penalized entries of ``w`` (coefficients), 0.0 for intercepts."""
        mask = np.zeros(self.n_params)
        mask[: self.n_coef] = 1.0
        return mask

    def decision(self, w: np.ndarray, X: Any) -> np.ndarray:
        """Linear scores of shape (n, n_outputs), in X's floating dtype."""
        coef, intercept = self.split(w)
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        z = X @ coef.T.astype(dtype, copy=False)
        z = np.asarray(z)
        if intercept is not None:
            z += intercept.astype(dtype, copy=False)
        return z

    def evaluate(self, w: np.ndarray, X: Any, y: np.ndarray, sample_weight: np.ndarray | None,
                 with_loss: bool = True):
        """``(grad_sum, [loss_sum, weight_sum])`` of the data term on these rows.

        Dense rows go in blocks of about 2 MiB, so the second
        product (``X_b.T @ resid``) rereads the block from cache: one pass over
        X from memory instead of two. ``with_loss=False`` returns NaN for
        ``loss_sum`` and may skip computing it (a ``log`` per row).
        """
        n = X.shape[0]
        dense = isinstance(X, np.ndarray) or not sp.issparse(X)  # the ndarray test first: it is the hot path
        step = max(256, _BLOCK_BYTES // max(1, X.shape[1] * X.itemsize)) if dense else n
        block = self._block_binomial if self.kind == "binomial" else self._block
        if n <= step:  # one block, the common case of a small partition: its sums are the answer
            gcoef, gintercept, loss = block(w, X, y, sample_weight, with_loss)
        else:
            # Summed in float64 whatever X's precision, block after block.
            gcoef, gintercept, loss = np.zeros(self.n_coef), np.zeros(self.n_params - self.n_coef), 0.0
            for lo in range(0, n, step):
                hi = min(lo + step, n)
                sw = None if sample_weight is None else sample_weight[lo:hi]
                b_coef, b_intercept, b_loss = block(w, X[lo:hi], y[lo:hi], sw, with_loss)
                gcoef += b_coef
                gintercept += b_intercept
                loss += b_loss
        grad = np.empty(self.n_params)
        grad[: self.n_coef] = gcoef
        if self.fit_intercept:
            grad[self.n_coef :] = gintercept
        if not with_loss:
            loss = np.nan
        weight = float(n) if sample_weight is None else float(sample_weight.sum(dtype=np.float64))
        return grad, np.array([loss, weight])

    def _block(self, w, X, y, sample_weight, with_loss: bool = True) -> tuple[Any, Any, float]:
        """One block of rows: ``(coef gradient (n_coef,), intercept gradient (n_outputs,), loss sum)``.

        The loss sum may be any value without ``with_loss``.
        """
        n = X.shape[0]
        z = self.decision(w, X)
        if self.kind == "multinomial":
            zmax = z.max(axis=1, keepdims=True)
            e = np.exp(z - zmax)
            norm = e.sum(axis=1, keepdims=True)
            rows = np.arange(n)
            losses = (np.log(norm[:, 0]) + zmax[:, 0]) - z[rows, y]
            resid = e / norm
            resid[rows, y] -= 1.0
        else:
            resid = z - (y.reshape(n, -1) if y.ndim == 1 else y)
            losses = 0.5 * np.einsum("ij,ij->i", resid, resid)
        resid = resid.astype(z.dtype, copy=False)  # keep X.T @ resid in X's precision
        if sample_weight is not None:
            resid *= sample_weight.astype(resid.dtype, copy=False)[:, None]
            losses = losses * sample_weight
        gcoef = X.T @ resid  # (n_features, n_outputs)
        if sp.issparse(gcoef):
            gcoef = gcoef.toarray()
        gintercept = resid.sum(axis=0, dtype=np.float64) if self.fit_intercept else 0.0
        return np.asarray(gcoef).T.ravel(), gintercept, float(losses.sum(dtype=np.float64))

    def _block_binomial(self, w, X, y, sample_weight, with_loss: bool) -> tuple[Any, Any, float]:
        """:meth:`_block` for one output, with matrix-vector products (BLAS gemv, or CSR's), not (n, 1) matrices."""
        n_coef = self.n_coef  # one output: coef is w[:n_coef], the intercept w[n_coef]
        z = X @ w[:n_coef].astype(X.dtype, copy=False)
        if self.fit_intercept:
            z += w[n_coef]
        p = expit(z)
        loss = _binomial_loss_sum(z, p, y, sample_weight) if with_loss else 0.0
        resid = p
        resid -= y  # p is not needed any more: the residual goes in its place, in X's precision
        if sample_weight is not None:
            resid *= sample_weight.astype(resid.dtype, copy=False)
        gintercept = resid.sum(dtype=np.float64) if self.fit_intercept else 0.0
        return resid @ X, gintercept, loss


def _binomial_loss_sum(z: np.ndarray, p: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> float:
    """Sum over rows of ``log(1 + e^z) - y z`` (weighted), as two dot products, in float64.

    The row loss is ``(1 - y) z - log(p)`` with ``p = expit(z)``: ``log(p)`` is exact to
    about 1e-16 absolute (p is accurate relative to itself), and one ``log`` costs a
    third of scipy's ``log_expit``. The sum is ``(1 - y)·z - 1·log(p)`` (weighted:
    ``(w - w y)·z - w·log(p)``), no per-row loss array.
    """
    log_p = _log_probabilities(p, z).astype(np.float64, copy=False)
    z = z.astype(np.float64, copy=False)
    if sample_weight is None:
        return float(z.sum() - np.dot(y, z) - log_p.sum())
    sw = sample_weight.astype(np.float64, copy=False)
    return float(np.dot(sw - sw * y, z) - np.dot(sw, log_p))


def _log_probabilities(p: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``log(p)`` for ``p = expit(z)``; ``z`` itself where ``p`` underflowed to 0 (z < -745)."""
    if p.all():
        return np.log(p)
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    np.copyto(log_p, z, where=p == 0)
    return log_p
