"""k-means: k-means++ (or random) initialisation and Lloyd iterations as engine programs.

No scikit-learn here: workers import this module to run the programs, and
start faster without it (the estimator is in :mod:`~drizzle_ml.algorithms.kmeans`).

Everything that needs the data runs on the cluster, driver-free inside a job:

* :class:`KMeansPlusPlusInit` draws scikit-learn's greedy k-means++ centers
  with D²-weighted sampling by exponential keys: row ``i`` gets
  ``key = -log(u_i) / (w_i * D²_i)`` with ``u_i`` keyed by its global row
  index (:func:`~drizzle_ml.algorithms._random.row_uniform`), and the row with
  the smallest key over all workers is a sample with probability
  proportional to ``w_i * D²_i``. A worker's partial carries its smallest key
  and that row; :meth:`combine` keeps the smaller key (ties: the smaller row
  index), so the draw does not depend on the partitioning.
* :class:`RandomInit` draws ``n_clusters`` distinct rows with probability
  proportional to the weights (the ``n_clusters`` smallest keys ``-log(u)/w``).
* :class:`Lloyd` runs Lloyd iterations, then one evaluation iteration at the
  final centers so that the inertia it reports belongs to them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from drizzle_ml.program import Partition, Program

from ._random import row_uniform

_CHUNK = 4096  # rows per block of the (rows, centers) distance matrix


# -- distances ---------------------------------------------------------------------------------

def _row_norms_sq(X: Any) -> np.ndarray:
    """Squared row norms of X (n, d), dense or CSR, shape (n,), in X's dtype."""
    if sp.issparse(X):
        return np.asarray(X.multiply(X).sum(axis=1)).ravel().astype(X.dtype, copy=False)
    return np.einsum("ij,ij->i", X, X)


def _cached_row_norms_sq(part: Partition) -> np.ndarray:
    """The partition's squared row norms, computed once per worker and kept in ``part.cache``."""
    xx = part.cache.get("kmeans.row_norms_sq")
    if xx is None:
        xx = part.cache["kmeans.row_norms_sq"] = _row_norms_sq(part.X)
    return xx


def _sq_dists(X: Any, C: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Squared distances (n, m) between the rows of X (n, d) and C (m, d), clipped at 0.

    Computed in X's dtype as ``|x|² - 2 x·c + |c|²``; ``xx`` are X's squared row norms.
    """
    C = np.asarray(C, dtype=X.dtype)
    cc = np.einsum("ij,ij->i", C, C)
    d = X @ C.T
    d = np.asarray(d.toarray() if sp.issparse(d) else d)
    d *= -2
    d += xx[:, None]
    d += cc[None, :]
    np.maximum(d, 0, out=d)
    return d


def _assign(X: Any, centers: np.ndarray, xx: np.ndarray | None = None,
            weights: np.ndarray | None = None):
    """Closest center of each row of X (n, d): labels (n,) int64 and squared distances (n,) float64.

    With ``weights`` (n,), also returns the weighted sum of each cluster's rows
    (k, d) float64. Dense rows are summed block by block while the block is
    still in cache (one dense indicator product per block), so X is read once.
    """
    n, k = X.shape[0], len(centers)
    if xx is None:
        xx = _row_norms_sq(X)
    labels = np.empty(n, dtype=np.int64)
    d2 = np.empty(n, dtype=np.float64)
    dense_sums = weights is not None and not sp.issparse(X)
    sums = np.zeros((k, X.shape[1])) if dense_sums else None
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        block = X[lo:hi]
        d = _sq_dists(block, centers, xx[lo:hi])
        rows = np.arange(hi - lo)
        labels[lo:hi] = np.argmin(d, axis=1)
        d2[lo:hi] = d[rows, labels[lo:hi]]
        if dense_sums:
            indicator = np.zeros((hi - lo, k), dtype=X.dtype)
            indicator[rows, labels[lo:hi]] = weights[lo:hi]
            sums += indicator.T @ block
    if weights is None:
        return labels, d2
    if sums is None:  # sparse rows: one sparse indicator product
        sums = np.asarray((sp.csr_matrix((weights, (labels, np.arange(n))), shape=(k, n)) @ X).toarray(),
                          dtype=np.float64)
    return labels, d2, sums


def _weights(part: Partition) -> np.ndarray:
    sw = part.sample_weight
    return np.ones(part.n_rows) if sw is None else np.asarray(sw, dtype=np.float64)


def _rows(X: Any, index: Any) -> np.ndarray:
    """Rows ``index`` of X (dense or CSR) as a dense float64 array (len(index), d)."""
    rows = X[index]
    return np.asarray(rows.toarray() if sp.issparse(rows) else rows, dtype=np.float64)


def _first_k(keys: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest ``(key, id)`` pairs, in that order (fewer if len < k)."""
    if len(keys) > k:
        # Everything tied with the k-th smallest key may belong, so cut at the value.
        kth = np.partition(keys, k - 1)[k - 1]
        pos = np.flatnonzero(keys <= kth)
    else:
        pos = np.arange(len(keys))
    order = np.lexsort((ids[pos], keys[pos]))
    return pos[order[:k]]


def _merge_first_k(a: dict, b: dict, k: int, key: str, fields: tuple[str, ...]) -> None:
    """Keep in ``a`` (in place) the ``k`` smallest ``(a[key], a["id"])`` entries of ``a`` and ``b``."""
    keys = np.concatenate([a[key], b[key]])
    ids = np.concatenate([a["id"], b["id"]])
    pos = _first_k(keys, ids, k)
    for f in fields:
        merged = np.concatenate([a[f], b[f]])[pos]  # a copy: b may be a receive buffer
        a[f][...] = merged


# -- programs ----------------------------------------------------------------------------------

class KMeansPlusPlusInit(Program):
    """Greedy k-means++ seeding (scikit-learn's variant) as ``2 * n_clusters - 1`` iterations.

    Iteration 0 draws the first center with probability proportional to the
    sample weight. Then each new center takes two iterations: a *sample*
    phase draws ``n_local_trials`` candidates (independently, with
    probability proportional to ``w * D²``), an *evaluate* phase computes the
    potential ``sum_i w_i * min(D²_i, |x_i - candidate|²)`` of each candidate,
    and the update keeps the candidate with the lowest potential.

    Model (all shared):
        ``centers`` (n_clusters, d) float64, rows ``:n_chosen`` filled;
        ``candidates`` (n_local_trials, d) float64;
        ``state`` (2,) int64: ``[phase (0 sample, 1 evaluate), n_chosen]``.
    Partial (fixed structure in both phases):
        ``key`` (L,), ``id`` (L,) int64, ``row`` (L, d): the smallest key per
        trial and its row; ``pot`` (L,): per-candidate potentials.
    """

    shared = ("centers", "candidates", "state")

    def __init__(self, n_clusters: int, n_local_trials: int, seed: int):
        self.n_clusters, self.n_local_trials, self.seed = n_clusters, n_local_trials, seed
        self._memo: tuple | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_memo"] = None
        return state

    @staticmethod
    def initial_model(n_clusters: int, n_features: int, n_local_trials: int) -> dict[str, np.ndarray]:
        return {
            "centers": np.zeros((n_clusters, n_features)),
            "candidates": np.zeros((n_local_trials, n_features)),
            "state": np.zeros(2, dtype=np.int64),
        }

    def _closest_sq(self, part: Partition, centers: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """D² (n_rows,) to ``centers`` (m, d); reuses the last result when its centers are a prefix."""
        m = len(centers)
        memo = self._memo
        reusable = (memo is not None and memo[0] is part and len(memo[1]) <= m
                    and np.array_equal(memo[1], centers[: len(memo[1])]))
        if reusable:
            d2, start = memo[2].copy(), len(memo[1])
        else:
            d2, start = np.full(part.n_rows, np.inf), 0
        for lo in range(0, part.n_rows, _CHUNK):
            hi = min(lo + _CHUNK, part.n_rows)
            if start < m:
                d = _sq_dists(part.X[lo:hi], centers[start:], xx[lo:hi])
                np.minimum(d2[lo:hi], d.min(axis=1), out=d2[lo:hi])
        self._memo = (part, np.array(centers), d2)
        return d2

    def local(self, model: dict, part: Partition) -> dict[str, np.ndarray]:
        X, n, L = part.X, part.n_rows, self.n_local_trials
        phase, m = int(model["state"][0]), int(model["state"][1])
        w = _weights(part)
        out = {
            "key": np.full(L, np.inf),
            "id": np.full(L, part.n_total, dtype=np.int64),
            "row": np.zeros((L, X.shape[1])),
            "pot": np.zeros(L),
        }
        xx = _cached_row_norms_sq(part)
        if phase == 0:
            if m == 0:
                weight, trials = w, 1
            else:
                weight, trials = w * self._closest_sq(part, model["centers"][:m], xx), L
            with np.errstate(divide="ignore"):
                for j in range(trials):
                    u = row_uniform(self.seed, m * L + j, part.row_offset, n)
                    keys = -np.log(u) / weight
                    i = int(np.argmin(keys))
                    out["key"][j], out["id"][j], out["row"][j] = keys[i], part.row_offset + i, _rows(X, [i])[0]
        else:
            d2 = self._closest_sq(part, model["centers"][:m], xx)
            cand = model["candidates"]
            for lo in range(0, n, _CHUNK):
                hi = min(lo + _CHUNK, n)
                d = np.minimum(_sq_dists(X[lo:hi], cand, xx[lo:hi]), d2[lo:hi, None])
                out["pot"] += w[lo:hi] @ d
        return out

    def combine(self, a: dict, b: dict) -> dict:
        take = (b["key"] < a["key"]) | ((b["key"] == a["key"]) & (b["id"] < a["id"]))
        for f in ("key", "id", "row"):
            a[f][take] = b[f][take]
        a["pot"] += b["pot"]
        return a

    def update(self, model: dict, total: dict, iteration: int) -> tuple[dict, dict[str, float]]:
        phase, m = int(model["state"][0]), int(model["state"][1])
        centers, candidates = model["centers"].copy(), model["candidates"].copy()
        metrics: dict[str, float] = {}
        if phase == 0 and m == 0:
            centers[0] = total["row"][0]
            m = 1
        elif phase == 0:
            candidates[...] = total["row"]
            phase = 1
        else:
            best = int(np.argmin(total["pot"]))
            centers[m] = candidates[best]
            metrics["loss"] = float(total["pot"][best])
            m, phase = m + 1, 0
        metrics["converged"] = m == self.n_clusters
        state = np.array([phase, m], dtype=np.int64)
        return {"centers": centers, "candidates": candidates, "state": state}, metrics


class RandomInit(Program):
    """``n_clusters`` distinct rows drawn with probability proportional to the weights, in one iteration.

    Weighted sampling without replacement by the ``n_clusters`` smallest
    keys ``-log(u_i) / w_i`` (Efraimidis–Spirakis), merged in :meth:`combine`.
    Model: ``centers`` (n_clusters, d). Partial: ``key`` (k,), ``id`` (k,)
    int64, ``row`` (k, d).
    """

    def __init__(self, n_clusters: int, seed: int):
        self.n_clusters, self.seed = n_clusters, seed

    def local(self, model: dict, part: Partition) -> dict[str, np.ndarray]:
        k, n = self.n_clusters, part.n_rows
        u = row_uniform(self.seed, 0, part.row_offset, n)
        with np.errstate(divide="ignore"):
            keys = -np.log(u) / _weights(part)
        ids = part.row_offset + np.arange(n, dtype=np.int64)
        pos = _first_k(keys, ids, k)
        out = {
            "key": np.full(k, np.inf),
            "id": np.full(k, part.n_total, dtype=np.int64),  # padding sorts after every real row
            "row": np.zeros((k, part.X.shape[1])),
        }
        out["key"][: len(pos)], out["id"][: len(pos)] = keys[pos], ids[pos]
        out["row"][: len(pos)] = _rows(part.X, pos)
        return out

    def combine(self, a: dict, b: dict) -> dict:
        _merge_first_k(a, b, self.n_clusters, "key", ("key", "id", "row"))
        return a

    def update(self, model: dict, total: dict, iteration: int) -> tuple[dict, dict[str, float]]:
        return {"centers": np.array(total["row"])}, {"converged": True}


class Lloyd(Program):
    """Lloyd iterations from ``model["centers"]``, then one evaluation at the final centers.

    Each iteration assigns rows to their closest center and moves each center
    to the weighted mean of its rows. It stops when the squared Frobenius
    norm of the center shift is ``<= tol`` (absolute) or after ``max_iter``
    Lloyd iterations; one more iteration then computes the inertia at the
    final centers (``converged`` is reported only then).

    Empty clusters are relocated as in scikit-learn: the ``j``-th empty
    cluster (by index) takes the ``j``-th farthest positive-weight row from
    its center (ties: lower row index), which leaves its old cluster. The
    partial carries each worker's ``n_clusters`` farthest rows for that.

    Model: ``centers`` (k, d) float64 (shared); ``info`` (4,) float64 kept on
    the root: ``[final, inertia, converged_by_tol, n_lloyd_iterations]``.
    Partial: ``sums`` (k, d), ``weights`` (k,), ``inertia`` (1,), and the
    farthest rows ``far_d2`` (k,), ``id`` (k,) int64, ``far_w`` (k,),
    ``far_label`` (k,) int64, ``far_row`` (k, d).
    """

    shared = ("centers",)
    _FAR = ("far_key", "id", "far_w", "far_label", "far_row")

    def __init__(self, tol: float, max_iter: int):
        self.tol, self.max_iter = tol, max_iter

    @staticmethod
    def initial_model(centers: np.ndarray) -> dict[str, np.ndarray]:
        return {"centers": np.array(centers, dtype=np.float64), "info": np.zeros(4)}

    def local(self, model: dict, part: Partition) -> dict[str, np.ndarray]:
        X, n = part.X, part.n_rows
        centers = model["centers"]
        k = len(centers)
        w = _weights(part)
        labels, d2, sums = _assign(X, centers, _cached_row_norms_sq(part), w)
        out = {
            "sums": sums,
            "weights": np.bincount(labels, weights=w, minlength=k).astype(np.float64),
            "inertia": np.array([w @ d2]),
        }
        # Farthest positive-weight rows first: key -d2 (rows of zero weight never relocate).
        keys = np.where(w > 0, -d2, np.inf)
        ids = part.row_offset + np.arange(n, dtype=np.int64)
        pos = _first_k(keys, ids, k)
        out["far_key"] = np.full(k, np.inf)
        out["id"] = np.full(k, part.n_total, dtype=np.int64)
        out["far_w"] = np.zeros(k)
        out["far_label"] = np.zeros(k, dtype=np.int64)
        out["far_row"] = np.zeros((k, X.shape[1]))
        m = len(pos)
        out["far_key"][:m], out["id"][:m] = keys[pos], ids[pos]
        out["far_w"][:m], out["far_label"][:m] = w[pos], labels[pos]
        out["far_row"][:m] = _rows(X, pos)
        return out

    def combine(self, a: dict, b: dict) -> dict:
        _merge_first_k(a, b, len(a["weights"]), "far_key", self._FAR)
        a["sums"] += b["sums"]
        a["weights"] += b["weights"]
        a["inertia"] += b["inertia"]
        return a

    def update(self, model: dict, total: dict, iteration: int) -> tuple[dict, dict[str, float]]:
        old = model["centers"]
        final, _, by_tol, n_lloyd = model["info"]
        inertia = float(total["inertia"][0])
        if final:
            info = np.array([1.0, inertia, by_tol, n_lloyd])
            return {"centers": old.copy(), "info": info}, {"loss": inertia, "converged": True}
        sums, weights = total["sums"].copy(), total["weights"].copy()
        empty = np.flatnonzero(weights <= 0)
        if empty.size:
            usable = np.flatnonzero(np.isfinite(total["far_key"]))  # already in relocation order
            for e, j in zip(empty, usable):
                row, wj, src = total["far_row"][j], total["far_w"][j], total["far_label"][j]
                sums[src] -= wj * row
                weights[src] -= wj
                sums[e] = wj * row
                weights[e] = wj
        new = old.copy()
        nz = weights > 0
        new[nz] = sums[nz] / weights[nz, None]
        shift = float(((new - old) ** 2).sum())
        n_lloyd += 1
        by_tol = shift <= self.tol
        final = by_tol or n_lloyd >= self.max_iter
        info = np.array([float(final), inertia, float(by_tol), n_lloyd])
        metrics = {"loss": inertia, "center_shift": shift, "n_empty": float(empty.size), "converged": False}
        return {"centers": new, "info": info}, metrics
