"""Shared plumbing of the estimators: engine parameters, running a program, history."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import assert_all_finite

from drizzle_ml.checkpoint import CheckpointStore, job_key_for
from drizzle_ml.cluster import get_cluster
from drizzle_ml.data import ArrayDataset, HDF5Dataset
from drizzle_ml.errors import WorkerFailedError, WorkerTimeoutError
from drizzle_ml.metrics import JobResult
from drizzle_ml.scheduler import SCHEDULING, parse_checkpoint_every
from drizzle_ml.store import ModelStore, freeze
from drizzle_ml.adaptivity import STRAGGLER_KEYS, check_straggler_options
from drizzle_ml.tuner import SIZER_KEYS, GroupSizer, check_group_size, tuner_options

# How many times one fit replaces dead workers before it gives up.
MAX_RECOVERIES = 3


class WorkerRecoveredWarning(RuntimeWarning):
    """A worker died during a fit; the workers were restarted and the job resumed."""


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

    After ``fit``: ``n_iter_``, ``model_version_`` (the committed version of
    the final model) and ``history_`` (one dict of metrics per group).
    """

    def _check_engine_params(self) -> None:
        check_group_size(self.group_size)
        self._adaptivity()
        if not isinstance(getattr(self, "rebalance", False), (bool, np.bool_)):
            raise ValueError(f"rebalance must be True or False, got {self.rebalance!r}")
        parse_checkpoint_every(getattr(self, "checkpoint_every", 1))
        if self.scheduling not in SCHEDULING:
            raise ValueError(f"scheduling must be one of {SCHEDULING}, got {self.scheduling!r}")
        if self.n_workers is not None and (
            isinstance(self.n_workers, bool) or not isinstance(self.n_workers, (int, np.integer)) or self.n_workers < 1
        ):
            raise ValueError(f"n_workers must be None or a positive integer, got {self.n_workers!r}")

    def _require_y(self, y: Any) -> None:
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")

    def _check_hdf5(self, dataset: HDF5Dataset, y: Any, sample_weight: Any, needs_targets: bool) -> HDF5Dataset:
        """Checks for a fit on an :class:`HDF5Dataset`, whose rows only the workers read.

        The targets come from the file (``y_key``), so ``y`` must be None;
        per-row weights are not read from files yet.
        """
        name = type(self).__name__
        if y is not None:
            raise ValueError(f"{name}.fit: y comes from the HDF5 dataset's y_key; pass y=None")
        if sample_weight is not None:
            raise ValueError(f"{name}.fit: sample_weight is not supported with an HDF5Dataset")
        if needs_targets and dataset.y_key is None:
            raise ValueError(f"{name} needs targets: {dataset.path} was opened with y_key=None")
        if dataset.n_rows < 1:
            raise ValueError(f"{dataset.path}: {dataset.x_key!r} has 0 samples; at least 1 is required")
        self.n_features_in_ = dataset.n_features
        return dataset

    def _run(self, program: Any, model: dict, dataset: ArrayDataset | HDF5Dataset, max_iter: int,
             warn_not_converged: bool = True):
        """Run ``program`` from ``model`` on ``dataset``; set the engine attributes; return the JobResult.

        With ``checkpoint_dir``, committed versions are also written there
        (``job-<k>`` for the k-th job of this fit), and a fit with
        ``resume=True`` continues each job from its newest valid checkpoint.
        A worker that dies in launched mode is replaced: the job continues from
        the version committed at the last group boundary (at most one group is
        redone, and the result is the same bit for bit).
        """
        n_workers = None if self.n_workers is None else int(self.n_workers)
        cluster = get_cluster(n_workers)
        self.__dict__.pop("_online_model_", None)  # a fit starts over; partial_fit then continues from it
        if dataset.n_rows < cluster.n_workers:
            n = dataset.n_rows
            raise ValueError(
                f"{type(self).__name__} got {n} sample{'s' if n != 1 else ''}, fewer than the "
                f"{cluster.n_workers} workers; every worker needs at least one row (n_workers)"
            )
        self.model_store_ = ModelStore()
        on_group = getattr(self, "progress_callback", None) or (self._print_progress if self.verbose else None)
        checkpoints, checkpoint_params = self._checkpoint_store(program, dataset)
        sizer, adaptivity = self._adaptivity()
        version, start = 0, 0
        resumed = checkpoints.latest() if checkpoints is not None and getattr(self, "_resume", False) else None
        if resumed is not None:
            model, version, start = resumed.model, resumed.version, resumed.iteration
            sizer.restore(resumed.tuner)
            if resumed.metrics.get("converged") or start >= max_iter:  # finished: the checkpoint is the result
                result = JobResult(freeze(model), version, 0, bool(resumed.metrics.get("converged")), [], {})
                return self._record(result, start, max_iter, warn_not_converged)
        end = max_iter  # an estimator's job counts its iterations from 0, across resumes
        recoveries = 0
        while True:
            try:
                result = cluster.run(program, model, dataset, max_iter=end - start, version=version,
                                     start_iteration=start, scheduling=self.scheduling, store=self.model_store_,
                                     on_group=on_group, sizer=sizer, checkpoints=checkpoints,
                                     checkpoint_every=getattr(self, "checkpoint_every", 1),
                                     checkpoint_params=checkpoint_params, **adaptivity)
                break
            except (WorkerFailedError, WorkerTimeoutError) as exc:
                if cluster.mode != "launched" or recoveries >= MAX_RECOVERIES:
                    raise
                recoveries += 1
                committed = self.model_store_.latest()
                warnings.warn(
                    f"{type(self).__name__}: {exc}. Restarting the workers and resuming at iteration "
                    f"{committed.iteration} (model version {committed.version}); recovery "
                    f"{recoveries} of at most {MAX_RECOVERIES}",
                    WorkerRecoveredWarning,
                )
                cluster = get_cluster(n_workers)
                model, version, start = dict(committed.model), committed.version, committed.iteration
        return self._record(result, start, max_iter, warn_not_converged)

    def _online_step(self, program: Any, model: dict, dataset: ArrayDataset) -> dict[str, np.ndarray]:
        """One micro-batch: run ``program`` for one iteration from ``model`` on ``dataset``.

        The versions continue those of the estimator's store (a partial_fit
        after fit is the next version of that model). Returns the new model,
        also kept as ``_online_model_`` for the next call.
        """
        self._check_engine_params()
        cluster = get_cluster(None if self.n_workers is None else int(self.n_workers))
        store = getattr(self, "model_store_", None)
        store = ModelStore() if store is None else store  # (an empty store is falsy)
        version = int(getattr(self, "model_version_", 0))
        result = cluster.run(program, model, dataset, max_iter=1, version=version, start_iteration=version,
                             group_size=1, scheduling="group", store=store, allow_empty=True)
        continuing = getattr(self, "_online_model_", None) is not None
        self.model_store_, self.model_version_ = store, result.version
        self.n_iter_ = self.n_iter_ + 1 if continuing else 1  # micro-batches since the online run began
        self.history_ = getattr(self, "history_", [])
        self._online_model_ = {k: np.array(v) for k, v in result.model.items()}
        return self._online_model_

    def at_version(self, version: int | None = None, durable: bool = False):
        """A copy of this estimator holding model ``version`` of ``model_store_``.

        Default: the newest visible version (``durable=True``: the newest one
        committed at a group boundary). Reading never blocks training: while
        a stream trains in another thread, ``est.at_version().predict(X)``
        answers from the newest version. The copy's ``model_version_`` says
        which version it is. Works for versions made by ``partial_fit`` and
        streams (their models hold the online state).
        """
        import copy

        store = getattr(self, "model_store_", None)
        if store is None:
            raise ValueError(f"this {type(self).__name__} has no model versions yet")
        entry = store.latest(durable) if version is None else store.get(version)
        clone = copy.copy(self)
        try:
            clone._stream_finish(dict(entry.model))
        except KeyError:
            raise ValueError(f"model version {entry.version} was made by fit, not by partial_fit or a "
                             "stream; use the estimator itself") from None
        clone.model_version_ = entry.version
        return clone
    def _adaptivity(self) -> tuple[GroupSizer, dict[str, Any]]:
        """The group sizer and the run_job keywords of the ``tuner`` and ``rebalance`` parameters (checked)."""
        options = tuner_options(getattr(self, "tuner", None), SIZER_KEYS + STRAGGLER_KEYS)
        stragglers = {k: options.pop(k) for k in STRAGGLER_KEYS if k in options}
        check_straggler_options(stragglers.get("straggler_factor", 1.5), stragglers.get("straggler_groups", 3))
        sizer = GroupSizer(self.group_size, **options)
        return sizer, {"rebalance": bool(getattr(self, "rebalance", False)), **stragglers}

    def _record(self, result, start: int, max_iter: int, warn_not_converged: bool):
        # The job's iterations: those before a resume or a recovery count too.
        self.n_iter_ = start + result.n_iter
        self.model_version_ = result.version
        self.history_ = [g.as_dict() for g in result.history]
        if warn_not_converged and not result.converged:
            warnings.warn(
                f"{type(self).__name__} did not converge in max_iter={max_iter} iterations; "
                "increase max_iter or relax tol",
                ConvergenceWarning,
            )
        return result

    def _checkpoint_store(self, program: Any, dataset: Any) -> tuple[CheckpointStore | None, dict]:
        """This job's checkpoint store, keyed by estimator, parameters, program and data; and its parameters."""
        directory = getattr(self, "checkpoint_dir", None)
        job = getattr(self, "_fit_jobs", 0)
        self._fit_jobs = job + 1
        if directory is None:
            return None, {}
        if getattr(dataset, "speculative", False):
            dataset.confirm()  # checkpoints are keyed by the data's content
        engine = {"n_workers", "group_size", "scheduling", "verbose", "max_iter", "checkpoint_dir",
                  "checkpoint_every", "tuner", "rebalance"}
        params = {k: (v if isinstance(v, (int, float, str, bool, type(None), np.ndarray)) else repr(v))
                  for k, v in self.get_params().items() if k not in engine}
        key = job_key_for(f"{type(self).__name__}.{type(program).__name__}.{job}",
                          {"params": params, "data": dataset.dataset_id})
        # One write in flight at most: a group boundary waits for the previous
        # group's checkpoint (written while this group ran), so a failure never
        # loses more than the last group's checkpoint.
        store = CheckpointStore(os.path.join(os.fspath(directory), f"job-{job}"), job_key=key, max_pending=1)
        described = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in params.items()}
        return store, {"estimator": type(self).__name__, "program": type(program).__name__, "job": job,
                       "params": described, "data": dataset.dataset_id}

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


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer >= ``minimum``, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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
