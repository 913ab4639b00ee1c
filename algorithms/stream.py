"""Online learning from a stream: an estimator's online program, run over micro-batches.

``stream_fit(estimator, source)`` runs the estimator's online program (the
one ``partial_fit`` uses) as a stream job: the workers read their partitions
of the source, every micro-batch is one iteration, each new model version is
visible in ``estimator.model_store_`` as soon as it is made, and with
``checkpoint_dir`` every group boundary writes the model together with every
partition's offset, so ``resume=True`` continues with each record in the
model exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from drizzle_ml.checkpoint import job_key_for
from drizzle_ml.cluster import get_cluster
from drizzle_ml.durable import UNBOUNDED, DurableJob, JobState, run_durable
from drizzle_ml.store import ModelStore
from drizzle_ml.streams import Batching, ParquetSource, RecordFormat, Source, peek_n_features
from drizzle_ml.streams.job import latency_percentiles

from .online_learning import OnlineLearner


def stream_fit(estimator: Any, source: Source, *, n_features: int | None = None, classes: Any = None,
               record_format: str = "csv", max_batch: int = 10_000, batch_interval: float | None = 0.01,
               idle_timeout: float | None = None, on_error: str = "skip", max_batches: int | None = None,
               checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int | str = 1,
               resume: bool = False, stop: Callable[[], bool] | None = None,
               on_group: Callable[[Any], None] | None = None, hash_features: int | None = None) -> Any:
    """Train ``estimator`` online from ``source`` until it ends, ``stop()`` or ``max_batches``.

    Parameters
    ----------
    estimator : LogisticRegression, LinearRegression, Ridge, PCA or KMeans
        Its engine parameters apply (``n_workers``, ``group_size``); it
        continues from a previous ``partial_fit``/stream, or a ``fit``.
    source : a :class:`~drizzle_ml.streams.Source`
        ``FileSource``, ``DirectorySource``, ``ParquetSource``, ``TCPSource``, ``HDF5Source``,
        ``IterableSource`` (see :func:`~drizzle_ml.streams.parse_source`).
    n_features : int or None
        Features per record (the target comes after them); None reads the
        first record (not possible for TCP). A ``ParquetSource`` counts its
        feature columns.
    classes : array-like
        LogisticRegression: every label the stream will have; others are
        malformed records.
    record_format : "csv", "json", or "libsvm" / "tokens" with ``hash_features``
    hash_features : LIBSVM or token lines are hashed into ``2**hash_features``
        columns by the worker that reads them, as
        :class:`~drizzle_ml.FeatureHasher` does (see
        :class:`~drizzle_ml.hashing.LineHasher`); ``n_features`` is then
        ``2**hash_features``.
    max_batch, batch_interval, idle_timeout : micro-batch cutting, see
        :class:`~drizzle_ml.streams.Batching`. ``batch_interval=None`` cuts
        by size only, which makes the model independent of timing.
    on_error : "skip" (count malformed records) or "fail" (stop with an error naming the offset)
    checkpoint_dir, checkpoint_every, resume : checkpoints with the stream's offsets.
    stop : polled at group boundaries; True ends the stream there.
    on_group : called with each group's metrics (records, latency_p50/p99 in seconds,
        unpublished: versions readers never saw...).

    Returns the estimator, fitted with the last version. ``model_store_``
    holds the versions (visible and durable), ``stream_offsets_`` the
    offsets reached, ``records_seen_`` and ``malformed_`` the counts,
    ``stream_stats_`` the records, wall time, latencies and ``unpublished``:
    versions the driver never made visible because it fell behind the
    workers' sends (training never waits for it; readers got a newer version).
    A stream runs as long as its source lasts, so ``history_`` keeps its
    newest 10,000 groups and ``stream_stats_["latencies"]`` its newest
    100,000 versions (``drizzle_ml.metrics.STREAM_KEEP``); the counts and the
    wall time cover the whole stream.
    """
    has_target = _has_target(estimator, classes)
    fmt = RecordFormat(record_format, n_features, has_target,
                       None if classes is None else np.unique(np.asarray(classes, dtype=np.float64)), on_error,
                       hash_features)
    n_features = fmt.n_features
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, (int, np.integer))
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive integer or None, got {max_batches!r}")
    batching = Batching(max_batch, batch_interval, idle_timeout)
    if batch_interval is None and idle_timeout is None and getattr(source, "follow", False):
        raise ValueError("a followed source cut by size only (batch_interval=None) needs idle_timeout: "
                         "otherwise a quiet source would leave a micro-batch waiting forever")
    if isinstance(source, ParquetSource):  # its columns are fixed here, once, for every worker
        source = source.resolved(has_target)
        if n_features is not None and n_features != len(source.features):
            raise ValueError(f"n_features={n_features}, but {len(source.features)} feature columns are chosen "
                             f"({', '.join(source.features)})")
        n_features = len(source.features)
    if n_features is None:
        n_features = peek_n_features(source, fmt)
    fmt.n_features = int(n_features)
    program, model = estimator.online_setup(int(n_features), fmt.classes)
    estimator.n_features_in_ = int(n_features)  # readers predict from versions while it trains
    cluster = get_cluster(None if estimator.n_workers is None else int(estimator.n_workers))
    if batch_interval is None and idle_timeout is not None and idle_timeout >= cluster.timeout:
        # Size-only batches wait for records up to idle_timeout, and a worker waiting longer than
        # the cluster's timeout is taken for hung.
        raise ValueError(f"idle_timeout={idle_timeout:g} s with batch_interval=None must be shorter than "
                         f"the cluster's timeout ({cluster.timeout:g} s, DRIZZLE_TIMEOUT)")
    store = getattr(estimator, "model_store_", None)
    store = ModelStore() if store is None else store  # (an empty store is falsy)
    version = int(getattr(estimator, "model_version_", 0))
    tuner, _ = estimator._adaptivity()  # the estimator's group size and tuner options
    job = DurableJob(type(estimator).__name__, program, JobState(model, version, version), UNBOUNDED,
                     n_workers=cluster.n_workers, stream=(source, fmt, batching), tuner=tuner, store=store,
                     run_options={"on_group": on_group, "stop": stop,
                                  "sharding": estimator.online_sharding(program)})

    def on_resumed(state: Any) -> None:
        upgrade = getattr(program, "upgrade", None)  # a checkpoint of an older layout of the online state
        if upgrade is not None:
            state.model = upgrade(state.model)
        if max_batches:
            job.end = state.iteration + max_batches

    job.on_resumed = on_resumed
    if max_batches:  # counted from where the stream starts (or resumes)
        job.end = version + max_batches
    if checkpoint_dir is not None:
        params = {"estimator": type(estimator).__name__, "source": source.describe(),
                  "n_features": int(n_features), "format": record_format, "hash_features": hash_features,
                  "classes": None if fmt.classes is None else fmt.classes.tolist()}
        if isinstance(source, ParquetSource):  # other columns are another stream
            params["columns"] = [*source.features, source.target]
        job.job_key = job_key_for(f"stream.{type(estimator).__name__}", params)
        job.checkpoint_dir, job.checkpoint_every, job.checkpoint_params, job.resume = (
            checkpoint_dir, checkpoint_every, params, resume)
    elif resume:
        raise ValueError("resume=True needs checkpoint_dir")
    result, start = run_durable(job)
    estimator.model_store_, estimator.model_version_ = store, result.version
    estimator.n_iter_ = start + result.n_iter
    estimator.history_ = [g.as_dict() | {"reduction": result.reduction} for g in result.history]
    estimator.stream_offsets_ = result.offsets
    estimator.records_seen_ = int(result.model["stream_records"][0])
    totals = result.totals or {}  # over every group; history_ and the latencies keep the newest
    estimator.malformed_ = int(totals.get("malformed", 0))
    estimator.stream_stats_ = {"records": int(totals.get("records", 0)), "wall": result.summary()["wall"],
                               "latencies": result.latencies, **latency_percentiles(result.latencies),
                               "unpublished": int(totals.get("unpublished", 0))}
    estimator._online_model_ = {k: np.array(v) for k, v in result.model.items()}
    estimator.online_finish(estimator._online_model_)
    return estimator


def _has_target(estimator: Any, classes: Any) -> bool:
    """Whether records end with a target for ``estimator`` (TypeError if it cannot learn online)."""
    name = type(estimator).__name__
    if not isinstance(estimator, OnlineLearner):
        raise TypeError(f"{name} cannot learn from a stream (it is no drizzle_ml.algorithms.OnlineLearner)")
    if estimator.needs_classes and classes is None:
        raise ValueError(f"a streaming {name} needs classes: every label the stream will have")
    return estimator.learns_from_targets
