"""The driver's side of a job: group scheduling, and the BSP baseline it replaces.

Group mode sends one :class:`~drizzle_ml.protocol.RunGroup` per worker per
group of k iterations and hears back once per group; the next group is sent
ahead so that workers never wait on the driver. The driver sleeps through most
of a group (it knows how long the last one took) instead of polling.

BSP mode (``scheduling="bsp"``) is the centralized pattern: every iteration
the driver sends each worker its task with the model, gathers the partials,
combines them and updates. It uses preallocated buffers and the same waits,
so comparisons measure the pattern rather than overheads of our making.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from mpi4py import MPI

from . import protocol as P
from .adaptivity import Adaptivity
from .checkpoint import Checkpoint, CheckpointStore
from .data import ContentChanged
from .errors import ReplicaMismatchError
from .layout import Layout
from .metrics import GroupMetrics, JobResult
from .store import ModelStore, freeze
from .streams.job import RECORDS_KEY, Publications, StreamStep, latency_percentiles
from .tuner import GroupSizer

if TYPE_CHECKING:
    from .cluster import Cluster
    from .durable import JobState

SCHEDULING = ("group", "bsp")
STREAM_GROUP_SECONDS = 1.0
# A tuned stream group lasts at least this long: with only the overhead to go
# by, groups shrank to 1-12 micro-batches, and the driver's work at a group
# boundary, up to a thousand times a second, took CPU the workers needed
# (latency p99 15-19 ms for groups of 1 and auto, 8 ms for 10, side by side
# at 2-3% steal).
STREAM_MIN_GROUP_SECONDS = 0.01


@dataclass
class _Sent:
    start: int
    size: int
    version: int
    sent_at: float
    schedule: float


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
    sizer: GroupSizer | None = None,
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
    ``state`` (a :class:`~drizzle_ml.durable.JobState`) is committed at every
    group boundary: what a recovery continues from.
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
    if scheduling == "bsp":
        _confirm_data(confirm)  # BSP commits every iteration: confirm before the job starts
    sizer = sizer or GroupSizer(group_size)
    store = store if store is not None else ModelStore()
    publish = stream is not None if publish is None else bool(publish)
    if stream is not None:
        if scheduling != "group":
            raise ValueError("a stream job runs with scheduling='group'")
        program = StreamStep(program, cluster.n_workers)
        model = {**model, RECORDS_KEY: np.asarray(model.get(RECORDS_KEY, np.zeros(1)), dtype=np.float64)}
        # A stream's group lasts at most about a second: its checkpoints (offsets)
        # and a stop request come at group boundaries.
        react_within = STREAM_GROUP_SECONDS if react_within is None else min(react_within, STREAM_GROUP_SECONDS)
        if sizer.min_group_seconds is None:
            sizer.min_group_seconds = STREAM_MIN_GROUP_SECONDS
    durable = _Durable(checkpoints, checkpoint_every, sizer, checkpoint_params, state)
    reactions = [t for t in (react_within, durable.seconds) if t is not None]  # issue 7: the tuner's time cap
    sizer.react_within = min(reactions) if reactions else sizer.react_within
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
        cluster.broadcast(P.StartJob(job, MPI.pickle.dumps(program), dataset_id, model, version,
                                     cluster.fanout, scheduling, cluster.timeout, stream, publish,
                                     replicate=cluster.replicated_updates, reduction=cluster.reduction))
        publications = Publications(cluster.ctrl, job, model, store) if publish else None
        try:
            if scheduling == "bsp":
                result = _run_bsp(cluster, job, program, model, version, start_iteration, max_iter, store,
                                  on_group, durable)
            else:
                result = _run_groups(cluster, job, model, version, start_iteration, max_iter, store,
                                     on_group, pipeline, sizer, durable, adapt, publications, stop, confirm)
                cluster.end_job(job)
            durable.finish()
        except BaseException as exc:
            # Driver-side failures (update in BSP mode, a callback, Ctrl-C): stop the job everywhere.
            cluster.abort_job(job, f"{type(exc).__name__}: {exc}")
            durable.finish(raise_errors=False)
            raise
        result.wall = time.perf_counter() - t_job
        return result


def _confirm_data(confirm: Callable[[], bool] | None) -> None:
    """Check a speculative dataset id (see ``ArrayDataset(speculate=True)``); raise if it did not hold."""
    if confirm is not None and not confirm():
        raise ContentChanged("the dataset changed in place since its last fingerprint")


def _check_replicas(reports: list, root: Any) -> None:
    """Every replicated worker's model digest must equal worker 0's."""
    for report in sorted(reports, key=lambda r: r.worker):
        if report.digest is not None and report.digest != root.digest:
            raise ReplicaMismatchError(
                f"worker {report.worker}'s model replica differs from worker 0's at version {root.version} "
                f"(iteration {root.start + root.n_done}): the workers' updates did not agree; "
                "set DRIZZLE_UPDATE=root to update on one worker and broadcast", report.worker)


def parse_checkpoint_every(every: int | str) -> tuple[int, float | None]:
    """``checkpoint_every``: an int counts groups (commits); ``"30s"`` is an interval in seconds."""
    if isinstance(every, str) and every.endswith("s"):
        try:
            seconds = float(every[:-1])
        except ValueError:
            seconds = -1.0
        if seconds > 0:
            return 1, seconds
    elif not isinstance(every, bool) and isinstance(every, (int, np.integer)) and every >= 1:
        return int(every), None
    raise ValueError(f"checkpoint_every must be an integer >= 1 (groups) or seconds like '30s', got {every!r}")


class _Durable:
    """Checkpoints of committed model versions: every ``every``-th commit (or once per
    interval of seconds), and always the last one."""

    def __init__(self, checkpoints: CheckpointStore | None, every: int | str, sizer: GroupSizer,
                 params: dict | None = None, state: JobState | None = None):
        self.every, self.seconds = parse_checkpoint_every(every)
        self.checkpoints, self.sizer, self.params, self.state = checkpoints, sizer, params or {}, state
        self.commits = 0
        self.written_at = time.monotonic()

    def commit(self, version: int, model: dict, iteration: int, metrics: dict, last: bool,
               offsets: dict | None = None) -> None:
        if self.state is not None:  # what a recovery continues from
            self.state.commit(version, model, iteration, self.sizer.state(), offsets,
                              bool(metrics.get("converged")))
        if self.checkpoints is None:
            return
        self.commits += 1
        due = (time.monotonic() - self.written_at >= self.seconds if self.seconds is not None
               else self.commits % self.every == 0)
        if last or due:
            self.written_at = time.monotonic()
            self.checkpoints.save_async(Checkpoint(
                job_key=self.checkpoints.job_key, version=version, iteration=iteration, model=model,
                tuner=self.sizer.state(), params=self.params, stream_offsets=dict(offsets or {}),
                metrics={k: float(v) for k, v in metrics.items()} | {"last": float(last)},
            ))

    def finish(self, raise_errors: bool = True) -> None:
        if self.checkpoints is None:
            return
        try:
            self.checkpoints.flush(timeout=60.0)
        except Exception:
            if raise_errors:
                raise


def _run_groups(cluster, job, model, version, it0, max_iter, store, on_group, pipeline, sizer, durable, adapt,
                publications=None, stop=None, confirm=None):
    end = it0 + max_iter
    sent: deque[_Sent] = deque()
    next_start, next_version = it0, version
    history: list[GroupMetrics] = []
    iteration_metrics: dict[str, list[float]] = {}
    per_iteration = 0.0
    converged = False
    job_startup = 0.0
    last_done = time.perf_counter()
    offsets: dict[str, Any] = {}
    latencies: list[tuple[float, float, float]] = []  # every published batch of the job

    def send(size: int) -> None:
        nonlocal next_start, next_version
        size = min(size, end - next_start)
        t0 = time.perf_counter()
        cluster.broadcast(P.RunGroup(job, next_start, size, next_version))
        sent.append(_Sent(next_start, size, next_version, t0, time.perf_counter() - t0))
        next_start += size
        next_version += size

    send(sizer.size)
    if pipeline and next_start < end:
        send(sizer.size)
    cpu_mark = time.process_time()
    while sent:
        group = sent.popleft()
        began = max(group.sent_at, last_done)
        expected = per_iteration * group.size
        remaining = expected - (time.perf_counter() - began)
        t_wait = time.perf_counter()
        reports = cluster.collect(
            lambda m, g=group: isinstance(m, P.GroupReport) and m.job == job and m.start == g.start,
            cluster.n_workers,
            f"group at iteration {group.start} (size {group.size})",
            first_sleep=0.8 * remaining if remaining > 2e-4 else 0.0,
            extra=4 * expected,
            # The next group is already with the workers, so answering a few
            # percent of a group late costs nothing, and on a small machine every
            # wake-up of the driver takes a core from a worker.
            max_sleep=(1e-3 if publications is not None  # a stream's versions are due at the driver now
                       else min(max(cluster.policy.max_sleep, 0.05 * expected), 0.02) if expected > 0 else None),
            also=None if publications is None else publications.drain,
        )
        done_at = time.perf_counter()
        _confirm_data(confirm)  # before any result counts
        confirm = None
        root = next(r for r in reports if r.worker == 0)
        _check_replicas(reports, root)
        for key, values in root.metrics.items():
            iteration_metrics.setdefault(key, []).extend(values)
        model, version = root.model, root.version
        n_done = root.n_done
        converged = root.stopped
        last_metrics = {k: v[-1] for k, v in root.metrics.items() if v}
        for key in ("oldest", "newest"):  # arrival stamps: for the publication only
            last_metrics.pop(key, None)
        for r in reports:
            offsets.update(r.offsets or {})
        if publications is not None:
            publications.drain()
            last_metrics["records"] = float(sum(root.metrics.get("records", ())))
            last_metrics["malformed"] = float(sum(root.metrics.get("malformed", ())))
            batches = publications.take()
            latencies += batches
            last_metrics.update(latency_percentiles(batches))
        stopping = stop is not None and stop()
        last = converged or group.start + n_done >= end or (stopping and not sent)
        store.commit(version, model, group.start + n_done, last_metrics)
        durable.commit(version, model, group.start + n_done, last_metrics, last=last, offsets=offsets)
        slowest = lambda key: max(r.timings.get(key, 0.0) for r in reports)
        startup = slowest("startup")
        job_startup = max(job_startup, startup)
        metrics = GroupMetrics(
            group=len(history), start_iteration=group.start, group_size=group.size,
            n_iterations=n_done, version=version, wall=max(done_at - began - startup, 0.0),
            schedule=group.schedule, wait=done_at - t_wait, compute=slowest("compute"),
            reduce=slowest("reduce"), broadcast=slowest("broadcast"), update=slowest("update"),
            execution=slowest("execution"), metrics=last_metrics,
            driver_cpu=time.process_time() - cpu_mark,
        ).finish()
        cpu_mark = time.process_time()
        history.append(metrics)
        per_iteration = metrics.execution / max(n_done, 1)
        last_done = done_at
        # issue 7: the tuner's decision, stragglers and rebalancing, recorded in the metrics.
        finishing = converged or group.start + n_done >= end
        size = adapt.after_group(metrics, reports, per_iteration, end - next_start, finishing)
        if on_group is not None:
            on_group(metrics)
        if last:
            break
        if next_start < end and (pipeline or not sent) and not stopping:
            send(size)
    return JobResult(freeze(model), version, group.start + n_done - it0, converged, history,
                     iteration_metrics, startup=job_startup, offsets=offsets,
                     latencies=[tuple(b) for b in latencies], reduction=root.reduction)


def _run_bsp(cluster, job, program, model, version, it0, max_iter, store, on_group, durable):
    ctrl, n = cluster.ctrl, cluster.n_workers
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
        store.commit(version, model, it0 + it + 1, {k: float(v) for k, v in step_metrics.items()})
        durable.commit(version, model, it0 + it + 1, step_metrics, last=last)
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
    compute = max(r.timings["compute"] for r in reports) / max(len(history), 1)
    for metrics in history:
        metrics.compute = compute
        metrics.execution = compute
        metrics.finish()
    cluster._complete([r for reqs in task_reqs for r in reqs], "task delivery")
    return JobResult(freeze(model), version, len(history), converged, history, iteration_metrics,
                     reduction="bsp")
