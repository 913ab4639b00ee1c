"""One durable job runner: a job's state, committed at group boundaries, resumed, carried across worker failures.

:class:`~drizzle_ml.job_state.JobState` is everything a job needs to
continue from a group boundary: the model (optimizer state included), its
version and iteration, the group sizer's state and, for a stream, every
partition's offset. The group loop commits it at each group boundary; some
commits are also written to the job's checkpoint directory, and
:meth:`JobState.restore` rebuilds it from a checkpoint (as Horovod elastic's
``State`` carries commit and restore).

:func:`run_durable` runs one :class:`DurableJob` (a fit's job, each job of a
multi-job fit, a stream) with all of fault tolerance in one place: it opens
the job's checkpoint directory (:func:`~drizzle_ml.checkpoint.open_job_store`),
resumes from it, runs the job, and in launched mode replaces dead workers
and continues from the last commit (a stream from its committed offsets, so
every record still counts once).

This is an engine module: it imports nothing from ``drizzle_ml.algorithms``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .adaptivity import STRAGGLER_KEYS, check_straggler_options
from .checkpoint import closing_store, job_key_for, open_job_store
from .cluster import get_cluster
from .errors import WorkerFailedError, WorkerRecoveredWarning
from .job_state import JobState, parse_checkpoint_every
from .metrics import JobResult
from .scheduler import SCHEDULING, run_job
from .sharding import SHARDING
from .store import ModelStore, freeze
from .streams import StreamSpec
from .tuner import SIZER_KEYS, TunerSettings, tuner_options

# What an estimator needs besides run_durable, so that it imports this module (and data) only.
__all__ = ["MAX_RECOVERIES", "SCHEDULING", "SHARDING", "UNBOUNDED", "DurableJob", "JobState", "job_key_for",
           "parse_checkpoint_every", "run_durable", "tuner_settings"]

MAX_RECOVERIES = 3  # worker replacements per job, in launched mode
UNBOUNDED = 1 << 40  # a stream's iteration budget when it runs until its source ends


@dataclass
class DurableJob:
    """What :func:`run_durable` runs.

    ``end`` is the iteration the job stops at, counted from the job's start
    across resumes (a stream: ``UNBOUNDED``, or its budget of micro-batches
    counted from where it starts). ``checkpoint_dir`` with ``job_key`` (see
    :func:`~drizzle_ml.checkpoint.job_key_for`) and ``index`` (the job's
    place in its fit) makes it durable; ``resume`` continues from its newest
    checkpoint. ``stream`` is ``(source, record_format, batching)`` for a
    stream job (``dataset`` is then None). ``run_options`` go to
    :meth:`~drizzle_ml.cluster.Cluster.run` as they are (``scheduling``,
    ``on_group``, ``stop``, straggler options...).
    """

    name: str
    program: Any
    state: JobState
    end: int
    n_workers: int | None = None
    dataset: Any = None
    stream: tuple[Any, Any, Any] | None = None
    tuner: TunerSettings = field(default_factory=TunerSettings)
    store: ModelStore = field(default_factory=ModelStore)
    checkpoint_dir: Any = None
    job_key: str | None = None
    index: int = 0
    checkpoint_every: int | str = 1
    checkpoint_params: dict = field(default_factory=dict)
    resume: bool = False
    run_options: dict[str, Any] = field(default_factory=dict)
    on_resumed: Callable[[JobState], None] | None = None


def tuner_settings(group_size: int | str, tuner: dict | None, rebalance: bool) -> tuple[TunerSettings, dict[str, Any]]:
    """The tuner's settings, and the run options, of an estimator's ``group_size``, ``tuner`` and ``rebalance``
    (checked)."""
    options = tuner_options(tuner, SIZER_KEYS + STRAGGLER_KEYS)
    stragglers = {k: options.pop(k) for k in STRAGGLER_KEYS if k in options}
    check_straggler_options(stragglers.get("straggler_factor", 1.5), stragglers.get("straggler_groups", 3))
    settings = TunerSettings("auto" if group_size == "auto" else int(group_size), **options)
    return settings, {"rebalance": bool(rebalance), **stragglers}


def run_durable(job: DurableJob) -> tuple[JobResult, int]:
    """Run ``job`` to its end; return its result and the iteration its last run started at.

    A job resumed from a checkpoint that says it converged, or that reached
    ``end``, is not run again: the checkpoint is the result. Worker failures
    in launched mode are recovered up to :data:`MAX_RECOVERIES` times per
    job, each with a :class:`~drizzle_ml.errors.WorkerRecoveredWarning`.
    """
    checkpoints = None
    if job.checkpoint_dir is not None:
        checkpoints, resumed = open_job_store(job.checkpoint_dir, job.index, job.job_key, resume=job.resume)
        if resumed is not None:
            job.state = state = JobState.restore(resumed)
            if job.on_resumed is not None:
                job.on_resumed(state)
            if job.stream is None and (state.converged or state.iteration >= job.end):
                checkpoints.close(timeout=60.0)
                result = JobResult(freeze(dict(state.model)), state.version, 0, state.converged, [], {})
                return result, state.iteration
    with closing_store(checkpoints):  # the job's checkpoint directory is released at the end
        return _run_recovering(job, checkpoints)


def _run_recovering(job: DurableJob, checkpoints: Any) -> tuple[JobResult, int]:
    state = job.state
    params = dict(job.checkpoint_params)
    recoveries = 0
    while True:
        cluster = get_cluster(job.n_workers)
        rows = getattr(job.dataset, "n_rows", None)
        if rows is not None and rows < cluster.n_workers:
            raise ValueError(
                f"{job.name} got {rows} sample{'s' if rows != 1 else ''}, fewer than the {cluster.n_workers} "
                "workers; every worker needs at least one row (n_workers)")
        start = state.iteration
        options = dict(job.run_options)
        if job.stream is not None:
            source, record_format, batching = job.stream
            state.n_partitions = state.n_partitions or cluster.n_workers
            options["stream"] = StreamSpec(source, record_format, batching, state.n_partitions, dict(state.offsets))
            params["n_partitions"] = state.n_partitions
        options.update(max_iter=job.end - start, version=state.version, start_iteration=start, store=job.store,
                       tuner=job.tuner, checkpoints=checkpoints, checkpoint_every=job.checkpoint_every,
                       checkpoint_params=params, state=state)
        try:
            if job.stream is not None:  # the workers cut micro-batches from the source: no dataset to load
                result = run_job(cluster, job.program, dict(state.model), "", **options)
            else:
                result = cluster.run(job.program, dict(state.model), job.dataset, **options)
            return result, start
        except WorkerFailedError as exc:  # (a timeout too)
            if cluster.mode != "launched" or recoveries >= MAX_RECOVERIES:
                raise
            recoveries += 1
            warnings.warn(
                f"{job.name}: {exc}. Restarting the workers and resuming at iteration {state.iteration} "
                f"(model version {state.version}); recovery {recoveries} of at most {MAX_RECOVERIES}",
                WorkerRecoveredWarning, stacklevel=2,
            )
