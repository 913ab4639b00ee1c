"""Logistic regression by gradient descent, as an engine program and an estimator."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import expit
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from drizzle_ml.data import ArrayDataset
from drizzle_ml.program import Partition, Program

from .base import DrizzleEstimator


class LogisticGD(Program):
    """Binary logistic regression, plain gradient descent with a fixed step.

    Objective (per sample): ``mean_i w_i * logloss(y_i, x_i·coef + b) + ||coef||² / (2 C n)``
    with ``n`` the total sample weight, which has the same minimizer as
    scikit-learn's ``C * sum_i w_i * logloss + ||coef||² / 2``.

    Model: ``coef`` (n_features,), ``intercept`` (1,).
    Partial: ``(X^T r, [sum r, loss, weight])`` with ``r = w * (sigmoid(z) - y)``.
    """

    def __init__(self, C: float = 1.0, learning_rate: float = 1.0, tol: float = 1e-4,
                 fit_intercept: bool = True):
        self.C, self.learning_rate, self.tol, self.fit_intercept = C, learning_rate, tol, fit_intercept

    def local(self, model, part: Partition):
        X, y, sw = part.X, part.y, part.sample_weight
        z = X @ model["coef"] + model["intercept"][0]
        losses = np.logaddexp(0.0, z) - y * z
        r = expit(z) - y
        if sw is not None:
            losses *= sw
            r *= sw
            weight = sw.sum()
        else:
            weight = float(X.shape[0])
        grad = X.T @ r
        return np.asarray(grad, dtype=np.float64), np.array([r.sum(), losses.sum(), weight])

    def update(self, model, total, iteration):
        grad_sum, (r_sum, loss_sum, n) = total
        coef, intercept = model["coef"], model["intercept"]
        penalty = 0.0 if np.isinf(self.C) else 1.0 / (self.C * n)
        grad = grad_sum / n + penalty * coef
        grad_b = r_sum / n if self.fit_intercept else 0.0
        loss = loss_sum / n + 0.5 * penalty * float(coef @ coef)
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"gradient descent diverged at iteration {iteration} (loss {loss}); "
                "lower learning_rate or scale the features"
            )
        grad_norm = max(float(np.max(np.abs(grad), initial=0.0)), abs(grad_b))
        new = {
            "coef": coef - self.learning_rate * grad,
            "intercept": intercept - self.learning_rate * np.array([grad_b]),
        }
        return new, {"loss": loss, "grad_norm": grad_norm, "converged": grad_norm < self.tol}


class LogisticRegression(ClassifierMixin, DrizzleEstimator):
    """Binary logistic regression trained on a drizzle-ml cluster.

    Parameters
    ----------
    solver : {"gd"}
        Gradient descent with a fixed step ``learning_rate``.
    C : float
        Inverse L2 regularization strength, as in scikit-learn (``np.inf``: none).
    learning_rate : float
        Gradient-descent step on the per-sample objective.
    max_iter : int
        Maximum iterations.
    tol : float
        Stop when the largest absolute gradient entry is below ``tol``.
    fit_intercept : bool
        Fit an (unpenalized) intercept.
    n_workers, group_size, scheduling, random_state, verbose
        Engine parameters, see :class:`~drizzle_ml.algorithms.base.DrizzleEstimator`.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    coef_ : ndarray of shape (1, n_features)
    intercept_ : ndarray of shape (1,)
    n_iter_, model_version_, history_
    """

    def __init__(self, solver="gd", *, C=1.0, learning_rate=1.0, max_iter=1000, tol=1e-4,
                 fit_intercept=True, n_workers=None, group_size="auto", scheduling="group",
                 random_state=None, verbose=0):
        self.solver = solver
        self.C = C
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.n_workers = n_workers
        self.group_size = group_size
        self.scheduling = scheduling
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y, sample_weight=None):
        """Fit on X (n_samples, n_features), dense or CSR, and binary labels y (n_samples,)."""
        self._check_params()
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float64, y_numeric=False)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(
                f"LogisticRegression needs samples of at least 2 classes; y has only {self.classes_[0]!r}"
            )
        if len(self.classes_) > 2:
            raise ValueError(
                f"solver='gd' is binary; y has {len(self.classes_)} classes"
            )
        y01 = (y == self.classes_[1]).astype(np.float64)
        sw = None
        if sample_weight is not None:
            sw = np.asarray(sample_weight, dtype=np.float64)
            if sw.shape != (X.shape[0],) or not np.isfinite(sw).all() or (sw < 0).any():
                raise ValueError("sample_weight must be finite, non-negative, of shape (n_samples,)")
        program = LogisticGD(self.C, self.learning_rate, self.tol, self.fit_intercept)
        model = {"coef": np.zeros(X.shape[1]), "intercept": np.zeros(1)}
        result = self._run(program, model, ArrayDataset(X, y01, sw), self.max_iter)
        self.coef_ = np.array(result.model["coef"]).reshape(1, -1)
        self.intercept_ = np.array(result.model["intercept"])
        return self

    def _check_params(self) -> None:
        self._check_engine_params()
        if self.solver != "gd":
            raise ValueError(f"solver must be 'gd', got {self.solver!r}")
        if not (self.C > 0):
            raise ValueError(f"C must be positive, got {self.C!r}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (self.tol >= 0):
            raise ValueError(f"tol must be non-negative, got {self.tol!r}")

    def decision_function(self, X):
        """Signed distance to the boundary, shape (n_samples,)."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=np.float64, reset=False)
        return np.asarray(X @ self.coef_[0] + self.intercept_[0]).ravel()

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, 2), columns in ``classes_`` order."""
        p = expit(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X):
        """Predicted labels, shape (n_samples,)."""
        scores = self.decision_function(X)  # checks fitted first
        return self.classes_[(scores > 0).astype(int)]
