"""The driver's side of a job: :func:`run_job`, group scheduling or the BSP baseline it replaces.

Group mode (the default) runs the job in groups of k iterations through
:class:`~drizzle_ml.group_loop.GroupLoop`: one control message per worker
per group, the next group sent ahead.

BSP mode (``scheduling="bsp"``) is the centralized pattern: every iteration
the driver sends each worker its task with the model, gathers the partials,
combines them and updates. It uses preallocated buffers and the same waits,
so comparisons measure the pattern rather than overheads of our making.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from mpi4py import MPI

from . import protocol as P
from . import sharding as sharding_
from .adaptivity import Adaptivity
from .checkpoint import CheckpointStore
from .group_loop import GroupHooks, GroupLoop, GroupPlan, confirm_data
from .job_state import Commits
from .layout import Layout
from .metrics import GroupMetrics, JobResult
from .store import ModelStore, freeze
from .streams.job import RECORDS_KEY, Publications, PublishingHooks, StreamStep
from .tuner import GroupSizer, TunerSettings

if TYPE_CHECKING:
    from .cluster import Cluster
    from .job_state import JobState

SCHEDULING = ("group", "bsp")


def run_job(
    cluster: Cluster,
    program: Any,
    model: dict,
    dataset_id: str,
    *,
    max_iter: int,
    group_size: int | str = "auto",
    scheduling: str = "group",
    version: int = 0,
    start_iteration: int = 0,
    store: ModelStore | None = None,
    on_group: Callable[[GroupMetrics], None] | None = None,
    pipeline: bool = True,
    tuner: TunerSettings | None = None,
    checkpoints: CheckpointStore | None = None,
    checkpoint_every: int | str = 1,
    checkpoint_params: dict | None = None,
    stream: Any = None,
    publish: bool | None = None,
    stop: Callable[[], bool] | None = None,
    react_within: float | None = None,
    rebalance: bool = False,
    straggler_factor: float = 1.5,
    straggler_groups: int = 3,
    confirm: Callable[[], bool] | None = None,
    state: JobState | None = None,
    sharding: str = "auto",
) -> JobResult:
    """Run ``program`` for at most ``max_iter`` iterations from ``model`` (at ``version``).

    The model is committed to ``store`` at every group boundary (every
    iteration in BSP mode). With ``checkpoints``, every ``checkpoint_every``-th
    commit (and the last) is also written there, in the background while the
    next group runs: the full model with optimizer state, the iteration, the
    tuner's state and ``checkpoint_params`` (the job's parameters, JSON).
    ``checkpoint_every`` may also be an interval in seconds (``"30s"``).
    ``on_group`` is called with each group's metrics.

    With ``stream`` (a :class:`~drizzle_ml.streams.StreamSpec`) every
    iteration is a micro-batch the workers cut from their partitions of the
    source (``dataset_id`` is unused); checkpoints then hold every
    partition's offset with the model, and the job ends when the source is
    finished or idle, after ``max_iter`` micro-batches, or at the first group
    boundary after ``stop()`` returns True. ``publish`` (default: on for
    streams) makes each version visible in ``store`` as soon as the root has
    made it, before its group ends.
    The tuned group size keeps a group within ``react_within`` seconds (a
    stream's batch interval) and the checkpoint interval in seconds. A worker
    ``straggler_factor`` times slower than the others' median in
    ``straggler_groups`` consecutive groups is reported with a
    :class:`~drizzle_ml.errors.StragglerWarning`; ``rebalance`` then moves some
    of its rows to its neighbours (see :mod:`drizzle_ml.adaptivity`).
    ``confirm`` checks a speculative dataset id (see
    :class:`~drizzle_ml.data.ArrayDataset`) before the first group's results
    count (in BSP mode, before the job starts); when it answers False the job
    is aborted and :class:`~drizzle_ml.data.ContentChanged` raised.
    ``tuner`` (:class:`~drizzle_ml.tuner.TunerSettings`, instead of
    ``group_size``) configures the group-size tuner for the job.
    ``sharding`` (``"auto"``, ``"replicated"``, ``"sharded"``) says whether
    a program that declares sharded keys runs with its coordinates split
    across the workers (see :mod:`drizzle_ml.sharding`); ``JobResult.reduction``
    says what was chosen (``scatter+sharded``).
    ``state`` (a :class:`~drizzle_ml.job_state.JobState`) is committed at every
    group boundary: what a recovery continues from; its ``tuner`` state, if
    any, is where the group-size tuner starts.
    Raises :class:`~drizzle_ml.errors.WorkerError` when program code fails on
    a worker, :class:`~drizzle_ml.errors.WorkerFailedError` when a worker dies
    or hangs.
    """
    if scheduling not in SCHEDULING:
        raise ValueError(f"scheduling must be one of {SCHEDULING}, got {scheduling!r}")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not isinstance(model, dict) or not model:
        raise ValueError("model must be a non-empty dict of arrays")
    if tuner is not None and group_size != "auto":
        raise ValueError("give group_size or tuner settings, not both")
    if scheduling == "bsp":
        confirm_data(confirm)  # BSP commits every iteration: confirm before the job starts
    store = store if store is not None else ModelStore()
    publish = stream is not None if publish is None else bool(publish)
    if stream is not None and scheduling != "group":
        raise ValueError("a stream job runs with scheduling='group'")
    # A publishing job may be sharded too: every worker then publishes its shard of each version
    # (see drizzle_ml.streams.job.Publications).
    shard_keys = sharding_.choose(
        program, model, sharding, cluster.n_workers,
        possible=(scheduling == "group" and cluster.replicated_updates and cluster.reduction != "tree"))
    if stream is not None:
        program = StreamStep(program, cluster.n_workers, sharded=bool(shard_keys))
        model = {**model, RECORDS_KEY: np.asarray(model.get(RECORDS_KEY, np.zeros(1)), dtype=np.float64)}
    commits = Commits(state, checkpoints, checkpoint_every, checkpoint_params)
    settings = (tuner or TunerSettings(group_size)).for_job(
        streaming=stream is not None, react_within=react_within, checkpoint_seconds=commits.seconds)
    sizer = GroupSizer(settings, state=state.tuner if state is not None else None)
    try:
        newest = store.latest().version
    except LookupError:
        newest = None
    if newest is None or newest < version:
        store.commit(version, model, start_iteration)
    with cluster.one_job_at_a_time():  # threads sharing a cluster take turns, job by job
        job = cluster.new_job()
        adapt = Adaptivity(cluster, job, sizer, rebalance, straggler_factor, straggler_groups)
        model = {k: np.asarray(v) for k, v in model.items()}
        t_job = time.perf_counter()
        start = P.StartJob(job, MPI.pickle.dumps(program), dataset_id, P.compact(model), version, cluster.fanout,
                           scheduling,
                           cluster.timeout, stream, publish, replicate=cluster.replicated_updates,
                           reduction=cluster.reduction)
        if shard_keys:
            _start_sharded(cluster, start, shard_keys, program)
        else:
            cluster.broadcast(start)
        hooks = (PublishingHooks(Publications(cluster.ctrl, job, model, store, shard_keys=shard_keys,
                                              spans=sharding_.bounds(sharding_.n_coordinates(model, shard_keys),
                                                                     cluster.n_workers) if shard_keys else None,
                                              version=version))
                 if publish else GroupHooks())
        try:
            if scheduling == "bsp":
                result = _run_bsp(cluster, job, program, model, version, start_iteration, max_iter, store,
                                  on_group, commits, sizer)
            else:
                plan = GroupPlan(start_iteration, version, max_iter, pipeline=pipeline, urgent=hooks.urgent,
                                 max_sleep=cluster.policy.max_sleep, now=t_job)
                result = GroupLoop(cluster, job, plan, sizer, adapt, commits, store, hooks, on_group=on_group,
                                   stop=stop, confirm=confirm, bounded=stream is not None).run()
                cluster.end_job(job)
            commits.finish()
        except BaseException as exc:
            # Driver-side failures (update in BSP mode, a callback, Ctrl-C): stop the job everywhere.
            cluster.abort_job(job, f"{type(exc).__name__}: {exc}")
            commits.finish(raise_errors=False)
            raise
        result.wall = time.perf_counter() - t_job
        return result


def _start_sharded(cluster: Cluster, start: P.StartJob, keys: tuple[str, ...], program: Any) -> None:
    """Each worker's StartJob with its shard of the sharded keys (and, whole, the keys ``local`` reads)."""
    model = start.model  # compacted: all-zero arrays travel as their shape
    n = sharding_.n_coordinates(model, keys)
    spans = sharding_.bounds(n, cluster.n_workers)
    counts = tuple(hi - lo for lo, hi in spans)
    shared = tuple(model) if program.shared is None else tuple(program.shared)
    gathered = {k: model[k] for k in keys if k in shared}
    for worker, (lo, hi) in enumerate(spans):
        shard = sharding_.Shard(keys, lo, hi, n, counts, gathered)
        cluster.broadcast(replace(start, model=sharding_.split(model, keys, lo, hi), shard=shard), [worker])


def _run_bsp(cluster, job, program, model, version, it0, max_iter, store, on_group, commits, sizer):
    ctrl, n = cluster.ctrl, cluster.n_workers
    model = freeze(model)  # the job's starting version: update must not reuse its arrays either
    shared = program.shared
    keys = tuple(model) if shared is None else tuple(shared)
    down = Layout({k: model[k] for k in keys})
    header = P.HEADER_SLOTS * 8
    task_bufs = [np.empty(header + down.nbytes, dtype=np.uint8) for _ in range(2)]
    task_reqs: list[list[MPI.Request]] = [[], []]
    up: Layout | None = None
    recv_bufs: list[list[np.ndarray]] = []
    history: list[GroupMetrics] = []
    iteration_metrics: dict[str, list[float]] = {}
    converged = False

    def send_task(i: int, stop: bool) -> float:
        t0 = time.perf_counter()
        slot = i % 2
        if task_reqs[slot]:
            cluster._complete(task_reqs[slot], "task delivery")
        buf = task_bufs[slot]
        buf[:header].view(np.float64)[:] = (version, it0 + i, P.FLAG_STOP if stop else 0.0)
        if not stop:
            down.pack({k: model[k] for k in keys}, buf, header)
        tag = P.data_tag(P.BSP_TASK, job, i)
        task_reqs[slot] = [ctrl.Isend([buf, MPI.BYTE], dest=w + 1, tag=tag) for w in range(n)]
        cluster.ring(range(n))
        return time.perf_counter() - t0

    schedule = send_task(0, False)
    for it in range(max_iter):
        t_start = time.perf_counter() - schedule
        tag = P.data_tag(P.BSP_PARTIAL, job, it)
        t_wait = time.perf_counter()
        if up is None:
            firsts: dict[int, Any] = {}

            def first_partials() -> bool:
                for w in range(n):
                    if w not in firsts:
                        msg = ctrl.improbe(source=w + 1, tag=tag)
                        if msg is not None:
                            firsts[w] = msg.recv()
                return len(firsts) == n

            cluster.wait(first_partials, f"partials for iteration {it}", watch_reports=True)
            up = firsts[0][0]
            for w in range(1, n):
                if firsts[w][0] != up:
                    raise ValueError(
                        f"worker {w}'s partial differs in structure from worker 0's: partials "
                        "must have the same structure, shapes and dtypes on every worker")
            recv_bufs = [[up.new_buffer() for _ in range(n)] for _ in range(2)]
            partials = [firsts[w][1] for w in range(n)]
        else:
            bufs = recv_bufs[it % 2]
            reqs = [ctrl.Irecv([bufs[w], MPI.BYTE], source=w + 1, tag=tag) for w in range(n)]
            if not MPI.Request.Testall(reqs):
                cluster.wait(lambda: MPI.Request.Testall(reqs), f"partials for iteration {it}",
                             watch_reports=True)
            partials = [up.unpack(b) for b in bufs]
        t_reduce = time.perf_counter()
        total = partials[0]
        for p in partials[1:]:
            total = program.combine(total, p)
        t_update = time.perf_counter()
        model, step_metrics = program.update(model, total, it0 + it)
        version += 1
        t_done = time.perf_counter()
        for key, value in step_metrics.items():
            iteration_metrics.setdefault(key, []).append(float(value))
        converged = bool(step_metrics.get("converged", False))
        last = converged or it + 1 == max_iter
        schedule = send_task(it + 1, last)
        # The store's read-only views from here on: it keeps this version, so update must not reuse its arrays.
        model = store.commit(version, model, it0 + it + 1, {k: float(v) for k, v in step_metrics.items()}).model
        commits.commit(version, model, it0 + it + 1, sizer.state(), step_metrics, last=last)
        metrics = GroupMetrics(
            group=it, start_iteration=it0 + it, group_size=1, n_iterations=1, version=version,
            wall=time.perf_counter() - t_start, schedule=schedule, wait=t_reduce - t_wait,
            reduce=t_update - t_reduce, update=t_done - t_update,
            metrics={k: float(v) for k, v in step_metrics.items()},
        )
        history.append(metrics)
        if on_group is not None:
            on_group(metrics)
        if last:
            break
    reports = cluster.collect(lambda m: isinstance(m, P.GroupReport) and m.job == job, n,
                              "BSP job reports")
    # Workers time their compute in total; spread it over the iterations.
    compute = max(r.timings.compute for r in reports) / max(len(history), 1)
    for metrics in history:
        metrics.compute = compute
        metrics.execution = compute
        metrics.finish()
    cluster._complete([r for reqs in task_reqs for r in reqs], "task delivery")
    return JobResult(freeze(model), version, len(history), converged, history, iteration_metrics,
                     reduction="bsp")
