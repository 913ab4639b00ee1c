"""Shared plumbing of the estimators: engine parameters, running a program, history."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import assert_all_finite
from sklearn.utils._param_validation import Interval, StrOptions

from drizzle_ml.data import ArrayDataset, FileDataset
from drizzle_ml.durable import (
    SCHEDULING,
    SHARDING,
    DurableJob,
    JobState,
    job_key_for,
    parse_checkpoint_every,
    run_durable,
    tuner_settings,
)
from drizzle_ml.errors import WorkerRecoveredWarning  # noqa: F401  (here before it moved to the engine)


def resumable(fit: Callable) -> Callable:
    """Give an estimator's ``fit`` the ``resume`` keyword: continue from ``checkpoint_dir``."""

    @functools.wraps(fit)
    def wrapper(self, *args: Any, resume: bool = False, **kwargs: Any):
        if resume and getattr(self, "checkpoint_dir", None) is None:
            raise ValueError(f"{type(self).__name__}.fit(resume=True) needs checkpoint_dir to be set")
        self._fit_jobs, self._resume = 0, bool(resume)
        try:
            return fit(self, *args, **kwargs)
        finally:
            del self._fit_jobs, self._resume

    return wrapper


class DrizzleEstimator(BaseEstimator):
    """Base of the estimators: how a fit reaches the engine.

    Engine parameters shared by every estimator:

    n_workers : int or None
        Worker processes. None: all ranks of an ``mpiexec`` world; in a
        Slurm allocation (an ``sbatch`` script) its tasks minus one;
        otherwise one per core.
    group_size : "auto" or int >= 1
        Iterations scheduled per coordination round.
    scheduling : {"group", "bsp"}
        Group scheduling, or the centralized per-iteration baseline.
    verbose : int
        0 silent; 1 a progress line per group on stderr.
    checkpoint_dir : path or None
        Write committed model versions there (HDF5, atomically, while the
        next group runs); ``fit(..., resume=True)`` continues from the
        newest valid checkpoint.
    checkpoint_every : int or str
        A checkpoint every this many groups (default 1: a failure then costs
        at most one group), or at most once per interval such as ``"30s"``;
        the final version is always written.
    tuner : dict or None
        Options of the ``"auto"`` group size and of straggler detection, all
        optional: ``lower``/``upper`` (overhead bounds, default 0.05/0.10),
        ``increase`` (2.0), ``decrease`` (1), ``min_group``/``max_group``
        (1/1000), ``hold``/``max_hold`` (8/64 groups), ``straggler_factor``
        (1.5: slowest worker over the others' median) and ``straggler_groups``
        (3 consecutive groups). See ``docs/concepts.md``.
    rebalance : bool
        Move rows away from a reported straggler to its neighbours at a group
        boundary (default False: only report it with a ``StragglerWarning``).
    sharding : {"auto", "replicated", "sharded"}
        The linear models' L-BFGS and gradient descent: split the
        coefficients and the optimizer's memory across the workers (each
        updates its shard; gradients arrive by reduce-scatter), or keep them
        whole on every worker. ``"auto"`` shards models of at least 2^16
        coefficients on two workers or more. The same holds online
        (``partial_fit``, streams) for FTRL-proximal models (L1 and
        elastic-net penalties), sharded by columns (a multinomial model's
        columns hold every class's coefficient; ``"auto"`` counts columns);
        other online models stay replicated.
        ``history_`` names what ran (``reduction``: ``scatter+sharded`` when
        sharded). See ``docs/large-sparse-models.md``.

    After ``fit``: ``n_iter_``, ``model_version_`` (the committed version of
    the final model) and ``history_`` (one dict of metrics per group).
    """

    # Declared once here; each estimator adds its own (scikit-learn's parameter validation).
    _parameter_constraints: dict = {
        "n_workers": [None, Interval(Integral, 1, None, closed="left")],
        "group_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "scheduling": [StrOptions(set(SCHEDULING))],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "checkpoint_dir": [None, str, os.PathLike],
        "checkpoint_every": [Interval(Integral, 1, None, closed="left"), str],
        "tuner": [None, dict],
        "rebalance": ["boolean"],
        "sharding": [StrOptions(set(SHARDING))],
    }

    def _check_engine_params(self) -> None:
        """Every parameter against its declared constraints; then what a type cannot say."""
        self._validate_params()
        self._adaptivity()  # the tuner's keys and bounds
        parse_checkpoint_every(self.checkpoint_every)  # "30s"

    def _require_y(self, y: Any) -> None:
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")

    def _check_file_dataset(self, dataset: FileDataset, y: Any, sample_weight: Any,
                            needs_targets: bool) -> FileDataset:
        """Checks for a fit on an :class:`HDF5Dataset` or a :class:`ParquetDataset`, whose rows only
        the workers read.

        The targets come from the file (HDF5 ``y_key``, Parquet ``target``), so ``y``
        must be None; per-row weights are not read from files yet.
        """
        name = type(self).__name__
        hdf5 = dataset.kind == "hdf5"
        if y is not None:
            source = "the HDF5 dataset's y_key" if hdf5 else "the Parquet dataset's target column"
            raise ValueError(f"{name}.fit: y comes from {source}; pass y=None")
        if sample_weight is not None:
            raise ValueError(f"{name}.fit: sample_weight is not supported with an {type(dataset).__name__}")
        if needs_targets and dataset.y_key is None:
            opened = "with y_key=None" if hdf5 else "without a target column (target=None, or no column 'y')"
            raise ValueError(f"{name} needs targets: {dataset.path} was opened {opened}")
        if dataset.n_rows < 1:
            raise ValueError(f"{dataset.path}: {dataset.x_key!r} has 0 samples; at least 1 is required")
        self.n_features_in_ = dataset.n_features
        return dataset

    def _run(self, program: Any, model: dict, dataset: ArrayDataset | FileDataset, max_iter: int,
             warn_not_converged: bool = True):
        """Run ``program`` from ``model`` on ``dataset``; set the engine attributes; return the JobResult.

        The job runs durably (:func:`~drizzle_ml.durable.run_durable`): with
        ``checkpoint_dir``, committed versions are also written there
        (``job-<k>-<hash of the job's key>`` for the k-th job of this fit), and a fit with
        ``resume=True`` continues each job from its newest valid checkpoint.
        A worker that dies in launched mode is replaced: the job continues from
        the version committed at the last group boundary (at most one group is
        redone, and the result is the same bit for bit).
        """
        n_workers = None if self.n_workers is None else int(self.n_workers)
        self.__dict__.pop("_online_model_", None)  # a fit starts over; partial_fit then continues from it
        on_group = getattr(self, "progress_callback", None) or (self._print_progress if self.verbose else None)
        tuner, adaptivity = self._adaptivity()
        job = DurableJob(type(self).__name__, program, JobState(model), max_iter, n_workers=n_workers,
                         dataset=dataset, tuner=tuner,
                         run_options={"scheduling": self.scheduling, "on_group": on_group,
                                      "sharding": getattr(self, "sharding", "auto"), **adaptivity})
        self.model_store_ = job.store
        self._make_durable(job, program, dataset)
        result, start = run_durable(job)
        return self._record(result, start, max_iter, warn_not_converged)

    def _adaptivity(self) -> tuple[Any, dict[str, Any]]:
        """The tuner settings and the run options of the ``tuner`` and ``rebalance`` parameters (checked)."""
        return tuner_settings(self.group_size, getattr(self, "tuner", None), getattr(self, "rebalance", False))

    def _record(self, result, start: int, max_iter: int, warn_not_converged: bool):
        # The job's iterations: those before a resume or a recovery count too.
        self.n_iter_ = start + result.n_iter
        self.model_version_ = result.version
        self.history_ = [g.as_dict() | {"reduction": result.reduction} for g in result.history]
        if warn_not_converged and not result.converged:
            warnings.warn(
                f"{type(self).__name__} did not converge in max_iter={max_iter} iterations; "
                "increase max_iter or relax tol",
                ConvergenceWarning, stacklevel=2,
            )
        return result

    def _make_durable(self, job: DurableJob, program: Any, dataset: Any) -> None:
        """With ``checkpoint_dir``: the job's checkpoints, keyed by estimator, parameters, program and data."""
        index = getattr(self, "_fit_jobs", 0)
        self._fit_jobs = index + 1
        directory = getattr(self, "checkpoint_dir", None)
        if directory is None:
            return
        if getattr(dataset, "speculative", False):
            dataset.confirm()  # checkpoints are keyed by the data's content
        engine = {"n_workers", "group_size", "scheduling", "verbose", "max_iter", "checkpoint_dir",
                  "checkpoint_every", "tuner", "rebalance", "sharding"}
        params = {k: (v if isinstance(v, (int, float, str, bool, type(None), np.ndarray)) else repr(v))
                  for k, v in self.get_params().items() if k not in engine}
        job.job_key = job_key_for(f"{type(self).__name__}.{type(program).__name__}.{index}",
                                  {"params": params, "data": dataset.dataset_id})
        described = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in params.items()}
        job.checkpoint_dir, job.index, job.resume = directory, index, getattr(self, "_resume", False)
        job.checkpoint_every = getattr(self, "checkpoint_every", 1)
        job.checkpoint_params = {"estimator": type(self).__name__, "program": type(program).__name__,
                                 "job": index, "params": described, "data": dataset.dataset_id}

    @staticmethod
    def _print_progress(g) -> None:
        loss = g.metrics.get("loss")
        loss_s = f" loss {loss:.6g}" if loss is not None else ""
        rate = g.n_iterations / g.wall if g.wall > 0 else float("inf")
        coordination = 100 * g.coordination / g.wall if g.wall > 0 else 0.0
        print(
            f"iter {g.start_iteration + g.n_iterations:>6}{loss_s} group {g.group_size:>4} "
            f"{rate:,.0f} it/s coordination {coordination:4.1f}%{g.notes()}",
            file=sys.stderr,
        )


# Ids (content fingerprints) of datasets whose X was checked free of NaN and infinity.
_FINITE_IDS: OrderedDict[str, None] = OrderedDict()
_FINITE_IDS_KEPT = 64


def fit_dataset(estimator: Any, X: Any, y: Any = None, sample_weight: Any = None) -> ArrayDataset:
    """The dataset of a fit on arrays: speculative on refits, X checked for NaN and infinity once per content.

    Fits validate X with ``ensure_all_finite=False``: the check's answer
    depends on the content only, so a refit on the same data (warm starts,
    ``n_init``, a grid search) skips the pass over X (about 12 ms per 160 MB).
    It runs again if a speculative id turns out to be stale (X changed in
    place, see ``ArrayDataset(speculate=True)``); it raises scikit-learn's error.
    """
    dataset = ArrayDataset(X, y, sample_weight, speculate=True)
    dataset.add_check(lambda ds: _check_finite_content(estimator, ds))
    return dataset


def _check_finite_content(estimator: Any, dataset: ArrayDataset) -> None:
    key = dataset.dataset_id
    if key in _FINITE_IDS:
        _FINITE_IDS.move_to_end(key)
        return
    assert_all_finite(dataset.X, input_name="X", estimator_name=type(estimator).__name__)
    _FINITE_IDS[key] = None
    while len(_FINITE_IDS) > _FINITE_IDS_KEPT:
        _FINITE_IDS.popitem(last=False)


def check_sample_weight(sample_weight: Any, n_samples: int, dtype=np.float64) -> np.ndarray | None:
    """Validated weights of shape (n_samples,), finite and non-negative with a positive sum.

    ``None`` stays ``None`` (unweighted, which programs treat as all ones).
    """
    if sample_weight is None:
        return None
    sw = np.asarray(sample_weight, dtype=dtype)
    if sw.ndim == 0:
        sw = np.full(n_samples, float(sw), dtype=dtype)
    if sw.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},), got {sw.shape}")
    if not np.isfinite(sw).all():
        raise ValueError("sample_weight contains NaN or infinity")
    if (sw < 0).any():
        raise ValueError("sample_weight must be non-negative")
    if not sw.sum() > 0:
        raise ValueError("sample_weight sums to zero: at least one sample needs a positive weight")
    return np.ascontiguousarray(sw)
