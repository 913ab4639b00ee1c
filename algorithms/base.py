"""Shared plumbing of the estimators: engine parameters, running a program, history."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning

from drizzle_ml.cluster import get_cluster
from drizzle_ml.data import ArrayDataset
from drizzle_ml.scheduler import SCHEDULING
from drizzle_ml.store import ModelStore
from drizzle_ml.tuner import check_group_size


class DrizzleEstimator(BaseEstimator):
    """Base of the estimators: how a fit reaches the engine.

    Engine parameters shared by every estimator:

    n_workers : int or None
        Worker processes. None: all ranks of an ``mpiexec`` world, otherwise
        one per core.
    group_size : "auto" or int >= 1
        Iterations scheduled per coordination round.
    scheduling : {"group", "bsp"}
        Group scheduling, or the centralized per-iteration baseline.
    verbose : int
        0 silent; 1 a progress line per group on stderr.

    After ``fit``: ``n_iter_``, ``model_version_`` (the committed version of
    the final model) and ``history_`` (one dict of metrics per group).
    """

    def _check_engine_params(self) -> None:
        check_group_size(self.group_size)
        if self.scheduling not in SCHEDULING:
            raise ValueError(f"scheduling must be one of {SCHEDULING}, got {self.scheduling!r}")
        if self.n_workers is not None and (
            isinstance(self.n_workers, bool) or not isinstance(self.n_workers, (int, np.integer)) or self.n_workers < 1
        ):
            raise ValueError(f"n_workers must be None or a positive integer, got {self.n_workers!r}")

    def _run(self, program: Any, model: dict, dataset: ArrayDataset, max_iter: int):
        cluster = get_cluster(None if self.n_workers is None else int(self.n_workers))
        if dataset.n_rows < cluster.n_workers:
            raise ValueError(
                f"{type(self).__name__} got {dataset.n_rows} samples, fewer than the "
                f"{cluster.n_workers} workers; use fewer workers (n_workers)"
            )
        self.model_store_ = ModelStore()
        on_group = self._print_progress if self.verbose else None
        result = cluster.run(
            program,
            model,
            dataset,
            max_iter=max_iter,
            group_size=self.group_size,
            scheduling=self.scheduling,
            store=self.model_store_,
            on_group=on_group,
        )
        self.n_iter_ = result.n_iter
        self.model_version_ = result.version
        self.history_ = [g.as_dict() for g in result.history]
        if not result.converged:
            warnings.warn(
                f"{type(self).__name__} did not converge in max_iter={max_iter} iterations; "
                "increase max_iter or relax tol",
                ConvergenceWarning,
            )
        return result

    @staticmethod
    def _print_progress(g) -> None:
        loss = g.metrics.get("loss")
        loss_s = f" loss {loss:.6g}" if loss is not None else ""
        rate = g.n_iterations / g.wall if g.wall > 0 else float("inf")
        coordination = 100 * g.coordination / g.wall if g.wall > 0 else 0.0
        print(
            f"iter {g.start_iteration + g.n_iterations:>6}{loss_s} group {g.group_size:>4} "
            f"{rate:,.0f} it/s coordination {coordination:4.1f}%",
            file=sys.stderr,
        )
