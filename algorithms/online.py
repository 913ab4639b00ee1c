"""Online programs: one micro-batch per iteration (``partial_fit`` and streams).

Each program here makes one model version from one micro-batch of every
worker, so it runs the same whether the batch came from ``partial_fit``
(rows the driver scattered) or from a stream the workers read themselves.
Every program accepts an empty batch (a quiet stream): the model is then
carried over unchanged into the next version.

* :class:`OnlineLinear`: a stochastic-gradient step per micro-batch for
  logistic (binomial, multinomial) and least-squares (ridge) losses.
* :class:`OnlineFTRL`: FTRL-proximal per coordinate for the same losses with an
  L1 (elastic-net) penalty: sparse models, exact zeros.
* :class:`OnlineMoments`: exact streaming mean and scatter matrix; PCA
  components come from it at read time, equal to a batch PCA of every row seen.
* :class:`StreamingKMeans`: mini-batch k-means with forgetting, as Spark's
  StreamingKMeans.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from drizzle_ml.program import Partition, Program

from .kmeans_programs import _assign, _rows, _weights
from .losses import LinearLoss
from .moments import combine_moments, merge_moments, partition_moments

_LIPSCHITZ = {"binomial": 0.25, "multinomial": 0.5, "squared": 1.0}


class OnlineLinear(Program):
    """One SGD step per micro-batch on a linear model.

    Objective per record: ``loss(x·coef + intercept, y) + penalty ||coef||² / (2 n_seen)``
    with ``penalty`` = 1/C (logistic) or alpha (ridge), which makes the
    objective over all records seen scikit-learn's. Step ``t`` (micro-batches
    with records) moves along the batch's mean gradient by
    ``eta0 / ((L + penalty / n_seen) t**power_t)``, where ``L`` is the
    loss's curvature bound times the running mean of ``||x||² (+1)``: a
    normalised step, so the defaults work on unscaled features.

    Model: ``coef`` (m, d), ``intercept`` (m,), and ``steps``, ``n_seen``,
    ``sq_norm`` (running mean squared row norm), each (1,). Only ``coef`` and
    ``intercept`` go down the tree. Targets: ``binomial`` y in {0, 1};
    ``multinomial`` class codes 0..m-1; ``squared`` real values. With
    ``classes`` the raw labels are encoded on the worker (streams).
    """

    shared = ("coef", "intercept")

    def __init__(self, loss: str, penalty: float = 0.0, fit_intercept: bool = True, eta0: float = 1.0,
                 power_t: float = 0.25, classes: np.ndarray | None = None):
        if loss not in _LIPSCHITZ:
            raise ValueError(f"loss must be one of {tuple(_LIPSCHITZ)}, got {loss!r}")
        self.loss, self.penalty, self.fit_intercept = loss, float(penalty), bool(fit_intercept)
        self.eta0, self.power_t = float(eta0), float(power_t)
        self.classes = None if classes is None else np.asarray(classes, dtype=np.float64)

    @staticmethod
    def initial_model(n_features: int, n_outputs: int, coef: Any = None, intercept: Any = None,
                      n_seen: float = 0.0, steps: float = 0.0, sq_norm: float = 0.0) -> dict[str, np.ndarray]:
        return {
            "coef": np.zeros((n_outputs, n_features)) if coef is None else np.array(coef, np.float64).reshape(
                n_outputs, n_features),
            "intercept": np.zeros(n_outputs) if intercept is None else np.array(intercept, np.float64).reshape(
                n_outputs),
            "steps": np.array([float(steps)]), "n_seen": np.array([float(n_seen)]),
            "sq_norm": np.array([float(sq_norm)]),
        }

    def _targets(self, y: np.ndarray) -> np.ndarray:
        """Targets as :class:`~drizzle_ml.algorithms.losses.LinearLoss` takes them."""
        if self.classes is not None:  # raw labels from a stream (only known ones reach here)
            y = np.searchsorted(self.classes, y)
        return y.astype(np.intp) if self.loss == "multinomial" else y.astype(np.float64)

    def local(self, model, part: Partition):
        coef, intercept = model["coef"], model["intercept"]
        m, d = coef.shape
        if part.n_rows == 0:
            return {"g": np.zeros((m, d)), "gi": np.zeros(m), "loss": np.zeros(1), "n": np.zeros(1),
                    "sq": np.zeros(1)}
        X = part.X
        sq = np.asarray(X.multiply(X).sum(axis=1)).ravel() if hasattr(X, "multiply") else np.einsum("ij,ij->i", X, X)
        return {
            **self._batch_gradient(coef, intercept, part),
            "sq": np.array([float(sq.sum() if part.sample_weight is None else part.sample_weight @ sq)]),
        }

    def _batch_gradient(self, coef: np.ndarray, intercept: np.ndarray, part: Partition) -> dict[str, np.ndarray]:
        """The batch's gradient sums ``g`` (m, d) and ``gi`` (m,), its ``loss`` sum and weight ``n``."""
        m, d = coef.shape
        # The same loss and gradient sums as the batch solvers; the intercept's gradient is always
        # computed (update ignores it without an intercept).
        grad, (loss, n) = LinearLoss(self.loss, d, m, fit_intercept=True).evaluate(
            np.concatenate([coef.ravel(), intercept]), part.X, self._targets(np.asarray(part.y)),
            part.sample_weight)
        return {"g": grad[: m * d].reshape(m, d), "gi": grad[m * d:], "loss": np.array([loss]),
                "n": np.array([n])}

    def update(self, model, total, iteration):
        n = float(total["n"][0])
        if n <= 0.0:
            return dict(model), {"records": 0.0}
        n_seen = float(model["n_seen"][0]) + n
        sq_norm = (float(model["sq_norm"][0]) * float(model["n_seen"][0]) + float(total["sq"][0])) / n_seen
        steps = float(model["steps"][0]) + 1.0
        ridge = self.penalty / n_seen
        curvature = _LIPSCHITZ[self.loss] * (sq_norm + float(self.fit_intercept)) + ridge
        eta = self.eta0 / (curvature * steps ** self.power_t)
        coef = model["coef"] - eta * (total["g"] / n + ridge * model["coef"])
        intercept = (model["intercept"] - eta * total["gi"] / n if self.fit_intercept
                     else model["intercept"].copy())
        new = {"coef": coef, "intercept": intercept, "steps": np.array([steps]),
               "n_seen": np.array([n_seen]), "sq_norm": np.array([sq_norm])}
        return new, {"loss": float(total["loss"][0]) / n, "step": eta}


class OnlineFTRL(OnlineLinear):
    """FTRL-proximal (McMahan et al. 2013), per coordinate, one step per micro-batch: L1 and elastic net.

    With ``g`` the batch's gradient sum, every coordinate keeps ``z += g - sigma w``
    and ``q += g²`` (``sigma = (sqrt(q + g²) - sqrt(q)) / eta0``), and its weight is
    ``w = 0`` where ``|z| <= l1``, else
    ``-(z - sign(z) l1) / ((beta + sqrt(q)) / eta0 + l2)``: coefficients are
    exactly zero until their accumulated gradient beats the L1 strength.
    Intercepts get no penalty. The strengths are those of the summed
    objective over every record seen: constant (``per_record=False``,
    logistic regression: ``l1 = l1_ratio / C``) or times the records' weight
    seen so far (``per_record=True``, Lasso and ElasticNet: ``l1 = alpha l1_ratio``),
    as :class:`OnlineLinear` makes its L2 term scikit-learn's.

    Model: ``coef``, ``z`` and ``q`` (m, d): the coefficients' weights and
    state; ``intercept``, ``z_intercept`` and ``q_intercept`` (m,): the
    intercepts'; ``steps`` and ``n_seen`` (1,). Only ``coef`` and
    ``intercept`` go down the tree.

    Every coordinate's step reads only its own state, so the model may be
    sharded across the workers, whatever its outputs: ``coef``, ``z`` and
    ``q`` share their last axis (the features), the partial's gradient ``g``
    holds the m values of every feature, feature after feature (the engine
    sums and splits it by feature), and the intercepts are replicated. Models
    of FTRL states saved before this layout (``z``, ``q`` of shape (m, d + 1))
    are converted by :meth:`upgrade`.
    """

    sharded_partial = "g"  # the partial: g (d m,) feature-major, gi (m,), loss, n

    def __init__(self, loss: str, l1: float = 0.0, l2: float = 0.0, per_record: bool = False,
                 fit_intercept: bool = True, eta0: float = 1.0, beta: float = 1.0,
                 classes: np.ndarray | None = None):
        super().__init__(loss, fit_intercept=fit_intercept, eta0=eta0, classes=classes)
        self.l1, self.l2, self.per_record, self.beta = float(l1), float(l2), bool(per_record), float(beta)
        # Sharded keys have the coordinates (features) along their last axis: (m, d), any m.
        self.sharded = ("coef", "z", "q")

    def initial_model(self, n_features: int, n_outputs: int, coef: Any = None,
                      intercept: Any = None) -> dict[str, np.ndarray]:
        """The state whose weights are ``coef`` and ``intercept`` (default zeros) before any record."""
        start = OnlineLinear.initial_model(n_features, n_outputs, coef, intercept)
        l1, l2 = self._strengths(0.0)
        w, b = start["coef"], start["intercept"]
        z = -w * (self.beta / self.eta0 + l2) - np.sign(w) * l1
        z_intercept = -b * (self.beta / self.eta0)  # the intercepts' strengths are 0
        return {"coef": w, "intercept": b, "z": z, "q": np.zeros_like(z), "z_intercept": z_intercept,
                "q_intercept": np.zeros_like(z_intercept), "steps": np.zeros(1), "n_seen": np.zeros(1)}

    @staticmethod
    def upgrade(model: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``model`` in this layout: an FTRL state of the older one (``z``, ``q`` of shape (m, d + 1), the
        intercept last) has its intercept columns moved to ``z_intercept`` and ``q_intercept``."""
        if "z_intercept" in model or "z" not in model:
            return model
        d = np.shape(model["coef"])[-1]
        if np.shape(model["z"])[-1] != d + 1 or np.shape(model["q"]) != np.shape(model["z"]):
            raise ValueError(f"not an FTRL state: z has shape {np.shape(model['z'])} and q "
                             f"{np.shape(model['q'])} for coef of shape {np.shape(model['coef'])}")
        out = dict(model)
        for key in ("z", "q"):
            full = np.asarray(model[key], dtype=np.float64)
            out[key], out[key + "_intercept"] = full[:, :d].copy(), full[:, d].copy()
        return out

    def _strengths(self, n_seen: float) -> tuple[float, float]:
        """The coefficients' L1 and L2 strengths (the intercepts' are 0)."""
        scale = n_seen if self.per_record else 1.0
        return self.l1 * scale, self.l2 * scale

    def local(self, model, part: Partition):
        coef, intercept = model["coef"], model["intercept"]
        if part.n_rows == 0:
            m, d = coef.shape
            return {"g": np.zeros(m * d), "gi": np.zeros(m), "loss": np.zeros(1), "n": np.zeros(1)}
        out = self._batch_gradient(coef, intercept, part)
        # Feature-major, (d, m) flattened: a shard of features is then one contiguous piece of the vector,
        # which a reduce-scatter sums when sharded. With one output it is the (1, d) gradient as it is.
        out["g"] = out["g"].T.reshape(-1)
        return out

    def touched_coordinates(self, part: Partition) -> np.ndarray | None:
        """The columns a sparse batch holds values in (a sharded model's gradient is zero elsewhere,
        and ``local`` reads no other coefficients), so that the workers exchange only those."""
        if not sp.issparse(part.X):
            return None
        key = ("ftrl-touched", part.X.shape[1])
        if key not in part.cache:
            part.cache[key] = np.unique(sp.csr_matrix(part.X).indices).astype(np.int64)
        return part.cache[key]

    def _step(self, w: np.ndarray, z: np.ndarray, q_old: np.ndarray, g: np.ndarray, l1: float,
              l2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One FTRL-proximal step of some coordinates: their new ``(w, z, q)``."""
        q = q_old + g * g
        sigma = (np.sqrt(q) - np.sqrt(q_old)) / self.eta0
        z = z + g - sigma * w
        shrunk = np.abs(z) - l1
        w = np.where(shrunk > 0, -np.sign(z) * shrunk / ((self.beta + np.sqrt(q)) / self.eta0 + l2), 0.0)
        return w, z, q

    def update(self, model, total, iteration):
        n = float(total["n"][0])
        if n <= 0.0:
            return dict(model), {"records": 0.0}
        coef = model["coef"]  # this worker's coordinates when sharded
        m = coef.shape[0]
        n_seen = float(model["n_seen"][0]) + n
        l1, l2 = self._strengths(n_seen)
        g = np.ascontiguousarray(total["g"].reshape(-1, m).T)  # (m, d) from feature-major (no copy when m is 1)
        w, z, q = self._step(coef, model["z"], model["q"], g, l1, l2)
        gi = total["gi"] if self.fit_intercept else np.zeros(m)
        b, zb, qb = self._step(model["intercept"], model["z_intercept"], model["q_intercept"], gi, 0.0, 0.0)
        new = {"coef": w, "intercept": b, "z": z, "q": q, "z_intercept": zb, "q_intercept": qb,
               "steps": model["steps"] + 1.0, "n_seen": np.array([n_seen])}
        nonzero = self.coordinates.sums(np.array([float(np.count_nonzero(w))]))[0]
        return new, {"loss": float(total["loss"][0]) / n, "nonzero": float(nonzero)}


class OnlineMoments(Program):
    """Exact streaming moments: weight ``n`` (1,), ``mean`` (d,), centered ``scatter`` (d, d).

    Each micro-batch's moments are merged into the model with Chan et al.'s
    formula, so the model equals the moments of every row seen, whatever
    the batch sizes (a batch of one row, or none, is fine). Nothing flows
    down the tree but the weight.
    """

    shared = ("n",)

    @staticmethod
    def initial_model(n_features: int) -> dict[str, np.ndarray]:
        return {"n": np.zeros(1), "mean": np.zeros(n_features), "scatter": np.zeros((n_features, n_features))}

    def local(self, model, part: Partition):
        if part.n_rows == 0:
            d = part.X.shape[1]
            return np.zeros(1), np.zeros(d), np.zeros((d, d))
        return partition_moments(part.X, part.sample_weight)

    def combine(self, a, b):
        return combine_moments(a, b)

    def update(self, model, total, iteration):
        n, mean, scatter = (np.array(model[k], dtype=np.float64) for k in ("n", "mean", "scatter"))
        merge_moments(n, mean, scatter, *total)
        return {"n": n, "mean": mean, "scatter": scatter}, {"records": float(total[0][0])}


class StreamingKMeans(Program):
    """Mini-batch k-means with forgetting (Spark's StreamingKMeans).

    Each micro-batch assigns its rows to the nearest center and moves every
    center to the weighted mean of its old position and its new rows:
    ``c' = (a w c + s) / (a w + m)``, ``w' = a w + m``, with ``m`` and ``s``
    the batch's weight and row sum in that cluster and ``a`` the decay factor
    per micro-batch (1: all rows count equally; ``0.5 ** (1 / half_life)``
    halves old weight every ``half_life`` batches). Until the model has
    centers, the first rows are pooled (up to 4k) and seeded by k-means++ as
    soon as there are at least k of them.

    Model: ``centers`` (k, d), ``weights`` (k,), ``ready`` (1,), ``pool``
    (4k, d), ``pool_n`` (1,). Only ``centers`` and ``ready`` go down.
    """

    shared = ("centers", "ready")

    def __init__(self, n_clusters: int, decay: float = 1.0, seed: int = 0):
        self.n_clusters, self.decay, self.seed = int(n_clusters), float(decay), int(seed)

    @staticmethod
    def initial_model(n_clusters: int, n_features: int, centers: Any = None,
                      weights: Any = None) -> dict[str, np.ndarray]:
        ready = centers is not None
        return {
            "centers": np.zeros((n_clusters, n_features)) if centers is None else np.array(centers, np.float64),
            "weights": np.zeros(n_clusters) if weights is None else np.array(weights, np.float64),
            "ready": np.array([float(ready)]),
            "pool": np.zeros((4 * n_clusters, n_features)),
            "pool_n": np.zeros(1),
        }

    def local(self, model, part: Partition):
        k, d = model["centers"].shape
        q = 4 * k
        out = {"sums": np.zeros((k, d)), "counts": np.zeros(k), "inertia": np.zeros(1),
               "pool": np.zeros((q, d)), "pool_n": np.zeros(1)}
        if part.n_rows == 0:
            return out
        if model["ready"][0]:
            sw = _weights(part)
            labels, d2, out["sums"] = _assign(part.X, model["centers"], weights=sw)
            out["counts"] = np.bincount(labels, weights=sw, minlength=k).astype(np.float64)
            out["inertia"][0] = float(sw @ d2)
        else:
            take = min(q, part.n_rows)
            out["pool"][:take] = _rows(part.X, slice(0, take))
            out["pool_n"][0] = take
        return out

    def combine(self, a, b):
        pool = a["pool"].copy()
        na, nb = int(a["pool_n"][0]), int(b["pool_n"][0])
        take = min(len(pool) - na, nb)
        pool[na:na + take] = b["pool"][:take]
        return {"sums": a["sums"] + b["sums"], "counts": a["counts"] + b["counts"],
                "inertia": a["inertia"] + b["inertia"], "pool": pool, "pool_n": np.array([float(na + take)])}

    def update(self, model, total, iteration):
        new = {k: np.array(v, dtype=np.float64) for k, v in model.items()}
        if not model["ready"][0]:
            have = int(model["pool_n"][0])
            add = min(len(new["pool"]) - have, int(total["pool_n"][0]))
            new["pool"][have:have + add] = total["pool"][:add]
            new["pool_n"][0] = have + add
            if have + add >= self.n_clusters:
                rows = new["pool"][: have + add]
                centers = greedy_kmeans_plusplus(rows, self.n_clusters, self.seed)
                # The pooled rows are then the first mini-batch: one assignment from the seeds.
                labels, _, sums = _assign(rows, centers, weights=np.ones(len(rows)))
                counts = np.bincount(labels, minlength=self.n_clusters).astype(np.float64)
                filled = counts > 0
                centers[filled] = sums[filled] / counts[filled, None]
                new["centers"], new["weights"], new["ready"] = centers, counts, np.array([1.0])
                new["pool"][:] = 0.0
                new["pool_n"][0] = 0.0
            return new, {"records": float(total["pool_n"][0])}
        counts = total["counts"]
        old = self.decay * model["weights"]
        weights = old + counts
        moved = weights > 0
        new["centers"][moved] = ((old[moved, None] * model["centers"][moved] + total["sums"][moved])
                                 / weights[moved, None])
        new["weights"] = weights
        m = float(counts.sum())
        return new, {"records": m, "inertia": float(total["inertia"][0]) / m if m else 0.0}


def greedy_kmeans_plusplus(X: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Greedy k-means++ seeds (Arthur and Vassilvitskii; scikit-learn's variant) from the rows ``X``.

    Each new center is the best of ``2 + log(k)`` candidates drawn with
    probability proportional to D², the squared distance to the nearest
    center so far. For the few thousand rows a stream pools before it has
    centers; the batch fit seeds on the whole data instead (``KMeansPlusPlusInit``).
    """
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    trials = 2 + int(np.log(n_clusters))
    xx = np.einsum("ij,ij->i", X, X)
    centers = np.empty((n_clusters, X.shape[1]))
    centers[0] = X[rng.integers(n)]
    d2 = np.maximum(xx - 2.0 * (X @ centers[0]) + centers[0] @ centers[0], 0.0)
    for c in range(1, n_clusters):
        total = d2.sum()
        if total <= 0:  # fewer distinct rows than clusters: repeat one
            centers[c] = X[rng.integers(n)]
            continue
        picks = np.searchsorted(np.cumsum(d2), rng.random(trials) * total)
        picks = np.minimum(picks, n - 1)
        cand = X[picks]
        dist = np.maximum(xx[None, :] - 2.0 * cand @ X.T + np.einsum("ij,ij->i", cand, cand)[:, None], 0.0)
        candidate_d2 = np.minimum(d2[None, :], dist)
        best = int(np.argmin(candidate_d2.sum(axis=1)))
        centers[c], d2 = cand[best], candidate_d2[best]
    return centers

