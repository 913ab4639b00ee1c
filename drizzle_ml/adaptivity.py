"""What the driver adapts at group boundaries besides the model: group size, stragglers, partitions.

Driver side (:class:`Adaptivity`, called once per group by the scheduler):

- the tuner's decision for the next group (:class:`~drizzle_ml.tuner.GroupSizer`),
  recorded in the group's metrics (``tuner``);
- **straggler detection**: a worker whose compute time in a group is at least
  ``straggler_factor`` times the median of the other workers' (and at least
  :data:`MIN_EXCESS` seconds more, so that scheduling noise on tiny groups is
  not reported) in ``straggler_groups`` consecutive groups is a straggler. A
  :class:`~drizzle_ml.errors.StragglerWarning` names it and its host (once per
  job and worker) and the groups' metrics record it (``straggler``);
- with ``rebalance=True``, **rebalancing**: the driver sends a
  :class:`~drizzle_ml.protocol.Rebalance` after a straggler is reported. Rows
  move to the straggler's neighbours in worker order (its head to worker
  ``s - 1``'s tail, its tail to worker ``s + 1``'s head), so partitions stay
  contiguous ranges of the global row order and ``row_offset`` stays right.
  The amount follows the measured speeds (rows per compute second), at most
  half the straggler's rows per move, and a worker keeps at least a quarter
  of a balanced share.

Worker side: :meth:`~drizzle_ml.executor.JobExecutor.rebalance` moves the
rows point to point among the workers.

Testing aid: :func:`inject_delay` makes one worker sleep in every ``local``
call, as set by the environment variable ``DRIZZLE_INJECT_DELAY``, e.g.
``worker=1,seconds=0.005,after_iteration=20`` (worker index, seconds per
iteration, iterations of the job before the delay starts).
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from . import protocol as P
from .errors import StragglerWarning

if TYPE_CHECKING:
    from .metrics import GroupMetrics
    from .program import Partition
    from .tuner import GroupSizer

#: Extra seconds of compute per group below which a slow worker is not reported.
MIN_EXCESS = 2e-3
STRAGGLER_KEYS = ("straggler_factor", "straggler_groups")


def check_straggler_options(factor: float, groups: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1.0:
        raise ValueError(f"straggler_factor must be a number > 1, got {factor!r}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"straggler_groups must be an integer >= 1, got {groups!r}")


class StragglerDetector:
    """The slowest worker by ``factor`` over the others' median in ``groups`` consecutive groups."""

    def __init__(self, factor: float = 1.5, groups: int = 3):
        check_straggler_options(factor, groups)
        self.factor, self.groups = float(factor), int(groups)
        self.candidate: int | None = None
        self.streak = 0

    def observe(self, compute: list[float]) -> tuple[int | None, float]:
        """Feed one group's per-worker compute seconds; return (straggler or None, its ratio)."""
        if len(compute) < 2:
            return None, 1.0
        slowest = int(np.argmax(compute))
        others = float(statistics.median(c for w, c in enumerate(compute) if w != slowest))  # a few values: no numpy
        ratio = compute[slowest] / others if others > 0 else float("inf")
        if ratio >= self.factor and compute[slowest] - others >= MIN_EXCESS:
            self.streak = self.streak + 1 if slowest == self.candidate else 1
            self.candidate = slowest
        else:
            self.candidate, self.streak = None, 0
        return (self.candidate if self.streak >= self.groups else None), ratio

    def reset(self) -> None:
        self.candidate, self.streak = None, 0


def plan_rebalance(rows: list[int], compute: list[float], slow: int) -> list[tuple[int, int, int]]:
    """Moves ``(src, dst, n_rows)`` taking the straggler's excess rows to its neighbours."""
    rows_a, compute_a = np.asarray(rows, float), np.maximum(np.asarray(compute, float), 1e-9)
    speed = rows_a / compute_a
    target = rows_a.sum() * speed / speed.sum()
    # At most half its rows per move, and never below a quarter of a balanced share: a
    # worker slow for reasons other than its rows (a busy host) must not end up idle.
    keep = int(np.ceil(rows_a.sum() / (4 * len(rows))))
    excess = int(min(rows_a[slow] - target[slow], rows_a[slow] // 2, rows_a[slow] - keep))
    neighbours = [w for w in (slow - 1, slow + 1) if 0 <= w < len(rows)]
    if excess < len(neighbours) or not neighbours:
        return []
    share = excess // len(neighbours)
    return [(slow, w, share) for w in neighbours]


class Adaptivity:
    """The scheduler's per-group adaptation: tuner decision, stragglers, rebalancing."""

    def __init__(self, cluster: Any, job: int, sizer: GroupSizer, rebalance: bool = False,
                 straggler_factor: float = 1.5, straggler_groups: int = 3):
        self.cluster, self.job, self.sizer = cluster, job, sizer
        self.rebalance = bool(rebalance)
        self.detector = StragglerDetector(straggler_factor, straggler_groups)
        self.warned: set[int] = set()
        self.moves = 0
        self.previous = (0.0, 0.0)  # the last group's wall and execution

    def host(self, worker: int) -> str:
        hosts = {h.worker: h.host for h in getattr(self.cluster, "workers", [])}
        return hosts.get(worker, "?")

    def after_group(self, metrics: GroupMetrics, reports: list, per_iteration: float, remaining: int,
                    finishing: bool) -> int:
        """Record the group's adaptation in ``metrics``; return the next group's size."""
        by_worker = sorted(reports, key=lambda r: r.worker)
        compute = [r.timings.compute for r in by_worker]
        metrics.rows = [r.timings.rows for r in by_worker]
        slow, ratio = self.detector.observe(compute)
        if slow is not None:
            metrics.straggler = slow
            if slow not in self.warned:
                self.warned.add(slow)
                text = (f"worker {slow} on host {self.host(slow)} is a straggler: its compute took "
                        f"{ratio:.1f}x the median of the other workers in {self.detector.groups} "
                        f"consecutive groups")
                metrics.events.append(text)
                hint = "" if self.rebalance else "; rebalance=True moves some of its rows"
                warnings.warn(StragglerWarning(text + hint, slow, self.host(slow)), stacklevel=2)
            if self.rebalance and not finishing and all(metrics.rows):
                moves = plan_rebalance(metrics.rows, compute, slow)
                if moves:
                    self.cluster.broadcast(P.Rebalance(self.job, moves))
                    self.moves += 1
                    metrics.events.append("rebalance: " + ", ".join(
                        f"{n} rows worker {s} -> {d}" for s, d, n in moves))
                    self.detector.reset()  # judge the new split afresh
        size = self.sizer.next(self.overhead(metrics), measured=metrics.group_size, per_iteration=per_iteration,
                               remaining=remaining)
        metrics.tuner = self.sizer.reason
        return size

    def overhead(self, metrics: GroupMetrics) -> float:
        """The coordination share over this group and the one before, as the tuner sees it.

        With send-ahead a group starts on the workers before the driver has the
        previous group's reports, so one group's ``wall - execution`` can be
        negative (clamped to 0 in ``coordination``) and the next one's too large:
        alone, the share alternates between the two. Over the pipeline's depth
        (two groups), ``1 - execution / wall`` is the workers' idle share.
        Where the driver shares cores with the workers (more ranks than cores
        on its host), the CPU it used in the group ran in the workers' place:
        their execution was that much longer, and that is coordination too.
        """
        stolen = metrics.driver_cpu if self.cluster.shares_cores else 0.0
        mine = max(metrics.execution - stolen, 0.0)
        wall, execution = metrics.wall + self.previous[0], mine + self.previous[1]
        self.previous = (metrics.wall, mine)
        return max(0.0, 1.0 - execution / wall) if wall > 0 else 0.0


class DelayedProgram:
    """A program whose ``local`` sleeps ``seconds`` per call after ``after`` calls (testing aid)."""

    def __init__(self, program: Any, seconds: float, after: int):
        self.program, self.seconds, self.after, self.calls = program, seconds, after, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.program, name)

    def local(self, model: dict, partition: Partition) -> Any:
        self.calls += 1
        if self.calls > self.after:
            time.sleep(self.seconds)
        return self.program.local(model, partition)


def inject_delay(program: Any, worker: int, spec: str | None = None) -> Any:
    """``program``, slowed on ``worker`` if ``DRIZZLE_INJECT_DELAY`` says so (see the module docstring)."""
    spec = os.environ.get("DRIZZLE_INJECT_DELAY", "") if spec is None else spec
    if not spec:
        return program
    try:
        fields = dict(item.split("=", 1) for item in spec.replace(" ", "").split(","))
        target, seconds = int(fields["worker"]), float(fields["seconds"])
        after = int(fields.get("after_iteration", 0))
    except (KeyError, ValueError):
        raise ValueError(f"DRIZZLE_INJECT_DELAY={spec!r}: expected worker=W,seconds=S[,after_iteration=N]") from None
    return DelayedProgram(program, seconds, after) if target == worker else program
