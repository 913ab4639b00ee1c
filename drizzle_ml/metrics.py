"""Per-group timing and progress metrics, and the job history built from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GroupMetrics:
    """What one group cost, in seconds, and where the time went.

    wall : driver time from the previous group's end (or the job start) to this
        group's last report.
    schedule : driver time building and sending this group's control messages.
    wait : driver time waiting for the reports.
    compute : slowest worker's time inside ``local``.
    reduce : slowest worker's time combining partials and waiting for children.
    broadcast : slowest worker's time waiting for the new model from its parent.
    update : root's time inside ``update``.
    execution : slowest worker's time from group start to its report.
    coordination : ``wall - execution``: time the workers were not running the
        group (scheduling, serialization, driver round-trips).
    driver_cpu : CPU seconds the driver used since the previous group's end
        (collecting, committing, scheduling). Where the driver shares cores
        with its workers, that time was taken from them, and the tuner counts
        it as coordination.
    overhead : non-compute share of the wall time, ``1 - compute / wall``.
    tuner : the group-size tuner's decision after this group (``grow``,
        ``shrink``, ``probe``, ``hold``, ``back``, ``keep``, ``cap``, ``fixed``).
    straggler : index of a worker reported as a straggler in this group, or None.
    rows : each worker's partition size in this group (changes after a rebalance).
    events : what was reported or done at this group's end (straggler, rebalance).
    """

    group: int
    start_iteration: int
    group_size: int
    n_iterations: int
    version: int
    wall: float = 0.0
    schedule: float = 0.0
    wait: float = 0.0
    compute: float = 0.0
    reduce: float = 0.0
    broadcast: float = 0.0
    update: float = 0.0
    execution: float = 0.0
    coordination: float = 0.0
    driver_cpu: float = 0.0
    overhead: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    tuner: str = ""
    straggler: int | None = None
    rows: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def notes(self) -> str:
        """The progress line's tail: the tuner's decision, a straggler, events."""
        parts = [f"tuner {self.tuner}"] if self.tuner and self.tuner != "fixed" else []
        if self.straggler is not None:
            parts.append(f"straggler worker {self.straggler}")
        return "".join(f"  {p}" for p in parts + self.events)

    def finish(self) -> GroupMetrics:
        self.coordination = max(self.wall - self.execution, 0.0)
        self.overhead = 1.0 - self.compute / self.wall if self.wall > 0 else 0.0
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_columns(steps: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-iteration metric dicts as one list of floats per metric, in iteration order.

    A metric missing from some iterations gets a shorter list (its values in order).
    """
    if not steps:
        return {}
    keys = steps[0].keys()
    if all(step.keys() == keys for step in steps):  # the common case: every iteration reports the same
        return {key: [float(step[key]) for step in steps] for key in keys}
    columns: dict[str, list[float]] = {}
    for step in steps:
        for key, value in step.items():
            columns.setdefault(key, []).append(float(value))
    return columns


@dataclass
class JobResult:
    """The outcome of one engine job.

    model : final model dict (read-only arrays).
    version : model version of ``model``.
    n_iter : iterations run.
    converged : True when the program reported convergence.
    history : one :class:`GroupMetrics` per group.
    iteration_metrics : per-iteration metrics from ``update`` (lists of floats).
    wall : driver time for the whole job, in seconds.
    startup : slowest worker's one-time job set-up (unpickling the program,
        which may import its module); the quickest worker's is left out of the
        first group's wall.
    offsets : stream jobs: every partition's offset after the last micro-batch.
    latencies : stream jobs: per published version ``(records, latency of its
        oldest record, of its newest)`` in seconds (see :mod:`drizzle_ml.streams.job`).
    totals : sums over every group of the job: the phases ``summary`` adds up,
        ``groups``, and for a stream ``records``, ``malformed`` and
        ``unpublished``. A stream runs for as long as its source lasts, so its
        ``history``, ``iteration_metrics`` and ``latencies`` keep only the newest
        groups, iterations and versions (see :data:`STREAM_KEEP`); these
        totals count them all. None where ``history`` holds every group.
    reduction : how the partials were combined: ``"gather"`` or ``"allreduce"``
        (MPI collectives, see :mod:`drizzle_ml.collectives`), ``"tree"``, or
        ``"bsp"`` (the driver); with ``"+replicated"`` when every worker
        applied the update, ``"+broadcast"`` when the root did.
    """

    model: dict
    version: int
    n_iter: int
    converged: bool
    history: list[GroupMetrics]
    iteration_metrics: dict[str, list[float]]
    wall: float = 0.0
    startup: float = 0.0
    offsets: dict[str, Any] = field(default_factory=dict)
    latencies: list[tuple[float, float, float]] = field(default_factory=list)
    reduction: str = ""
    totals: dict[str, float] | None = None

    def summary(self) -> dict[str, float]:
        """Totals over the job: time per phase and the overall overhead share."""
        if self.totals is not None:
            totals = {k: self.totals[k] for k in PHASES}
            n_groups = int(self.totals["groups"])
        else:
            totals = {k: sum(getattr(g, k) for g in self.history) for k in PHASES}
            n_groups = len(self.history)
        totals["overhead"] = 1.0 - totals["compute"] / totals["wall"] if totals["wall"] > 0 else 0.0
        totals["n_iter"] = self.n_iter
        totals["n_groups"] = n_groups
        return totals


#: The per-group times a job's summary adds up.
PHASES = ("wall", "schedule", "wait", "compute", "reduce", "broadcast", "update", "coordination")

#: How much of a stream's record the driver keeps: the newest groups (``history``),
#: iterations (each of ``iteration_metrics``) and published versions (``latencies``).
#: Tens of MB in all; kept whole, a day's stream of a group every 10 ms would hold gigabytes.
STREAM_KEEP = {"groups": 10_000, "iterations": 100_000, "versions": 100_000}
