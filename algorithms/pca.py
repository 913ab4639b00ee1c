"""The PCA estimator: covariance eigendecomposition or subspace iteration on the cluster, streaming moments.

The programs it runs are in :mod:`~drizzle_ml.algorithms.pca_programs`.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from drizzle_ml.data import ArrayDataset, FileDataset

from .base import DrizzleEstimator, check_sample_weight, fit_dataset, resumable
from .online import OnlineMoments
from .online_learning import OnlineLearner
from .pca_programs import SVD_SOLVERS, CovariancePCA, SubspacePCA


def _flip_signs(components: np.ndarray) -> np.ndarray:
    """scikit-learn's ``svd_flip(u_based_decision=False)``: each row's largest-|.| entry positive."""
    rows = np.arange(components.shape[0])
    signs = np.sign(components[rows, np.argmax(np.abs(components), axis=1)])
    return components * signs[:, None]


class PCA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, OnlineLearner):
    """Principal component analysis on a drizzle-ml cluster, with scikit-learn's PCA attributes.

    Parameters
    ----------
    n_components : int or None
        Components to keep, ``1 <= n_components <= min(n_samples, n_features)``;
        None keeps ``min(n_samples, n_features)``. Fractions and ``"mle"`` are
        not supported.
    svd_solver : {"covariance", "subspace"}
        ``"covariance"``: one pass that reduces a ``d x d`` scatter matrix over
        the tree and eigendecomposes it (exact; for up to a few thousand
        features). ``"subspace"``: randomized block subspace iteration that
        only moves ``d x (n_components + n_oversamples)`` blocks (for many
        features and few components).
    whiten : bool
        Scale the projections to unit variance, as scikit-learn does.
    tol : float
        ``"subspace"``: stop when the sine of the largest principal angle
        between the top-``n_components`` subspaces of two successive iterations
        is at most ``tol``.
    max_iter : int
        ``"subspace"``: maximum iterations (at least 2 are needed to converge).
    n_oversamples : int
        ``"subspace"``: extra block columns beyond ``n_components``.
    random_state : None, int or RandomState
        ``"subspace"``: seeds the random initial block (drawn on the driver).
    n_workers, group_size, scheduling, verbose,
    checkpoint_dir, checkpoint_every, tuner, rebalance
        Engine parameters, see :class:`~drizzle_ml.algorithms.base.DrizzleEstimator`.

    Attributes
    ----------
    components_ : ndarray of shape (n_components_, n_features)
    explained_variance_ : ndarray of shape (n_components_,)
    explained_variance_ratio_ : ndarray of shape (n_components_,)
        Ratio to the total variance of all features.
    singular_values_ : ndarray of shape (n_components_,)
    mean_ : ndarray of shape (n_features,)
    n_components_ : int
    n_samples_ : int
    noise_variance_ : float
        Mean of the ``n_features - n_components_`` discarded covariance
        eigenvalues (0 when ``n_components_ == min(n_samples, n_features)``).
    n_features_in_ : int
    n_iter_, model_version_, history_, model_store_
        Engine attributes.
    """

    def __init__(self, n_components=None, *, svd_solver="covariance", whiten=False, tol=1e-12,
                 max_iter=200, n_oversamples=10, n_workers=None, group_size="auto",
                 scheduling="group", random_state=None, verbose=0, checkpoint_dir=None, checkpoint_every=1,
                 tuner=None, rebalance=False):
        self.n_components = n_components
        self.svd_solver = svd_solver
        self.whiten = whiten
        self.tol = tol
        self.max_iter = max_iter
        self.n_oversamples = n_oversamples
        self.n_workers = n_workers
        self.group_size = group_size
        self.scheduling = scheduling
        self.random_state = random_state
        self.verbose = verbose
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.tuner = tuner
        self.rebalance = rebalance

    _parameter_constraints: dict = {
        **DrizzleEstimator._parameter_constraints,
        # Fractions of the variance and "mle" are not supported.
        "n_components": [None, Interval(Integral, 1, None, closed="left")],
        "svd_solver": [StrOptions(set(SVD_SOLVERS))],
        "whiten": ["boolean"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "n_oversamples": [Interval(Integral, 0, None, closed="left")],
    }

    def _check_params(self) -> None:
        self._check_engine_params()

    def _resolve_n_components(self, n_samples: int, n_features: int) -> int:
        limit = min(n_samples, n_features)
        if self.n_components is None:
            return limit
        k = int(self.n_components)
        if not 1 <= k <= limit:
            raise ValueError(
                f"n_components={k} must be between 1 and min(n_samples, n_features)={limit} "
                f"with svd_solver={self.svd_solver!r}"
            )
        return k

    @resumable
    def fit(self, X, y=None, sample_weight=None) -> PCA:
        """Fit on X of shape (n_samples, n_features), dense or sparse.

        ``sample_weight`` (n_samples,), optional, are frequency weights: an
        integer weight acts as repeating the row (the covariance denominator is
        ``sum(sample_weight) - 1``). ``y`` is ignored.
        """
        self._check_params()
        if isinstance(X, FileDataset):  # rows stay on disk; each worker reads its own
            dataset = self._check_file_dataset(X, y, sample_weight, needs_targets=False)
            n_samples, n_features, sw = dataset.n_rows, dataset.n_features, None
            dtype = dataset.dtype if dataset.dtype == np.float32 else np.dtype(np.float64)
        else:
            X = validate_data(self, X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32],
                              ensure_all_finite=False)
            n_samples, n_features = X.shape
            sw = check_sample_weight(sample_weight, n_samples)
            dataset = fit_dataset(self, X, None, sw)  # CSC becomes CSR there
            dtype = X.dtype
        if n_samples < 2:
            raise ValueError(f"PCA needs at least 2 samples, got n_samples = {n_samples}")
        if sw is not None and not sw.sum() > 1:
            raise ValueError(f"sample_weight must sum to more than 1, got {sw.sum()!r}")
        k = self._resolve_n_components(n_samples, n_features)
        if self.svd_solver == "covariance":
            model = {
                "mean": np.zeros(n_features),
                "variances": np.zeros(n_features),
                "eigenvectors": np.zeros((n_features, n_features)),
                "n": np.zeros(1),
            }
            result = self._run(CovariancePCA(), model, dataset, 1)
            fitted = result.model
            n = float(fitted["n"][0])
            variances = np.asarray(fitted["variances"])
            components = np.asarray(fitted["eigenvectors"])[:, :k].T
            total_var = float(variances.sum())
            noise = float(variances[k:].mean()) if k < min(n_samples, n_features) else 0.0
        else:
            width = min(k + int(self.n_oversamples), n_features)
            rng = check_random_state(self.random_state)
            Q0, _ = np.linalg.qr(rng.standard_normal((n_features, width)))
            model = {
                "Q": np.ascontiguousarray(Q0),
                "mean": np.zeros(n_features),
                "V": np.zeros((n_features, width)),
                "ritz": np.zeros(width),
                "n": np.zeros(1),
                "total_ss": np.zeros(1),
            }
            result = self._run(SubspacePCA(k, float(self.tol)), model, dataset, int(self.max_iter))
            fitted = result.model
            n = float(fitted["n"][0])
            ritz = np.asarray(fitted["ritz"])[:k]
            variances = np.maximum(ritz, 0.0) / (n - 1.0)
            components = np.asarray(fitted["V"])[:, :k].T
            total_var = float(fitted["total_ss"][0]) / (n - 1.0)
            if k < min(n_samples, n_features):
                noise = max(total_var - float(variances.sum()), 0.0) / (n_features - k)
            else:
                noise = 0.0
        self._set_components(fitted["mean"], components, variances, total_var, noise, n, k, n_samples, dtype)
        return self

    def partial_fit(self, X, y=None, sample_weight=None) -> PCA:
        """Add the rows of X (n_samples, n_features) to the model: exact streaming moments.

        The model keeps the weight, mean and scatter matrix of every row seen
        (merged exactly, whatever the batch sizes: a batch may be smaller than
        ``n_components``, even a single row), and the components are those of
        a PCA of all rows seen so far. ``sample_weight`` are frequency weights.
        A :meth:`fit` before starts a new sequence.
        """
        self._check_params()
        first = getattr(self, "_online_model_", None) is None
        X = validate_data(self, X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32], reset=first)
        sw = check_sample_weight(sample_weight, X.shape[0])
        n_features = X.shape[1]
        program, model = self.online_setup(n_features)
        seen = float(model["n"][0]) + (X.shape[0] if sw is None else float(sw.sum()))
        if seen < 2:
            raise ValueError(f"PCA.partial_fit needs at least 2 samples in all, got {seen:g} so far")
        self._resolve_n_components(int(seen), n_features)
        fitted = self._online_step(program, model, ArrayDataset(X, None, sw))  # CSC becomes CSR there
        self.online_finish(fitted, X.dtype)
        return self

    def online_setup(self, n_features: int, classes: np.ndarray | None = None) -> tuple[OnlineMoments, dict]:
        """The online program (exact streaming moments) and the moments so far."""
        self._check_params()
        model = getattr(self, "_online_model_", None)
        return OnlineMoments(), OnlineMoments.initial_model(n_features) if model is None else model

    def online_finish(self, model: dict, dtype=np.float64) -> None:
        """The components of every row the streaming moments have seen."""
        n, n_features = float(model["n"][0]), model["mean"].shape[0]
        if n < 2:
            raise ValueError(f"PCA needs at least 2 samples, the stream has brought {n:g}")
        k = self._resolve_n_components(int(n), n_features)
        variances, vectors = np.linalg.eigh(model["scatter"] / (n - 1.0))
        variances = np.maximum(variances[::-1], 0.0)
        components = vectors[:, ::-1][:, :k].T
        noise = float(variances[k:].mean()) if k < min(int(n), n_features) else 0.0
        self._set_components(model["mean"], components, variances, float(variances.sum()), noise, n, k,
                             int(n), dtype)

    def _set_components(self, mean, components, variances, total_var, noise, n, k, n_samples, dtype) -> None:
        explained = np.array(variances[:k], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = explained / total_var
        self.mean_ = np.asarray(mean, dtype=dtype).copy()
        self.components_ = np.ascontiguousarray(_flip_signs(components), dtype=dtype)
        self.explained_variance_ = explained.astype(dtype)
        self.explained_variance_ratio_ = ratio.astype(dtype)
        self.singular_values_ = np.sqrt(explained * (n - 1.0)).astype(dtype)
        self.noise_variance_ = float(noise)
        self.n_components_ = k
        self.n_samples_ = n_samples

    def transform(self, X) -> np.ndarray:
        """Project X (n_samples, n_features) onto the components: shape (n_samples, n_components_)."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32],
                          reset=False)
        Xt = np.asarray(X @ self.components_.T)
        Xt -= self.mean_ @ self.components_.T
        if self.whiten:
            scale = np.sqrt(self.explained_variance_)
            scale[scale < np.finfo(scale.dtype).eps] = np.finfo(scale.dtype).eps
            Xt /= scale
        return Xt

    def fit_transform(self, X, y=None, sample_weight=None) -> np.ndarray:
        """Fit on X (n_samples, n_features) and return its projection (n_samples, n_components_)."""
        return self.fit(X, y, sample_weight=sample_weight).transform(X)

    def inverse_transform(self, X) -> np.ndarray:
        """Map projections (n_samples, n_components_) back to feature space: (n_samples, n_features).

        With ``whiten=True`` the whitening is undone as well.
        """
        check_is_fitted(self)
        X = check_array(X, input_name="X", dtype=[np.float64, np.float32])
        if self.whiten:
            return X @ (np.sqrt(self.explained_variance_)[:, None] * self.components_) + self.mean_
        return X @ self.components_ + self.mean_

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.input_tags.sparse = True
        return tags
