"""The online-learning contract: what ``partial_fit``, streams and served versions need of an estimator.

An estimator that learns online derives from :class:`OnlineLearner` and
declares how: whether a stream's records end with a target, whether every
label must be known before the first record, the program of one micro-batch
step and the model it steps from, and how an online model becomes the
fitted attributes. :func:`~drizzle_ml.algorithms.stream.stream_fit` checks
the contract with ``isinstance``, not by probing private names.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any

import numpy as np

from drizzle_ml.cluster import get_cluster
from drizzle_ml.data import ArrayDataset
from drizzle_ml.program import Program
from drizzle_ml.store import ModelStore

from .base import DrizzleEstimator


class OnlineLearner(DrizzleEstimator, metaclass=ABCMeta):
    """An estimator that also learns one micro-batch at a time (``partial_fit``, streams).

    Class attributes
    ----------------
    learns_from_targets : bool
        A stream's records end with the target (supervised learners).
    needs_classes : bool
        Every label must be given before the first record (``classes``).

    Each micro-batch is one engine iteration and one new model version in
    ``model_store_``; :meth:`at_version` answers from any of them while the
    learning goes on.
    """

    learns_from_targets: bool = False
    needs_classes: bool = False

    @abstractmethod
    def online_setup(self, n_features: int, classes: np.ndarray | None = None) -> tuple[Program, dict]:
        """The program of one micro-batch step and the model to step from.

        The model continues the last online step, else the fitted attributes
        of :meth:`fit`, else starts from scratch. ``classes``: the sorted
        labels (``needs_classes`` learners).
        """

    @abstractmethod
    def online_finish(self, model: dict[str, np.ndarray]) -> None:
        """Set the fitted attributes (``coef_``, ``cluster_centers_``...) from an online model.

        Raises KeyError for a model that :meth:`fit` made (no online state).
        """

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
                             group_size=1, scheduling="group", store=store, allow_empty=True,
                             sharding=self.online_sharding(program))
        continuing = getattr(self, "_online_model_", None) is not None
        self.model_store_, self.model_version_ = store, result.version
        self.n_iter_ = self.n_iter_ + 1 if continuing else 1  # micro-batches since the online run began
        # The last micro-batch's job (one row per call would grow without bound over a long online run).
        self.history_ = [g.as_dict() | {"reduction": result.reduction} for g in result.history]
        self._online_model_ = {k: np.array(v) for k, v in result.model.items()}
        return self._online_model_

    def online_sharding(self, program: Program) -> str:
        """The ``sharding`` of an online job: the estimator's, for a program that can shard its model
        (FTRL); replicated for the others, whatever ``sharding`` says (it also governs fit)."""
        return getattr(self, "sharding", "auto") if getattr(program, "sharded", ()) else "replicated"

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
            clone.online_finish(dict(entry.model))
        except KeyError:
            raise ValueError(f"model version {entry.version} was made by fit, not by partial_fit or a "
                             "stream; use the estimator itself") from None
        clone.model_version_ = entry.version
        return clone
