"""Logistic regression (binary and multinomial) by L-BFGS or gradient descent; L1 and elastic net by OWL-QN."""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from drizzle_ml.data import ArrayDataset, FileDataset

from .base import check_sample_weight, fit_dataset, resumable
from .linear import LinearModelBase
from .online import OnlineFTRL, OnlineLinear
from .optim import SOLVERS


class LogisticRegression(ClassifierMixin, LinearModelBase):
    """Regularized logistic regression (L2, L1 or elastic net) trained on a drizzle-ml cluster.

    Two classes give a binary model (one coefficient row for ``classes_[1]``);
    more give a multinomial (softmax) model with one row per class, as
    scikit-learn does. The objective is scikit-learn's:
    ``C * sum_i w_i * logloss_i + penalty(coef)`` (intercepts unpenalized), with
    ``penalty = ||coef||² / 2`` (``"l2"``), ``||coef||₁`` (``"l1"``) or
    ``(1 - l1_ratio) ||coef||² / 2 + l1_ratio ||coef||₁`` (``"elasticnet"``),
    minimized in the equivalent per-sample form
    ``mean_w(logloss) + penalty(coef) / (C sum_i w_i)``.

    Parameters
    ----------
    solver : {"lbfgs", "gd"}
        ``lbfgs``: limited-memory BFGS whose backtracking line search runs
        inside the iterations (a rejected step is one more iteration, no
        extra coordination); with an L1 term, its orthant-wise form OWL-QN
        (exact zeros). ``gd``: steepest descent, with a fixed
        ``learning_rate`` or the same line search (L2 or no penalty only).
    C : float > 0
        Inverse penalty strength, as scikit-learn (``np.inf``: no penalty).
    penalty : {"l2", "l1", "elasticnet"} or None
        The penalty, as scikit-learn's (None: no penalty, as ``C=np.inf``).
    l1_ratio : float in [0, 1] or None
        ``"elasticnet"`` only (and required there): the L1 share of the penalty.
    tol : float
        Stop when the largest absolute (pseudo-)gradient entry of the
        per-sample objective is at most ``tol``.
    max_iter : int
        Maximum iterations (objective evaluations, line-search steps included).
    fit_intercept : bool
        Fit unpenalized intercepts.
    learning_rate : float or None
        ``gd`` only: a fixed step, or None for the backtracking line search.
    eta0, power_t : float
        :meth:`partial_fit` (and streams): step ``t`` is
        ``eta0 / (L * t**power_t)`` with ``L`` a running bound of the loss's
        curvature, see :class:`~drizzle_ml.algorithms.online.OnlineLinear`.
        With an L1 term they learn by FTRL-proximal instead
        (:class:`~drizzle_ml.algorithms.online.OnlineFTRL`): ``eta0`` is its
        per-coordinate learning rate, ``power_t`` is not used.
    n_workers, group_size, scheduling, random_state, verbose,
    checkpoint_dir, checkpoint_every, tuner, rebalance, sharding
        Engine parameters, see :class:`~drizzle_ml.algorithms.base.DrizzleEstimator`.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) for two classes, else (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    n_iter_, model_version_, history_
    """

    _parameter_constraints: dict = {
        **LinearModelBase._parameter_constraints,
        "solver": [StrOptions(set(SOLVERS))],
        "C": [Interval(Real, 0, None, closed="right")],  # np.inf: no penalty
        "penalty": [StrOptions({"l2", "l1", "elasticnet"}), None],
        "l1_ratio": [Interval(Real, 0, 1, closed="both"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, solver="lbfgs", *, C=1.0, penalty="l2", l1_ratio=None, tol=1e-4, max_iter=100,
                 fit_intercept=True, learning_rate=None, eta0=1.0, power_t=0.25, n_workers=None,
                 group_size="auto", scheduling="group", random_state=None, verbose=0, checkpoint_dir=None,
                 checkpoint_every=1, tuner=None, rebalance=False, sharding="auto"):
        self.solver = solver
        self.C = C
        self.penalty = penalty
        self.l1_ratio = l1_ratio
        self.tol = tol
        self.max_iter = max_iter
        self.fit_intercept = fit_intercept
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.n_workers = n_workers
        self.group_size = group_size
        self.scheduling = scheduling
        self.random_state = random_state
        self.verbose = verbose
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.tuner = tuner
        self.rebalance = rebalance
        self.sharding = sharding

    @resumable
    def fit(self, X, y=None, sample_weight=None):
        """Fit on X (n_samples, n_features), dense or CSR, and labels y (n_samples,).

        X may also be an :class:`~drizzle_ml.HDF5Dataset` or a
        :class:`~drizzle_ml.ParquetDataset` (y=None: the labels are its
        ``y_key`` or ``target``); each worker then reads and encodes its own rows.
        """
        self._check_solver_params()
        alpha, l1 = self._strengths()
        if isinstance(X, FileDataset):  # rows stay on disk; workers read and encode their own labels
            dataset = self._check_file_dataset(X, y, sample_weight, needs_targets=True)
            if len(dataset.y_shape) != 1:
                raise ValueError(f"{dataset.path}: labels {dataset.y_key!r} must be 1-D, "
                                 f"got shape {dataset.y_shape}")
            classes = np.unique(np.concatenate([np.unique(chunk) for chunk in dataset.targets()]))
            self.classes_ = self._check_classes(classes)
            codes, classes_for_workers = None, self.classes_
            n_features = dataset.n_features
            dtype = dataset.dtype if dataset.dtype == np.float32 else np.dtype(np.float64)
        else:
            self._require_y(y)
            X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32],
                                 ensure_all_finite=False)
            self.classes_ = self._check_classes(np.unique(y))
            codes = np.searchsorted(self.classes_, y)
            classes_for_workers, n_features, dtype = None, X.shape[1], X.dtype
        binary = len(self.classes_) == 2
        if codes is not None:
            sw = check_sample_weight(sample_weight, X.shape[0], X.dtype)
            dataset = fit_dataset(self, X, codes.astype(X.dtype) if binary else codes.astype(np.intp), sw)
        coef, intercept = self._minimize("binomial" if binary else "multinomial", dataset, n_features,
                                         1 if binary else len(self.classes_), alpha, self.solver,
                                         self.max_iter, classes=classes_for_workers, l1=l1)
        self.coef_, self.intercept_ = coef.astype(dtype), intercept.astype(dtype)
        return self

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One stochastic-gradient step on the micro-batch X (n_samples, n_features), y (n_samples,).

        ``classes`` (all labels the stream will have) is required on the
        first call, as in scikit-learn. A model fitted by :meth:`fit` is
        continued from its coefficients. Each call makes one new model version.
        """
        self._check_engine_params()
        first = getattr(self, "_online_model_", None) is None and not hasattr(self, "coef_")
        if first or classes is not None:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            known = self._check_classes(np.unique(np.asarray(classes)))
            if hasattr(self, "classes_") and not np.array_equal(known, self.classes_):
                raise ValueError(f"classes={known.tolist()} differs from the classes of the previous "
                                 f"fit or partial_fit, {self.classes_.tolist()}")
            self.classes_ = known
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32],
                             reset=first)
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y has labels not in classes {self.classes_.tolist()}: {unknown.tolist()}")
        binary = len(self.classes_) == 2
        codes = np.searchsorted(self.classes_, y)
        target = (codes == 1).astype(np.float64) if binary else codes.astype(np.float64)
        sw = check_sample_weight(sample_weight, X.shape[0])
        program, model = self.online_setup(X.shape[1])
        fitted = self._online_step(program, model, ArrayDataset(X, target, sw))
        self.coef_ = fitted["coef"].astype(X.dtype)
        self.intercept_ = fitted["intercept"].astype(X.dtype)
        return self

    learns_from_targets, needs_classes = True, True

    def online_setup(self, n_features: int, classes: np.ndarray | None = None) -> tuple[OnlineLinear, dict]:
        """The online program and the model it steps from.

        With ``classes`` (a stream) the workers encode raw labels; without,
        the targets come encoded (partial_fit) by ``classes_``.
        """
        self._check_engine_params()
        if classes is not None:
            self.classes_ = self._check_classes(np.unique(np.asarray(classes, dtype=np.float64)))
        binary = len(self.classes_) == 2
        kind, known = "binomial" if binary else "multinomial", None if classes is None else self.classes_
        alpha, l1 = self._strengths()
        if l1 > 0:
            program = OnlineFTRL(kind, l1=l1, l2=alpha, fit_intercept=self.fit_intercept, eta0=self.eta0,
                                 classes=known)
        else:
            program = OnlineLinear(kind, penalty=alpha, fit_intercept=self.fit_intercept, eta0=self.eta0,
                                   power_t=self.power_t, classes=known)
        return program, self._online_model_start(program, n_features, 1 if binary else len(self.classes_))

    def online_finish(self, model: dict) -> None:
        self.coef_, self.intercept_ = np.array(model["coef"]), np.array(model["intercept"])

    def _check_solver_params(self) -> None:
        super()._check_solver_params()
        if self.penalty in ("l1", "elasticnet") and self.solver != "lbfgs":
            raise ValueError(f"penalty={self.penalty!r} needs solver='lbfgs' (OWL-QN); "
                             f"solver={self.solver!r} supports only 'l2' or None penalties")

    def _strengths(self) -> tuple[float, float]:
        """``(l2, l1)``: the penalty strengths of the summed objective ``sum_i w_i logloss_i + ...``.

        As scikit-learn: ``l1_ratio`` counts for ``"elasticnet"`` only (a warning
        otherwise), and must be given there.
        """
        penalty, ratio = self.penalty, self.l1_ratio
        if penalty != "elasticnet" and ratio is not None and 0 < ratio < 1:
            warnings.warn(f"l1_ratio parameter is only used when penalty is 'elasticnet'. Got (penalty={penalty})",
                          stacklevel=3)
        if penalty == "elasticnet" and ratio is None:
            raise ValueError("l1_ratio must be specified when penalty is elasticnet.")
        if penalty is None and self.C != 1.0:
            warnings.warn("Setting penalty=None will ignore the C and l1_ratio parameters", stacklevel=3)
        if penalty is None or np.isinf(self.C):
            return 0.0, 0.0
        strength = 1.0 / float(self.C)
        if penalty == "l2":
            return strength, 0.0
        share = 1.0 if penalty == "l1" else float(ratio)
        return (1.0 - share) * strength, share * strength

    @staticmethod
    def _check_classes(classes: np.ndarray) -> np.ndarray:
        check_classification_targets(classes)
        if len(classes) < 2:
            raise ValueError(
                "LogisticRegression needs samples of at least 2 classes in the data, but the data "
                f"contains only one class: {classes.tolist()[0]!r}"
            )
        return classes

    def decision_function(self, X):
        """Scores: shape (n_samples,) for two classes (positive: ``classes_[1]``), else (n_samples, n_classes)."""
        scores = self._decision(X)
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = expit(scores)
            return np.column_stack([1.0 - p, p])
        return softmax(scores, axis=1)

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`."""
        return np.log(self.predict_proba(X))

    def predict(self, X):
        """Predicted labels, shape (n_samples,)."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
