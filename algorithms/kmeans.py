"""The KMeans estimator: k-means++ or random initialisation, Lloyd iterations, streaming k-means.

The programs it runs are in :mod:`~drizzle_ml.algorithms.kmeans_programs`.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from drizzle_ml.data import ArrayDataset, FileDataset

from ._random import seed_from
from .base import DrizzleEstimator, check_sample_weight, fit_dataset, resumable
from .kmeans_programs import _CHUNK, KMeansPlusPlusInit, Lloyd, RandomInit, _assign, _row_norms_sq, _sq_dists
from .moments import FeatureMoments
from .online import StreamingKMeans
from .online_learning import OnlineLearner


def _tolerance(X: Any, tol: float) -> float:
    """scikit-learn's absolute tolerance: ``tol`` times the mean feature variance of X."""
    if tol == 0:
        return 0.0
    if sp.issparse(X):
        from sklearn.utils.sparsefuncs import mean_variance_axis

        variances = mean_variance_axis(X, axis=0)[1]
    else:
        variances = np.var(X, axis=0)
    return float(np.mean(variances) * tol)


class KMeans(ClusterMixin, TransformerMixin, OnlineLearner):
    """k-means clustering on a drizzle-ml cluster (k-means++ seeding, then Lloyd).

    Parameters
    ----------
    n_clusters : int
        Number of clusters.
    init : {"k-means++", "random"} or ndarray of shape (n_clusters, n_features)
        "k-means++": scikit-learn's greedy k-means++, run as engine iterations
        (``2 * n_clusters - 1`` of them) with no driver in the loop.
        "random": ``n_clusters`` distinct rows drawn proportionally to the
        sample weights (one engine iteration). An array: the initial centers.
    n_init : "auto" or int
        Initialisations to run; the one with the lowest inertia is kept.
        "auto": 1 for "k-means++" and an array, 10 for "random".
    max_iter : int
        Maximum Lloyd iterations per initialisation.
    tol : float
        Stop when the squared Frobenius norm of the center shift is at most
        ``tol`` times the mean feature variance of X (scikit-learn's rule).
    decay, half_life : float, float or None
        :meth:`partial_fit` (and streams): the weight of what the centers
        learnt so far is multiplied by ``decay`` per micro-batch, or halved
        every ``half_life`` micro-batches when that is set (Spark's
        StreamingKMeans); 1 keeps every row's weight.
    n_workers, group_size, scheduling, random_state, verbose,
    checkpoint_dir, checkpoint_every, tuner, rebalance
        Engine parameters, see :class:`~drizzle_ml.algorithms.base.DrizzleEstimator`.
        ``random_state`` seeds the initialisations; results do not depend on
        ``n_workers`` beyond rounding.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features), dtype of X
    labels_ : ndarray of shape (n_samples,)
    inertia_ : float
        Sum of (weighted) squared distances to the closest center.
    n_iter_ : int
        Lloyd iterations of the kept initialisation.
    n_features_in_, model_version_, history_, model_store_
        Engine attributes of the kept initialisation's Lloyd job.

    Empty clusters are relocated to the rows farthest from their centers, as
    scikit-learn does (see :class:`Lloyd`).
    """

    _parameter_constraints: dict = {
        **DrizzleEstimator._parameter_constraints,
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "init": [StrOptions({"k-means++", "random"}), "array-like"],
        "n_init": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "decay": [Interval(Real, 0, 1, closed="right")],
        "half_life": [None, Interval(Real, 0, None, closed="neither")],  # in micro-batches
    }

    def __init__(self, n_clusters=8, *, init="k-means++", n_init="auto", max_iter=300, tol=1e-4, decay=1.0,
                 half_life=None, n_workers=None, group_size="auto", scheduling="group", random_state=None,
                 verbose=0, checkpoint_dir=None, checkpoint_every=1, tuner=None, rebalance=False):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.decay = decay
        self.half_life = half_life
        self.n_workers = n_workers
        self.group_size = group_size
        self.scheduling = scheduling
        self.random_state = random_state
        self.verbose = verbose
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.tuner = tuner
        self.rebalance = rebalance

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # -- parameters --------------------------------------------------------------------------
    def _check_params(self, n_samples: int, n_features: int) -> tuple[int, np.ndarray | None]:
        """Validate the parameters against the data's shape; return (n_init, initial centers or None)."""
        self._check_engine_params()
        k = int(self.n_clusters)
        if n_samples < k:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={k}.")
        init = self.init
        centers = None
        if not isinstance(init, str):  # an array (the declared constraints hold)
            centers = check_array(init, dtype=[np.float64, np.float32], input_name="init")
            if centers.shape != (k, n_features):
                raise ValueError(
                    f"init array must have shape (n_clusters, n_features) = ({k}, {n_features}), "
                    f"got {centers.shape}"
                )
            centers = np.array(centers, dtype=np.float64)
        if self.n_init == "auto":
            n_init = 10 if centers is None and init == "random" else 1
        else:
            n_init = int(self.n_init)
            if centers is not None and n_init != 1:
                warnings.warn(
                    f"Explicit initial center position passed: performing only one init in "
                    f"{type(self).__name__} instead of n_init={n_init}.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                n_init = 1
        return n_init, centers

    # -- fitting -----------------------------------------------------------------------------
    @resumable
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> KMeans:
        """Cluster X (n_samples, n_features), dense or CSR; ``sample_weight`` (n_samples,) optional.

        X may also be an :class:`~drizzle_ml.HDF5Dataset` or a
        :class:`~drizzle_ml.ParquetDataset`: the workers read their rows,
        and ``labels_`` is not set (use :meth:`predict`).
        """
        if isinstance(X, FileDataset):  # rows stay on disk; each worker reads its own
            dataset = self._check_file_dataset(X, y, sample_weight, needs_targets=False)
            n_samples, n_features = dataset.n_rows, dataset.n_features
            dtype = dataset.dtype if dataset.dtype == np.float32 else np.dtype(np.float64)
            n_init, init_centers = self._check_params(n_samples, n_features)
            tol = self._dataset_tolerance(dataset) if self.tol else 0.0
        else:
            X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], order="C",
                              ensure_all_finite=False)
            n_samples, n_features = X.shape
            dtype = X.dtype
            n_init, init_centers = self._check_params(n_samples, n_features)
            sw = check_sample_weight(sample_weight, X.shape[0])
            dataset = fit_dataset(self, X, None, sw)
            tol = _tolerance(X, self.tol)
        k = int(self.n_clusters)
        lloyd = Lloyd(tol, int(self.max_iter))
        rs = check_random_state(self.random_state)
        best, n_unconverged = None, 0
        for _ in range(n_init):
            seed = seed_from(rs)
            centers = init_centers if init_centers is not None else self._init_centers(dataset, n_features, k, seed)
            result = self._run(lloyd, Lloyd.initial_model(centers), dataset, int(self.max_iter) + 1,
                               warn_not_converged=False)
            _, inertia, by_tol, n_lloyd = result.model["info"]
            n_unconverged += not by_tol
            if best is None or inertia < best[1]:
                engine = (self.model_version_, self.history_, self.model_store_)
                best = (np.array(result.model["centers"]), float(inertia), int(n_lloyd), engine)
        if n_unconverged:
            warnings.warn(
                f"{type(self).__name__} did not converge in max_iter={self.max_iter} iterations"
                + (f" in {n_unconverged} of {n_init} initialisations" if n_init > 1 else "")
                + "; increase max_iter or relax tol",
                ConvergenceWarning,
                stacklevel=2,
            )
        centers, self.inertia_, self.n_iter_, engine = best
        self.model_version_, self.history_, self.model_store_ = engine
        self.cluster_centers_ = centers.astype(dtype, copy=False)
        if not isinstance(dataset, FileDataset):
            self.labels_ = _assign(X, self.cluster_centers_)[0]
        return self

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> KMeans:
        """One mini-batch step on X (n_samples, n_features): assign, then move the centers.

        The first call seeds the centers by k-means++ on its rows (it needs at
        least ``n_clusters`` of them), unless :meth:`fit` ran before, whose
        centers are then continued. ``inertia_`` is the batch's inertia under
        the moved centers. See ``decay`` and ``half_life``.
        """
        self._check_engine_params()
        k = int(self.n_clusters)
        first = getattr(self, "_online_model_", None) is None and not hasattr(self, "cluster_centers_")
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], order="C", reset=first)
        if first and X.shape[0] < k:
            raise ValueError(f"n_samples={X.shape[0]} should be >= n_clusters={k} on the first call "
                             "to partial_fit (the centers are seeded from it)")
        sw = check_sample_weight(sample_weight, X.shape[0])
        program, model = self.online_setup(X.shape[1])
        fitted = self._online_step(program, model, ArrayDataset(X, None, sw))
        self.cluster_centers_ = np.array(fitted["centers"], dtype=X.dtype)
        d2 = _assign(X, self.cluster_centers_)[1]
        self.inertia_ = float(d2.sum() if sw is None else sw @ d2)
        return self

    def online_setup(self, n_features: int, classes: np.ndarray | None = None) -> tuple[Any, dict]:
        """The online program (mini-batch k-means) and the model it steps from.

        After :meth:`fit`, its centers are continued, each weighted by the rows
        it was fitted on.
        """
        self._check_engine_params()
        k = int(self.n_clusters)
        model = getattr(self, "_online_model_", None)
        if model is None:
            centers = getattr(self, "cluster_centers_", None)
            weights = (np.bincount(self.labels_, minlength=k).astype(np.float64)
                       if centers is not None and hasattr(self, "labels_") else None)
            model = StreamingKMeans.initial_model(k, n_features, centers, weights)
        program = StreamingKMeans(k, self._decay_factor(), seed_from(check_random_state(self.random_state)))
        return program, model

    def online_finish(self, model: dict) -> None:
        if not model["ready"][0]:
            raise ValueError(f"KMeans has no centers yet: the stream brought fewer than "
                             f"n_clusters={self.n_clusters} rows")
        self.cluster_centers_ = np.array(model["centers"])

    def _decay_factor(self) -> float:
        if self.half_life is not None:
            return 0.5 ** (1.0 / float(self.half_life))
        return float(self.decay)

    def _dataset_tolerance(self, dataset: FileDataset) -> float:
        """scikit-learn's absolute tolerance for data only the workers hold: one moments pass."""
        n_features = dataset.n_features
        result = self._run(FeatureMoments(), FeatureMoments.initial_model(n_features), dataset, 1)
        return float(np.mean(result.model["variance"]) * self.tol)

    def _init_centers(self, dataset: ArrayDataset | FileDataset, n_features: int, k: int,
                      seed: int) -> np.ndarray:
        """Initial centers (k, d) float64 from an engine job."""
        if self.init == "random":
            result = self._run(RandomInit(k, seed), {"centers": np.zeros((k, n_features))}, dataset, 1,
                               warn_not_converged=False)
        else:
            trials = 2 + int(math.log(k))
            program = KMeansPlusPlusInit(k, trials, seed)
            result = self._run(program, program.initial_model(k, n_features, trials), dataset, 2 * k - 1,
                               warn_not_converged=False)
        return np.array(result.model["centers"])

    # -- using the model ---------------------------------------------------------------------
    def _check_X(self, X: Any) -> Any:
        check_is_fitted(self)
        return validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], order="C",
                             reset=False)

    def predict(self, X: Any) -> np.ndarray:
        """Index of the closest center for each row of X (n_samples, n_features); shape (n_samples,)."""
        X = self._check_X(X)
        return _assign(X, self.cluster_centers_)[0]

    def transform(self, X: Any) -> np.ndarray:
        """Euclidean distances (n_samples, n_clusters) to the centers, in X's float dtype."""
        X = self._check_X(X)
        xx = _row_norms_sq(X)
        out = np.empty((X.shape[0], len(self.cluster_centers_)), dtype=X.dtype)
        for lo in range(0, X.shape[0], _CHUNK):
            hi = min(lo + _CHUNK, X.shape[0])
            out[lo:hi] = np.sqrt(_sq_dists(X[lo:hi], self.cluster_centers_, xx[lo:hi]))
        return out

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Opposite of the (weighted) inertia of X (n_samples, n_features) under the fitted centers."""
        X = self._check_X(X)
        sw = check_sample_weight(sample_weight, X.shape[0])
        d2 = _assign(X, self.cluster_centers_)[1]
        return -float(d2.sum() if sw is None else sw @ d2)
