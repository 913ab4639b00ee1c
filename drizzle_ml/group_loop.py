"""The driver's group loop: send groups ahead, collect their reports, commit, adapt.

:class:`GroupPlan` holds the loop's decisions and nothing of MPI: which
iterations and version the next group covers, when the driver should sleep
and for how long while a group runs, whether a group is the job's last, and
what a group cost (:func:`group_metrics`, from the workers'
:class:`~drizzle_ml.protocol.GroupTimings`). :class:`GroupLoop` carries them
out with the cluster. What a kind of job adds at group boundaries (a
publishing stream: versions received while waiting, record counts, latency)
comes through a :class:`GroupHooks` object.

Group mode sends one :class:`~drizzle_ml.protocol.RunGroup` per worker per
group of k iterations and hears back once per group; the next group is sent
ahead so that workers never wait on the driver. The driver sleeps through most
of a group (it knows how long the last one took) instead of polling.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import protocol as P
from . import sharding
from .data import ContentChanged
from .errors import ReplicaMismatchError
from .metrics import PHASES, STREAM_KEEP, GroupMetrics, JobResult
from .store import ModelStore, freeze

if TYPE_CHECKING:
    from .adaptivity import Adaptivity
    from .cluster import Cluster
    from .job_state import Commits
    from .tuner import GroupSizer


@dataclass(frozen=True)
class SentGroup:
    """A group the driver sent: its first iteration, size, starting version, and when."""

    start: int
    size: int
    version: int
    sent_at: float
    schedule: float  # seconds the driver spent sending it


@dataclass(frozen=True)
class Wait:
    """How the driver waits for a group's reports (see :meth:`~drizzle_ml.cluster.Cluster.collect`)."""

    began: float  # when the group started running (its sending, or the previous group's end)
    first_sleep: float
    extra: float
    max_sleep: float | None
    bell: bool = False  # sleep until a report rings the driver's doorbell (see waiting.poll)


class GroupPlan:
    """The group loop's decisions: what to send next, how to wait, when the job ends.

    ``urgent`` (a publishing job) keeps the driver's naps short, since
    versions are due at the driver while a group runs.
    """

    def __init__(self, start_iteration: int, version: int, max_iter: int, *, pipeline: bool = True,
                 urgent: bool = False, max_sleep: float = 1e-3, now: float = 0.0):
        self.begin, self.end = start_iteration, start_iteration + max_iter
        self.next_start, self.next_version = start_iteration, version
        self.pipeline, self.urgent, self.policy_max_sleep = pipeline, urgent, max_sleep
        self.in_flight: deque[SentGroup] = deque()
        self.per_iteration = 0.0  # execution seconds per iteration in the last group
        self.measured_groups = 0
        self.last_done = now
        self.workers_free = now  # about when the workers ended the last group (before the driver saw it)

    def next_group(self, size: int) -> tuple[int, int, int]:
        """``(start, size, version)`` of the next group, at most ``size`` iterations; the plan moves on."""
        size = min(size, self.end - self.next_start)
        start, version = self.next_start, self.next_version
        self.next_start += size
        self.next_version += size
        return start, size, version

    def sent(self, group: SentGroup) -> None:
        self.in_flight.append(group)

    def more_to_send(self, stopping: bool = False) -> bool:
        """Whether to send a group now: iterations left, room in the pipeline, no stop asked.

        With ``pipeline`` two groups are in flight: the workers start the next
        one while the driver handles the last one's reports.
        """
        depth = 2 if self.pipeline else 1
        return self.next_start < self.end and len(self.in_flight) < depth and not stopping

    def wait(self, group: SentGroup, now: float, bell: bool = False) -> Wait:
        """How to wait for ``group``: sleep through most of its expected time, then nap briefly.

        With the next group already with the workers, answering a few percent
        of a group late costs nothing, and on a small machine every wake-up of
        the driver takes a core from a worker. ``bell``: every report has
        rung the driver's doorbell so far, so it sleeps until one does
        (at most twice the group's expected time, and 20 ms, between looks).
        """
        # The job's first group runs from the job's start: the workers set the job up
        # from then on, before the group is even sent (see group_metrics).
        began = self.last_done if group.start == self.begin else max(group.sent_at, self.last_done)
        expected = self.per_iteration * group.size
        remaining = expected - (now - began)
        if bell and not self.urgent and expected > 0:
            return Wait(began, 0.0, 4 * expected, min(max(self.policy_max_sleep, 2 * expected), 0.02), bell=True)
        if self.urgent:
            max_sleep: float | None = 1e-3
        elif expected > 0:
            max_sleep = min(max(self.policy_max_sleep, 0.05 * expected), 0.02)
        else:
            max_sleep = None
        return Wait(began, 0.8 * remaining if remaining > 2e-4 else 0.0, 4 * expected, max_sleep)

    def workers_busy(self, now: float) -> bool:
        """Whether the workers will still be running the groups in flight a while from ``now``.

        A group sent then needs no doorbell: the workers look for the next
        group between groups, and find it waiting. The groups in flight run
        back to back from the last one's end (as the workers ended it, which a
        driver busy elsewhere may have seen late); at least half of their expected
        time, and 1 ms, must be left, so that a group that runs faster than
        the last one still finds the message there. Otherwise (nothing in
        flight, no pace known yet, the end near) a worker may be asleep
        when the message comes, and the sender rings. So it does while the
        pace comes from the first group only (its execution holds the wait
        for the slowest worker's set-up), and for a publishing job (its pace
        follows the records' arrival, not the last group's).
        """
        if self.urgent or not self.in_flight or self.measured_groups < 2:
            return False
        expected = self.per_iteration * sum(group.size for group in self.in_flight)
        return self.workers_free + expected - now > max(0.5 * expected, 1e-3)

    def reached_end(self, group: SentGroup, n_done: int, converged: bool) -> bool:
        """The job ends with this group: it converged or ran its last iteration."""
        return converged or group.start + n_done >= self.end

    def is_last(self, group: SentGroup, n_done: int, converged: bool, stopping: bool) -> bool:
        """This group's commit is the job's last (a stop ends the job once no group is in flight)."""
        return self.reached_end(group, n_done, converged) or (stopping and not self.in_flight)

    def measured(self, metrics: GroupMetrics, done_at: float) -> None:
        """Learn the pace from a finished group."""
        self.per_iteration = metrics.execution / max(metrics.n_iterations, 1)
        self.measured_groups += 1
        self.last_done = done_at
        # Time between the slowest worker's end and the driver seeing it counts as coordination.
        self.workers_free = done_at - metrics.coordination

    @property
    def remaining(self) -> int:
        """Iterations not yet sent."""
        return self.end - self.next_start


def check_replicas(reports: list[P.GroupReport], root: P.GroupReport) -> None:
    """Every replicated worker's model digest must equal worker 0's."""
    for report in sorted(reports, key=lambda r: r.worker):
        if report.digest is not None and report.digest != root.digest:
            raise ReplicaMismatchError(
                f"worker {report.worker}'s model replica differs from worker 0's at version {root.version} "
                f"(iteration {root.start + root.n_done}): the workers' updates did not agree; "
                "set DRIZZLE_UPDATE=root to update on one worker and broadcast", report.worker)


def whole_model(reports: list[P.GroupReport], root: P.GroupReport) -> Mapping[str, Any]:
    """The model the group made: the root's, with every worker's shard of a sharded model."""
    if root.shard is None:
        return root.model
    return sharding.assemble(root.model, [r.shard for r in sorted(reports, key=lambda r: r.worker)])


def last_metrics(root: P.GroupReport) -> dict[str, float]:
    """The root's metrics of the group's last iteration (without the arrival stamps of publications)."""
    out = {k: v[-1] for k, v in root.metrics.items() if v}
    for key in ("oldest", "newest"):
        out.pop(key, None)
    return out


def group_metrics(index: int, group: SentGroup, reports: list[P.GroupReport], wait: Wait, waited_from: float,
                  done_at: float, driver_cpu: float, metrics: dict[str, float]) -> GroupMetrics:
    """What the group cost: the driver's times and the slowest worker's, per phase."""
    timings = [r.timings for r in reports]
    root = next(r for r in reports if r.worker == 0)
    # The first group's wall leaves out the job's set-up: the quickest worker's, since any
    # worker still setting up after it holds the others up in the group's first reduction,
    # which their execution counts. So the wall is never shorter than an execution.
    startup = min(t.startup for t in timings)
    return GroupMetrics(
        group=index, start_iteration=group.start, group_size=group.size,
        n_iterations=root.n_done, version=root.version, wall=max(done_at - wait.began - startup, 0.0),
        schedule=group.schedule, wait=done_at - waited_from, compute=max(t.compute for t in timings),
        reduce=max(t.reduce for t in timings), broadcast=max(t.broadcast for t in timings),
        update=max(t.update for t in timings), execution=max(t.execution for t in timings),
        metrics=metrics, driver_cpu=driver_cpu,
    ).finish()


class GroupHooks:
    """What a kind of job adds to the group loop; this base adds nothing.

    ``poll`` (or None) runs while the driver waits for reports;
    :meth:`at_boundary` adds to a group's metrics once its reports are in;
    :meth:`result` adds to the job's :class:`~drizzle_ml.metrics.JobResult`,
    :meth:`totals` to its totals.
    """

    urgent = False  # versions are due at the driver during a group
    poll: Callable[[], Any] | None = None

    def at_boundary(self, root: P.GroupReport, metrics: dict[str, float]) -> None:
        pass

    def result(self) -> dict[str, Any]:
        return {}

    def totals(self) -> dict[str, float]:
        """What this kind of job counted over all its groups (added to the result's totals)."""
        return {}


class GroupLoop:
    """Runs one group-scheduled job from the driver (see the module docstring)."""

    def __init__(self, cluster: Cluster, job: int, plan: GroupPlan, sizer: GroupSizer, adapt: Adaptivity,
                 commits: Commits, store: ModelStore, hooks: GroupHooks | None = None,
                 on_group: Callable[[GroupMetrics], None] | None = None,
                 stop: Callable[[], bool] | None = None, confirm: Callable[[], bool] | None = None,
                 bounded: bool = False):
        self.cluster, self.job, self.plan, self.sizer, self.adapt = cluster, job, plan, sizer, adapt
        self.commits, self.store, self.hooks = commits, store, hooks or GroupHooks()
        self.on_group, self.stop, self.confirm = on_group, stop, confirm
        # A stream's record: the newest groups and iterations, with totals over all (see STREAM_KEEP).
        self.bounded = bounded

    def send(self, size: int) -> None:
        start, size, version = self.plan.next_group(size)
        t0 = time.perf_counter()
        self.cluster.broadcast(P.RunGroup(self.job, start, size, version), ring=not self.plan.workers_busy(t0))
        self.plan.sent(SentGroup(start, size, version, t0, time.perf_counter() - t0))

    def collect(self, group: SentGroup) -> tuple[list[P.GroupReport], Wait, float, float]:
        """The group's reports, how the driver waited, when it began waiting and when they were in."""
        waited_from = time.perf_counter()
        wait = self.plan.wait(group, waited_from, bell=self.cluster.rings_reliable())
        reports = self.cluster.collect(
            lambda m: isinstance(m, P.GroupReport) and m.job == self.job and m.start == group.start,
            self.cluster.n_workers, f"group at iteration {group.start} (size {group.size})",
            first_sleep=wait.first_sleep, extra=wait.extra, max_sleep=wait.max_sleep, bell=wait.bell,
            also=self.hooks.poll,
        )
        return reports, wait, waited_from, time.perf_counter()

    def run(self) -> JobResult:
        with older_objects_frozen(self.hooks.urgent):
            return self._run()

    def _run(self) -> JobResult:
        plan = self.plan
        history: deque[GroupMetrics] = deque(maxlen=STREAM_KEEP["groups"] if self.bounded else None)
        iteration_metrics: dict[str, Any] = {}
        new_column = (lambda: deque(maxlen=STREAM_KEEP["iterations"])) if self.bounded else list
        totals = dict.fromkeys(("groups", *PHASES), 0.0)
        offsets: dict[str, Any] = {}
        job_startup = 0.0
        self.send(self.sizer.size)
        if plan.more_to_send():
            self.send(self.sizer.size)
        cpu_mark = time.process_time()
        while plan.in_flight:
            group = plan.in_flight.popleft()
            reports, wait, waited_from, done_at = self.collect(group)
            if self.confirm is not None:  # a speculative dataset id: before any result counts
                confirm_data(self.confirm)
                self.confirm = None
            root = next(r for r in reports if r.worker == 0)
            check_replicas(reports, root)
            for key, values in root.metrics.items():
                column = iteration_metrics.get(key)
                if column is None:
                    column = iteration_metrics[key] = new_column()
                column.extend(values)
            model, n_done, converged = whole_model(reports, root), root.n_done, root.stopped
            metrics_now = last_metrics(root)
            for r in reports:
                offsets.update(r.offsets or {})
            self.hooks.at_boundary(root, metrics_now)
            stopping = self.stop is not None and self.stop()
            last = plan.is_last(group, n_done, converged, stopping)
            iteration = group.start + n_done
            self.store.commit(root.version, model, iteration, metrics_now)
            self.commits.commit(root.version, model, iteration, self.sizer.state(), metrics_now, last=last,
                                offsets=offsets)
            metrics = group_metrics(int(totals["groups"]), group, reports, wait, waited_from, done_at,
                                    time.process_time() - cpu_mark, metrics_now)
            cpu_mark = time.process_time()
            history.append(metrics)
            totals["groups"] += 1
            for key in PHASES:
                totals[key] += getattr(metrics, key)
            job_startup = max(job_startup, max(r.timings.startup for r in reports))
            plan.measured(metrics, done_at)
            size = self.adapt.after_group(metrics, reports, plan.per_iteration, plan.remaining,
                                          plan.reached_end(group, n_done, converged))
            if self.on_group is not None:
                self.on_group(metrics)
            if last:
                break
            if plan.more_to_send(stopping):
                self.send(size)
        return JobResult(freeze(dict(model)), root.version, iteration - plan.begin, converged, list(history),
                         {k: list(v) for k, v in iteration_metrics.items()}, startup=job_startup, offsets=offsets,
                         reduction=root.reduction, totals={**totals, **self.hooks.totals()}, **self.hooks.result())


@contextmanager
def older_objects_frozen(enabled: bool) -> Iterator[None]:
    """While a publishing job runs, the garbage collector leaves the objects that existed before it alone.

    A full collection scans every object of the process, and the driver's
    modules (numpy, SciPy, scikit-learn) and data make it long enough, in the
    middle of a stream, to be the latency tail of every record waiting to be seen.
    ``gc.freeze`` moves them to a generation collections skip (garbage among
    them waits for the job's end); ``gc.unfreeze`` at the end gives them back.
    """
    if not enabled:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def confirm_data(confirm: Callable[[], bool] | None) -> None:
    """Check a speculative dataset id (see ``ArrayDataset(speculate=True)``); raise if it did not hold."""
    if confirm is not None and not confirm():
        raise ContentChanged("the dataset changed in place since its last fingerprint")
