"""Least-squares linear models: LinearRegression and Ridge; Lasso and ElasticNet.

``solver="exact"`` sums the weighted moments of ``[X, y]`` up the reduce tree in
one pass and solves the normal equations on the tree root. ``"lbfgs"`` and
``"gd"`` minimize the same objective iteratively (for data too wide for a
(d, d) Gram matrix). ``"auto"`` picks ``exact`` up to 2,000 columns. The
exact solve's program is in :mod:`~drizzle_ml.algorithms.normal_equations`.
Lasso and ElasticNet add an L1 term, minimized by OWL-QN (orthant-wise L-BFGS).
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from drizzle_ml.data import ArrayDataset, FileDataset

from .base import DrizzleEstimator, check_sample_weight, fit_dataset, resumable
from .losses import LinearLoss
from .normal_equations import NormalEquations
from .online import OnlineFTRL, OnlineLinear
from .online_learning import OnlineLearner
from .optim import SOLVERS, Minimize, OrthantWise, initial_model, line_search_failed

EXACT_MAX_COLUMNS = 2000


class LinearModelBase(OnlineLearner):
    """Fitting shared by the linear models: validation, solver choice, coefficients back."""

    _parameter_constraints: dict = {
        **DrizzleEstimator._parameter_constraints,
        "fit_intercept": ["boolean"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "max_iter": [None, Interval(Integral, 1, None, closed="left")],
        "learning_rate": [None, Interval(Real, 0, None, closed="neither")],
        "eta0": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
    }

    def _check_solver_params(self) -> None:
        self._check_engine_params()
        lr = getattr(self, "learning_rate", None)
        if lr is not None and self.solver != "gd":
            raise ValueError(f"learning_rate is a step of solver='gd'; solver={self.solver!r} chooses its own steps")

    def _minimize(self, kind: str, dataset: ArrayDataset | FileDataset, n_features: int, n_outputs: int,
                  alpha: float, solver: str, max_iter: int,
                  classes: np.ndarray | None = None, l1: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Run :class:`Minimize` (with ``l1 > 0``: :class:`OrthantWise`, OWL-QN); return ``coef``
        (n_outputs, n_features) and ``intercept`` (n_outputs,).

        ``alpha`` and ``l1`` are the L2 and L1 strengths of the summed objective.
        ``classes``: for raw labels read by the workers, the sorted classes to encode them by.
        """
        loss = LinearLoss(kind, n_features, n_outputs, self.fit_intercept)
        if l1 > 0:
            program = OrthantWise(loss, alpha=alpha, l1=l1, tol=self.tol, classes=classes)
        else:
            program = Minimize(loss, solver, alpha=alpha, tol=self.tol,
                               learning_rate=getattr(self, "learning_rate", None), classes=classes)
        model = initial_model(loss.n_params, solver, program.memory)
        result = self._run(program, model, dataset, max_iter)
        if line_search_failed(result.model):
            warnings.warn(
                f"{type(self).__name__}: the line search found no step that lowers the loss "
                "(the gradient is at the limit of floating-point precision); stopped early",
                ConvergenceWarning, stacklevel=2,
            )
        coef, intercept = loss.split(np.array(result.model["x"]))
        return coef.copy(), (np.zeros(n_outputs) if intercept is None else intercept.copy())


    def _online_model_start(self, program: OnlineLinear, n_features: int, n_outputs: int) -> dict[str, np.ndarray]:
        """The online model ``program`` steps from: the last partial_fit's, else fit's coefficients, else zeros.

        A last online model of the other kind (SGD's or FTRL's, after ``set_params`` changed the
        penalty) gives its coefficients.
        """
        online = getattr(self, "_online_model_", None)
        if online is not None and ("z" in online) == isinstance(program, OnlineFTRL):
            # An estimator pickled before FTRL's intercept state had keys of its own continues too.
            return OnlineFTRL.upgrade(online) if isinstance(program, OnlineFTRL) else online
        if online is not None:
            return program.initial_model(n_features, n_outputs, online["coef"], online["intercept"])
        if hasattr(self, "coef_"):
            return program.initial_model(n_features, n_outputs, self.coef_, self.intercept_)
        return program.initial_model(n_features, n_outputs)

    def _decision(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False)
        coef = np.atleast_2d(self.coef_)
        out = np.asarray(X @ coef.T.astype(X.dtype, copy=False)) + np.asarray(self.intercept_, dtype=X.dtype)
        return out


class _LeastSquares(RegressorMixin, LinearModelBase):
    _parameter_constraints: dict = {
        **LinearModelBase._parameter_constraints,
        "solver": [StrOptions({"auto", "exact", *SOLVERS})],
    }
    _alpha = 0.0

    @resumable
    def fit(self, X, y=None, sample_weight=None):
        """Fit on X (n_samples, n_features), dense or CSR, and y (n_samples,) or (n_samples, n_targets).

        X may also be an :class:`~drizzle_ml.HDF5Dataset` or a
        :class:`~drizzle_ml.ParquetDataset` (y=None: the targets are its
        ``y_key`` or ``target``); each worker then reads its own rows.
        """
        self._check_solver_params()
        dataset, n_features, n_targets, y_ndim, dtype = self._regression_data(X, y, sample_weight)
        coef, intercept = self._solve(dataset, n_features, n_targets)
        if y_ndim == 1:
            self.coef_, self.intercept_ = coef[0].astype(dtype), float(intercept[0])
        else:
            self.coef_, self.intercept_ = coef.astype(dtype), intercept.astype(dtype)
        return self

    def _regression_data(self, X, y, sample_weight) -> tuple[ArrayDataset | FileDataset, int, int, int, np.dtype]:
        """The checked data of a fit: ``(dataset, n_features, n_targets, y.ndim, dtype of coef_)``."""
        if isinstance(X, FileDataset):  # rows stay on disk; each worker reads its own
            dataset = self._check_file_dataset(X, y, sample_weight, needs_targets=True)
            if dataset.y_dtype.kind not in "biuf":
                raise ValueError(f"{dataset.path}: targets {dataset.y_key!r} must be numeric, "
                                 f"got dtype {dataset.y_dtype}")
            n_features, y_ndim = dataset.n_features, len(dataset.y_shape)
            n_targets = 1 if y_ndim == 1 else dataset.y_shape[1]
            dtype = dataset.dtype if dataset.dtype == np.float32 else np.dtype(np.float64)
            return dataset, n_features, n_targets, y_ndim, dtype
        self._require_y(y)
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32],
                             multi_output=True, y_numeric=True, ensure_all_finite=False)
        sw = check_sample_weight(sample_weight, X.shape[0], X.dtype)
        Y = np.asarray(y, dtype=X.dtype)
        dataset = fit_dataset(self, X, Y, sw)
        return dataset, X.shape[1], 1 if Y.ndim == 1 else Y.shape[1], Y.ndim, X.dtype

    def _solve(self, dataset: ArrayDataset | FileDataset, n_features: int,
               n_targets: int) -> tuple[np.ndarray, np.ndarray]:
        """``coef`` (n_targets, n_features) and ``intercept`` (n_targets,) by the chosen solver."""
        alpha = self._alpha
        solver = self.solver
        if solver == "auto":  # the normal equations' moments cannot be sharded: sharding="sharded" iterates
            exact = n_features + n_targets <= EXACT_MAX_COLUMNS and self.sharding != "sharded"
            solver = "exact" if exact else "lbfgs"
        if solver == "exact" and self.sharding == "sharded":
            raise ValueError("solver='exact' cannot shard the model (it sums the normal equations whole): "
                             "use solver='lbfgs' or 'gd' with sharding='sharded'")
        if solver == "exact":
            program = NormalEquations(n_features, alpha, self.fit_intercept)
            model = {"coef": np.zeros((n_targets, n_features)), "intercept": np.zeros(n_targets)}
            result = self._run(program, model, dataset, 1)
            coef, intercept = np.array(result.model["coef"]), np.array(result.model["intercept"])
        else:
            max_iter = 1000 if self.max_iter is None else self.max_iter
            coef, intercept = self._minimize("squared", dataset, n_features, n_targets, alpha, solver, max_iter)
        self.solver_ = solver
        return coef, intercept

    def partial_fit(self, X, y, sample_weight=None):
        """One stochastic-gradient step on the micro-batch X (n_samples, n_features), y (n_samples,).

        A model fitted by :meth:`fit` is continued from its coefficients. Each
        call makes one new model version; see ``eta0`` and ``power_t``.
        """
        self._check_engine_params()
        first = getattr(self, "_online_model_", None) is None and not hasattr(self, "coef_")
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32],
                             y_numeric=True, reset=first)
        if not first and np.ndim(self.coef_) != 1:
            raise ValueError("partial_fit learns a single target; this model was fitted with "
                             f"{np.shape(self.coef_)[0]} targets")
        sw = check_sample_weight(sample_weight, X.shape[0])
        program, model = self.online_setup(X.shape[1])
        fitted = self._online_step(program, model, ArrayDataset(X, np.asarray(y, np.float64), sw))
        self.coef_, self.intercept_ = fitted["coef"][0].astype(X.dtype), float(fitted["intercept"][0])
        return self

    learns_from_targets = True

    def online_setup(self, n_features: int, classes: np.ndarray | None = None) -> tuple[OnlineLinear, dict]:
        """The online program (an SGD step per micro-batch) and the model it steps from."""
        self._check_engine_params()
        program = OnlineLinear("squared", penalty=self._alpha, fit_intercept=self.fit_intercept,
                               eta0=self.eta0, power_t=self.power_t)
        return program, self._online_model_start(program, n_features, 1)

    def online_finish(self, model: dict) -> None:
        self.coef_, self.intercept_ = np.array(model["coef"][0]), float(model["intercept"][0])

    def predict(self, X):
        """Predictions, shape (n_samples,) or (n_samples, n_targets)."""
        out = self._decision(X)
        return out[:, 0] if np.ndim(self.coef_) == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = True
        return tags


_ENGINE_PARAMS_DOC = """    n_workers, group_size, scheduling, random_state, verbose,
    checkpoint_dir, checkpoint_every, tuner, rebalance, sharding
        Engine parameters, see :class:`~drizzle_ml.algorithms.base.DrizzleEstimator`."""

_ATTRIBUTES_DOC = """    Attributes
    ----------
    coef_ : ndarray of shape (n_features,) or (n_targets, n_features)
    intercept_ : float or ndarray of shape (n_targets,)
    solver_ : the solver that ran ("exact", "lbfgs" or "gd")
    n_iter_, model_version_, history_
        Engine attributes (``n_iter_`` is 1 for the exact solver)."""


class LinearRegression(_LeastSquares):
    __doc__ = f"""Ordinary least squares on a drizzle-ml cluster.

    Parameters
    ----------
    fit_intercept : bool
        Fit an intercept (data are centered by the weighted mean).
    solver : {{"auto", "exact", "lbfgs", "gd"}}
        ``exact``: one pass of tree-summed moments, then the minimum-norm
        least-squares solution. ``lbfgs``/``gd``: iterative, for wide data.
        ``auto``: exact for up to {EXACT_MAX_COLUMNS} columns.
    tol : float
        Iterative solvers: stop when the largest gradient entry of the mean
        half squared error is at most ``tol``.
    max_iter : int or None
        Iterative solvers' iteration limit (None: 1000).
    learning_rate : float or None
        ``gd`` only: fixed step, or None for a backtracking line search.
    eta0, power_t : float
        :meth:`partial_fit` (and streams): step ``t`` is ``eta0 / (L * t**power_t)``
        with ``L`` a running bound of the loss's curvature, see
        :class:`~drizzle_ml.algorithms.online.OnlineLinear`.
{_ENGINE_PARAMS_DOC}

{_ATTRIBUTES_DOC}
    """

    def __init__(self, *, fit_intercept=True, solver="auto", tol=1e-6, max_iter=None, learning_rate=None,
                 eta0=1.0, power_t=0.25, n_workers=None, group_size="auto", scheduling="group",
                 random_state=None, verbose=0, checkpoint_dir=None, checkpoint_every=1,
                 tuner=None, rebalance=False, sharding="auto"):
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
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


class Ridge(_LeastSquares):
    __doc__ = f"""Least squares with an L2 penalty ``alpha * ||coef||²`` (intercept unpenalized).

    Minimizes ``sum_i w_i (y_i - x_i coef - b)² + alpha ||coef||²`` as
    scikit-learn's Ridge.

    Parameters
    ----------
    alpha : float >= 0
        Penalty strength.
    fit_intercept, solver, tol, max_iter, learning_rate, eta0, power_t
        As :class:`LinearRegression` (``tol`` defaults to 1e-4 as scikit-learn's).
{_ENGINE_PARAMS_DOC}

{_ATTRIBUTES_DOC}
    """

    _parameter_constraints: dict = {
        **_LeastSquares._parameter_constraints,
        "alpha": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, alpha=1.0, *, fit_intercept=True, solver="auto", tol=1e-4, max_iter=None,
                 learning_rate=None, eta0=1.0, power_t=0.25, n_workers=None, group_size="auto",
                 scheduling="group", random_state=None, verbose=0, checkpoint_dir=None, checkpoint_every=1,
                 tuner=None, rebalance=False, sharding="auto"):
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
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

    @property
    def _alpha(self) -> float:
        return float(self.alpha)


class ElasticNet(_LeastSquares):
    __doc__ = f"""Least squares with L1 and L2 penalties, scikit-learn's ElasticNet objective.

    Minimizes ``1 / (2 sum_i w_i) * sum_i w_i (y_i - x_i coef - b)²
    + alpha * l1_ratio * ||coef||₁ + alpha * (1 - l1_ratio) / 2 * ||coef||²``
    (intercept unpenalized) by OWL-QN, the orthant-wise L-BFGS
    (:class:`~drizzle_ml.algorithms.optim.OrthantWise`): coefficients the
    penalty zeroes are exactly zero. ``partial_fit`` and streams learn by
    FTRL-proximal (:class:`~drizzle_ml.algorithms.online.OnlineFTRL`), whose
    objective is the same over every record seen.

    Parameters
    ----------
    alpha : float >= 0
        Penalty strength.
    l1_ratio : float in [0, 1]
        The L1 share of the penalty (1: the lasso).
    fit_intercept : bool
        Fit an unpenalized intercept.
    max_iter : int
        Iteration limit (objective evaluations, line-search steps included).
    tol : float
        Stop when the largest absolute entry of the objective's pseudo-gradient
        (the minimum-norm subgradient) is at most ``tol``, or when the
        objective stops decreasing (relative change below 64 machine epsilons).
        Not scikit-learn's duality-gap test: pass a smaller ``tol`` to go further.
    eta0 : float
        :meth:`partial_fit` (and streams): FTRL's per-coordinate learning
        rate, about the size of the coefficients to learn.
{_ENGINE_PARAMS_DOC}

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,) or (n_targets, n_features)
    intercept_ : float or ndarray of shape (n_targets,)
    n_iter_, model_version_, history_
        Engine attributes.
    """

    _parameter_constraints: dict = {
        **{k: v for k, v in _LeastSquares._parameter_constraints.items()
           if k not in ("solver", "learning_rate", "power_t")},
        "alpha": [Interval(Real, 0, None, closed="left")],
        "l1_ratio": [Interval(Real, 0, 1, closed="both")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, alpha=1.0, *, l1_ratio=0.5, fit_intercept=True, max_iter=1000, tol=1e-4, eta0=1.0,
                 n_workers=None, group_size="auto", scheduling="group", random_state=None, verbose=0,
                 checkpoint_dir=None, checkpoint_every=1, tuner=None, rebalance=False, sharding="auto"):
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.eta0 = eta0
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

    @property
    def _l1_share(self) -> float:
        return float(self.l1_ratio)

    def _check_solver_params(self) -> None:
        self._check_engine_params()  # no solver to choose

    def _solve(self, dataset: ArrayDataset | FileDataset, n_features: int,
               n_targets: int) -> tuple[np.ndarray, np.ndarray]:
        # Minimize's strengths are those of the summed objective: scikit-learn's per-sample ones times sum_i w_i.
        sw = getattr(dataset, "sample_weight", None)
        weight = float(dataset.n_rows) if sw is None else float(sw.sum(dtype=np.float64))
        alpha, share = float(self.alpha), self._l1_share
        return self._minimize("squared", dataset, n_features, n_targets, (1.0 - share) * alpha * weight,
                              "lbfgs", self.max_iter, l1=share * alpha * weight)

    def online_setup(self, n_features: int, classes: np.ndarray | None = None) -> tuple[OnlineFTRL, dict]:
        """The online program (an FTRL-proximal step per micro-batch) and the model it steps from."""
        self._check_engine_params()
        alpha, share = float(self.alpha), self._l1_share
        program = OnlineFTRL("squared", l1=share * alpha, l2=(1.0 - share) * alpha, per_record=True,
                             fit_intercept=self.fit_intercept, eta0=self.eta0)
        return program, self._online_model_start(program, n_features, 1)


class Lasso(ElasticNet):
    __doc__ = f"""Least squares with an L1 penalty, scikit-learn's Lasso objective.

    Minimizes ``1 / (2 sum_i w_i) * sum_i w_i (y_i - x_i coef - b)² + alpha * ||coef||₁``
    (intercept unpenalized): :class:`ElasticNet` with ``l1_ratio=1``.

    Parameters
    ----------
    alpha : float >= 0
        Penalty strength.
    fit_intercept, max_iter, tol, eta0
        As :class:`ElasticNet`.
{_ENGINE_PARAMS_DOC}

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,) or (n_targets, n_features)
    intercept_ : float or ndarray of shape (n_targets,)
    n_iter_, model_version_, history_
        Engine attributes.
    """

    _parameter_constraints: dict = {k: v for k, v in ElasticNet._parameter_constraints.items() if k != "l1_ratio"}
    _l1_share = 1.0

    def __init__(self, alpha=1.0, *, fit_intercept=True, max_iter=1000, tol=1e-4, eta0=1.0, n_workers=None,
                 group_size="auto", scheduling="group", random_state=None, verbose=0, checkpoint_dir=None,
                 checkpoint_every=1, tuner=None, rebalance=False, sharding="auto"):
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.eta0 = eta0
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
