"""Worker side of a job: run groups of iterations over a pre-scheduled reduction.

For each iteration a worker computes its partial and starts the job's
reduction, an MPI collective created when the first partial was known
(:mod:`drizzle_ml.collectives`). Every worker then holds the total and
applies the same deterministic ``update``, so its replica stays at the same
version as a hand-written MPI loop's would; the group report carries a
digest of the replica for the driver to compare. Where updates might round
differently between workers (mixed platforms), the root updates alone and
broadcasts the model with a persistent ``Bcast``.

Large partials with a non-sum ``combine`` use the point-to-point reduce
tree (:mod:`drizzle_ml.tree`): a worker folds in its children's partials in
their fixed order as they arrive (receives are posted up front for the
group), sends the result to its parent and forwards the new model coming
down. Nothing here talks to the driver inside a group.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from mpi4py import MPI

from . import protocol as P
from .adaptivity import inject_delay
from .collectives import (
    SPARSE_DENSITY,
    ModelBroadcast,
    Reduction,
    ScatterReduction,
    ShardedCoordinates,
    ShardGather,
    SparseExchange,
    SparseShardPull,
    plan_reduction,
    touched_density,
)
from .errors import VersionMismatchError
from .layout import Layout
from .metrics import metric_columns
from .program import REPLICATED, Partition
from .streams import StreamReader, worker_partitions
from .streams.job import Publisher
from .tree import ReduceTree
from .waiting import SPIN_ON_OWN_CORE

if TYPE_CHECKING:
    from .worker import WorkerRuntime

# Receive buffers posted ahead per channel: enough to cover a group of small
# messages, bounded in bytes for large ones (a d x d scatter matrix).
_MAX_SLOTS = 64
_SLOT_BYTES_BUDGET = 64 << 20


Waiter = Callable[[Callable[[], Any], str], Any]


class RecvRing:
    """Receives for consecutive iterations from one source, posted ahead into a ring of buffers.

    ``wait(test, what)`` is the caller's bounded wait; ``what`` names the
    messages in errors ("worker 3's partial"). Every message is checked to be
    exactly ``nbytes`` long: partials must have the same structure on every
    worker, and a mismatch is an error, not silently wrong bytes.
    """

    def __init__(self, comm: MPI.Comm, source: int, kind: int, job: int, nbytes: int, slots: int,
                 wait: Waiter, what: str):
        self.comm, self.source, self.kind, self.job = comm, source, kind, job
        self.nbytes, self.wait, self.what = nbytes, wait, what
        self.buffers = [np.empty(nbytes, dtype=np.uint8) for _ in range(slots)]
        self.requests: dict[int, MPI.Request] = {}
        self.holds: list[list[MPI.Request]] = [[] for _ in range(slots)]
        self.status = MPI.Status()
        self.next_post = 0
        self.limit = 0

    def post_until(self, start: int, stop: int) -> None:
        """Make sure iterations ``start..stop-1`` are (or will be) posted."""
        if self.next_post < start:
            self.next_post = start
        self.limit = stop
        self._fill()

    def _fill(self) -> None:
        slots = len(self.buffers)
        while self.next_post < self.limit and len(self.requests) < slots:
            it = self.next_post
            slot = it % slots
            holds = self.holds[slot]
            if holds and not MPI.Request.Testall(holds):
                self.wait(lambda: MPI.Request.Testall(holds), f"forwarding {self.what} onwards")
            self.holds[slot] = []
            self.requests[it] = self.comm.Irecv(
                [self.buffers[slot], MPI.BYTE], source=self.source, tag=P.data_tag(self.kind, self.job, it)
            )
            self.next_post += 1

    def _ready(self, it: int) -> bool:
        if it not in self.requests:
            self.post_until(it, max(self.limit, it + 1))
        try:
            done = self.requests[it].Test(self.status)
        except MPI.Exception as exc:
            del self.requests[it]  # completed in error: nothing to cancel
            if exc.Get_error_class() == MPI.ERR_TRUNCATE:
                raise ValueError(
                    f"{self.what} for iteration {it} is larger than expected ({self.nbytes} bytes): "
                    "partials must have the same structure, shapes and dtypes on every worker"
                ) from None
            raise
        if done and self.status.Get_count(MPI.BYTE) != self.nbytes:
            count = self.status.Get_count(MPI.BYTE)
            del self.requests[it]
            raise ValueError(
                f"{self.what} for iteration {it} has {count} bytes, expected {self.nbytes}: "
                "partials must have the same structure, shapes and dtypes on every worker"
            )
        return done

    def receive(self, it: int) -> np.ndarray:
        """Wait (bounded) for iteration ``it`` and return its buffer; call :meth:`release` after use."""
        if not self._ready(it):
            self.wait(lambda: self._ready(it), f"{self.what} for iteration {it}")
        return self.buffers[it % len(self.buffers)]

    def release(self, it: int, holds: list[MPI.Request] | None = None) -> None:
        """Done with iteration ``it``'s buffer; its slot is reposted once ``holds`` completed."""
        del self.requests[it]
        if holds:
            self.holds[it % len(self.buffers)] = holds
        self._fill()

    def cancel(self) -> None:
        for req in self.requests.values():
            try:
                req.Cancel()
                req.Wait()  # a cancelled receive completes locally
            except MPI.Exception:
                pass
        self.requests.clear()
        self.next_post = self.limit = 0


class SendRing:
    """Send buffers reused round-robin; a slot is reused only after its sends completed."""

    def __init__(self, nbytes: int, slots: int, wait: Waiter, what: str):
        self.buffers = [np.empty(nbytes, dtype=np.uint8) for _ in range(slots)]
        self.pending: list[list[MPI.Request]] = [[] for _ in range(slots)]
        self.wait, self.what = wait, what

    def slot(self, it: int) -> np.ndarray:
        index = it % len(self.buffers)
        pending = self.pending[index]
        if pending and not MPI.Request.Testall(pending):
            self.wait(lambda: MPI.Request.Testall(pending), f"delivery of {self.what}")
        self.pending[index] = []
        return self.buffers[index]

    def track(self, it: int, requests: list[MPI.Request]) -> None:
        self.pending[it % len(self.buffers)].extend(requests)


def _slots(nbytes: int) -> int:
    return max(2, min(_MAX_SLOTS, _SLOT_BYTES_BUDGET // max(nbytes, 1)))


class JobExecutor:
    """One job's state on one worker: model replica, reduction, channels.

    The reduction is pre-scheduled when the first partial is known (see
    :mod:`drizzle_ml.collectives`): an MPI collective on ``comm``, the job's
    communicator of workers, or the point-to-point reduce tree for large
    partials with a non-sum ``combine``. With ``spec.replicate`` every worker
    receives the total and applies the same ``update`` (no model broadcast;
    each group report carries a digest of the replica so the driver can prove
    the replicas agree); otherwise the root updates and broadcasts.
    """

    def __init__(self, rt: WorkerRuntime, spec: P.StartJob, partition: Partition, comm: MPI.Intracomm):
        self.rt, self.job, self.partition = rt, spec.job, partition
        self.program = inject_delay(spec.program, rt.index)  # testing aid, see drizzle_ml.adaptivity
        self.tree = ReduceTree(rt.n_workers, spec.fanout)
        self.me = rt.index
        self.parent = self.tree.parent(self.me)
        self.children = self.tree.children(self.me)
        self.is_root = self.parent is None
        self.version = spec.version
        self.stopped = False
        shared = spec.program.shared
        self.shared_keys = tuple(spec.model) if shared is None else tuple(shared)
        missing = [k for k in self.shared_keys if k not in spec.model]
        if missing:
            raise KeyError(f"program.shared names {missing}, which the model does not have")
        self.comm = comm
        self.reduction_choice = spec.reduction
        self.replicated = spec.replicate
        # A worker that updates keeps the full model (optimizer state included);
        # others only what local reads.
        self.model = (dict(spec.model) if self.is_root or self.replicated
                      else {k: spec.model[k] for k in self.shared_keys})
        self._spec_model = spec.model
        self.planned = False
        self.reduction: Reduction | None = None
        self.broadcast: ModelBroadcast | None = None
        self._bcast_pending = False
        self._in_flight = False  # a collective started and not seen complete (abort: do not free)
        self.header_bytes = P.HEADER_SLOTS * 8
        self.down_layout = Layout({k: spec.model[k] for k in self.shared_keys})
        self.down_recv: RecvRing | None = None
        self.down_send: SendRing | None = None
        # The tree's partial layout is learnt from this worker's first partial.
        self.up_layout: Layout | None = None
        self.up_recv: dict[int, RecvRing] = {}
        self.up_send: SendRing | None = None
        self.group_end = 0
        self._iteration = 0
        self._iter_estimate = 0.0
        self.startup = 0.0  # set by the runtime; reported with the first group
        # A stream job reads a micro-batch per iteration from this worker's partitions.
        self.stream: StreamReader | None = None
        if spec.stream is not None:
            s = spec.stream
            self.stream = StreamReader(s.source, s.fmt, s.batching,
                                       worker_partitions(self.me, rt.n_workers, s.n_partitions),
                                       s.n_partitions, s.offsets, self.me)
        # A sharded job: this worker holds and updates its shard of the sharded keys.
        self.shard = spec.shard
        self.gather: ShardGather | None = None
        if self.shard is not None:
            self._sharded_program = spec.program  # its coordinates refer back here: unset at close
            spec.program.coordinates = ShardedCoordinates(comm, self.shard, self._wait_collective)
            self.gather = ShardGather(comm, self.shard, tuple(k for k in self.shared_keys if k in self.shard.keys))
        # A sharded job's versions are published by every worker: its shard (the root: its shard, the
        # replicated keys and the header), assembled by the driver once every shard of a version arrived.
        self.publisher = None
        if spec.publish and self.is_root:
            self.publisher = Publisher(rt.ctrl, self.job, spec.model, rt.ring_driver)
        elif spec.publish and self.shard is not None:
            self.publisher = Publisher(rt.ctrl, self.job, {k: spec.model[k] for k in self.shard.keys},
                                       rt.ring_driver)

    # -- planning the reduction (first partial) ------------------------------------
    def _plan(self, partial: Any) -> None:
        """Choose and create the job's reduction; the same choice on every worker."""
        self.planned = True
        layout = Layout(partial, by_dtype=True)
        self._check_layouts(layout)
        if self.shard is not None:
            self._plan_sharded(partial)
            return
        choice = self.reduction_choice
        self.reduction = None if choice == "tree" else plan_reduction(self.comm, self.program, layout)
        if self.reduction is None:
            self.replicated = False
            self._init_tree(layout)
        elif not self.replicated:
            self.broadcast = ModelBroadcast(self.comm, self._spec_model, self.shared_keys)
            if not self.is_root:
                self.model = {k: self.model[k] for k in self.shared_keys}

    def _plan_sharded(self, partial: Any) -> None:
        """A sharded job's exchanges: dense (reduce-scatter, all-gather), or sparse (all-to-all of the
        touched coordinates) where every worker's rows touch few of them. The same choice everywhere."""
        touched = None
        if self.partition is not None and self.stream is None:
            touched = self.program.touched_coordinates(self.partition)
        density = touched_density(self.comm, self.shard.n, touched, self._wait_collective)
        plan = None
        if density <= SPARSE_DENSITY:
            plan = SparseExchange(self.comm, self.shard, touched, self._wait_collective)
            self.gather.free()  # never started: the pull below replaces it
            self.gather = SparseShardPull(self.comm, self.shard, self.gather.keys, plan)
        self.reduction = ScatterReduction(self.comm, self.program, partial, self.shard, plan)

    def _check_layouts(self, layout: Layout) -> None:
        """Every worker's first partial must have one layout: a collective on mismatched buffers would mix bytes."""
        mine = np.frombuffer(layout.signature(), dtype=np.uint8)
        everyone = np.empty((self.comm.Get_size(), mine.size), dtype=np.uint8)
        request = self.comm.Iallgather([mine, MPI.BYTE], [everyone, MPI.BYTE])
        self._in_flight = True
        self._wait(request.Test, "the other workers' first partials", collective=True)
        self._in_flight = False
        differing = [w for w in range(len(everyone)) if not np.array_equal(everyone[w], everyone[0])]
        if differing:
            raise ValueError(
                f"worker {differing[0]}'s partial differs in structure from worker 0's: "
                "partials must have the same structure, shapes and dtypes on every worker")

    def _init_tree(self, up_layout: Layout) -> None:
        down_bytes = self.header_bytes + self.down_layout.nbytes
        down_slots = _slots(down_bytes)
        if self.is_root:
            self.down_send = SendRing(down_bytes, down_slots, self._wait, "the model")
        else:
            self.down_recv = RecvRing(self.rt.peers, self.parent, P.DOWN, self.job, down_bytes, down_slots,
                                      self._wait, f"the model from worker {self.parent}")
            self.down_recv.post_until(self._iteration, self.group_end)
        self._init_up(up_layout)

    # -- channels ---------------------------------------------------------------
    def _init_up(self, up_layout: Layout) -> None:
        self.up_layout = up_layout
        nbytes = self.up_layout.nbytes
        slots = _slots(nbytes)
        self.up_recv = {
            c: RecvRing(self.rt.peers, c, P.UP, self.job, nbytes, slots, self._wait, f"worker {c}'s partial")
            for c in self.children
        }
        for ring in self.up_recv.values():
            ring.post_until(self._iteration, self.group_end)
        if not self.is_root:
            self.up_send = SendRing(nbytes, slots, self._wait, "this worker's partial")

    def _ring(self, workers: list[int]) -> None:
        # Wake peers napping on a partial or model just sent. Not in a stream:
        # its workers nap at most a source poll interval (0.25 ms), hardly more
        # than a ring costs at a thousand iterations a second (20-80 us of a
        # system call on a virtual machine). Published versions do ring the
        # driver: it naps 1 ms, and the ring took 0.9 ms off the median latency.
        if self.stream is None:
            self.rt.ring_peers(workers)

    def _wait(self, test: Callable[[], Any], what: str, collective: bool = False, peers: bool = True) -> Any:
        # Bounded like every wait; a slow iteration elsewhere in the tree extends it.
        # A peer's partial or model is due within a fraction of an iteration: with
        # a core to itself, this worker spins through that (up to 5 ms) instead of
        # sleeping past it, as MPI's own collectives do.
        # A collective progresses only while its ranks call into MPI, and nobody
        # rings a doorbell for its internal messages: a sleeping rank holds up
        # every round it takes part in (4 ranks on 2 cores: milliseconds an
        # iteration). So its ranks test and yield the CPU for up to two
        # iterations (1 to 5 ms) even without a core of their own; yielding
        # lets the ranks still computing have it.
        # A stream is different: the driver drains versions and the sources are
        # read while workers wait, so a spinning worker delays both; it sleeps
        # in steps no longer than its source's poll interval instead.
        if self.stream is not None:
            return self.rt.wait(test, what, extra=4 * self._iter_estimate, spin=0.0,
                                max_sleep=self.stream.poll_interval, peers=peers)
        spin = None
        if collective:
            spin = max(self.rt.policy.spin, min(max(2 * self._iter_estimate, 1e-3), 5e-3))
        elif self.rt.policy.spin >= SPIN_ON_OWN_CORE:
            spin = max(self.rt.policy.spin, min(0.25 * self._iter_estimate, 5e-3))
        return self.rt.wait(test, what, extra=4 * self._iter_estimate, spin=spin, peers=peers)

    def _wait_collective(self, test: Callable[[], Any], what: str) -> Any:
        self._in_flight = True
        result = self._wait(test, what, collective=True)
        self._in_flight = False
        return result

    def _wait_batch(self, test: Callable[[], Any], poll_interval: float) -> Any:
        # Waiting for records is not waiting on a peer: look at the source
        # every poll_interval without spinning; cuts are due within the batch
        # interval or idle timeout, which bound this wait.
        return self.rt.wait(test, "the next micro-batch", spin=0.0, max_sleep=poll_interval)

    # -- one group ----------------------------------------------------------------
    def run_group(self, group: P.RunGroup) -> P.GroupReport:
        if group.version != self.version:
            raise VersionMismatchError(
                f"worker {self.me}: group at iteration {group.start} starts from model "
                f"version {group.version}, but this worker holds version {self.version}"
            )
        t_group = time.perf_counter()
        times = P.GroupTimings()
        steps: list[dict] = []  # the root's update metrics, one dict per iteration
        self.group_end = group.start + group.size
        for ring in self.up_recv.values():
            ring.post_until(group.start, self.group_end)
        if self.down_recv is not None:
            self.down_recv.post_until(group.start, self.group_end)
        n_done = 0
        perf = time.perf_counter
        for it in range(group.start, self.group_end):
            self._iteration = it
            if self.stream is None:
                part, t0 = self.partition, perf()
            else:
                t_source = perf()
                part = self.stream.next_batch(self._wait_batch)
                t0 = perf()
                times.source += t0 - t_source
            partial = self.program.local(self.model if self.gather is None else self.gather.view(self.model), part)
            times.compute += perf() - t0
            if not self.planned:
                self._plan(partial)
            if self.reduction is not None:
                stop = self._collective_iteration(it, partial, times, steps)
            else:
                stop = self._tree_iteration(it, partial, times, steps)
            n_done += 1
            self._iter_estimate = max(self._iter_estimate, perf() - t0)
            if stop:
                self.stopped = True
                break
        if self.stopped:
            self._cancel()
        times.execution = time.perf_counter() - t_group
        times.startup = self.startup
        times.rows = self.partition.n_rows if self.partition is not None else 0
        self.startup = 0.0
        return P.GroupReport(
            job=self.job,
            start=group.start,
            worker=self.me,
            n_done=n_done,
            version=self.version,
            stopped=self.stopped,
            timings=times,
            model=self._replicated_keys() if self.is_root else None,
            metrics=metric_columns(steps),
            offsets=None if self.stream is None else self.stream.offsets(),
            digest=model_digest(self._replicated_keys()) if self.replicated else None,
            shard=None if self.shard is None else {k: self.model[k] for k in self.shard.keys},
            reduction=self.reduction_name(),
        )

    def rebalance(self, rt: WorkerRuntime, moves: list[tuple[int, int, int]]) -> None:
        """Move rows among the workers (``(src, dst, n_rows)``, a straggler's to its neighbours).

        Partitions stay contiguous ranges of the global row order: a head goes
        to the end of the previous worker's range, a tail to the start of the
        next one's. The job continues on a new :class:`~drizzle_ml.program.Partition`
        (empty ``cache``, since it holds derived data) while the worker's
        partition cache keeps the original split for later jobs.
        """
        me, part = rt.index, self.partition
        tag = P.data_tag(P.REBALANCE, self.job, 0)
        lo, hi = 0, part.n_rows
        sends = []
        for src, dst, n in moves:
            if src == me:
                if dst < me:
                    sends.append(rt.peers.isend(take_rows(part, lo, lo + n), dest=dst, tag=tag))
                    lo += n
                else:
                    sends.append(rt.peers.isend(take_rows(part, hi - n, hi), dest=dst, tag=tag))
                    hi -= n
        before, after = [], []
        for src, dst, _ in moves:
            if dst == me:
                rt.wait(lambda s=src: rt.peers.iprobe(source=s, tag=tag), f"rows from worker {src}", peers=True)
                (before if src < me else after).append(rt.peers.recv(source=src, tag=tag))
        rt.wait(lambda: all(r.Test() for r in sends), "delivery of moved rows", peers=True)
        if not sends and not before and not after:
            return
        X, y, sw = stack_rows(before + [take_rows(part, lo, hi)] + after)
        offset = part.row_offset + lo - sum(p[0].shape[0] for p in before)
        self.partition = Partition(X, y, sw, row_offset=offset, n_total=part.n_total, worker=me)

    def lendable(self, report: P.GroupReport) -> list[np.ndarray]:
        """The report's model arrays that are this worker's own (sent without a copy, see
        :meth:`~drizzle_ml.worker.WorkerRuntime.report`), large enough to matter."""
        arrays = list((report.model or {}).values()) + list((report.shard or {}).values())
        return [a for a in arrays if isinstance(a, np.ndarray) and a.nbytes >= LEND_MIN_BYTES and a.flags.owndata]

    def _replicated_keys(self) -> dict:
        """The model's keys every updating worker holds whole (all of them unless sharded)."""
        if self.shard is None:
            return dict(self.model)
        return {k: v for k, v in self.model.items() if k not in self.shard.keys}

    def reduction_name(self) -> str:
        """``gather``/``allreduce``/``scatter``/``tree``, and where the update ran (see JobResult.reduction)."""
        if self.reduction is None:
            return "tree+broadcast"
        if self.shard is not None:
            return self.reduction.kind + "+sharded"
        return self.reduction.kind + ("+replicated" if self.replicated else "+broadcast")

    def _collective_iteration(self, it: int, partial: Any, times: P.GroupTimings, steps: list) -> bool:
        """One iteration over the job's collective; True when the job stops after it."""
        perf = time.perf_counter
        t1 = perf()
        reduction = self.reduction
        reduction.start(partial)
        if not reduction.test():
            self._in_flight = True
            self._wait(reduction.test, f"the workers' partials for iteration {it}", collective=True)
            self._in_flight = False
        t2 = perf()
        times.reduce += t2 - t1
        if not (self.replicated or self.is_root):  # the root updates and broadcasts
            bcast = self.broadcast
            bcast.start()
            if not bcast.test():
                self._in_flight = True
                self._wait(bcast.test, f"the model of iteration {it} from worker 0", collective=True)
                self._in_flight = False
            self.model, self.version, stop = bcast.received()
            times.broadcast += perf() - t2
            return stop
        if self.rt.pending_reports:
            self._await_lent_arrays()
        new_model, step_metrics = self.program.update(self.model, reduction.total(), it)
        t3 = perf()
        times.update += t3 - t2
        stop = bool(step_metrics.get("converged", False))
        self._check_model(new_model)
        self.version += 1
        if self.broadcast is not None:  # root of a job without replicas
            bcast = self.broadcast
            if self._bcast_pending and not bcast.test():
                self._wait(bcast.test, "delivery of the model", collective=True)
            bcast.start(new_model, self.version, it, stop)
            self._bcast_pending = not bcast.test()
            times.broadcast += perf() - t3
        if self.shard is not None:
            self._gather_shards(new_model, it, times)
        self.model = new_model
        if self.publisher is not None:
            self.publisher.publish(self.version, it + 1, new_model, step_metrics)
        if self.is_root:
            steps.append(dict(step_metrics))  # a copy: a program may reuse its dict
        return stop

    def _await_lent_arrays(self) -> None:
        """Before an update: the last report's arrays, lent to the driver, back (see ``lendable``).

        The update may reuse them in place (L-BFGS's memory); read-only, it
        would copy them instead, and a wide model's optimizer state would sit
        twice in memory while the driver receives the report.
        """
        self.rt.release_reports()
        if any(lent for _, lent in self.rt.pending_reports):
            self._wait(lambda: self.rt.release_reports() or not any(lent for _, lent in self.rt.pending_reports),
                       "the driver to receive this worker's last report", peers=False)

    def _gather_shards(self, model: dict, it: int, times: P.GroupTimings) -> None:
        """Every worker's new shard of the keys ``local`` reads, whole here for the next ``local``."""
        t0 = time.perf_counter()
        self.gather.start(model)
        if not self.gather.test():
            self._wait_collective(self.gather.test, f"the other workers' shards of iteration {it}")
        self.gather.finish()
        times.broadcast += time.perf_counter() - t0

    def _tree_iteration(self, it: int, acc: Any, times: P.GroupTimings, steps: list) -> bool:
        """One iteration over the point-to-point reduce tree; True when the job stops after it."""
        perf = time.perf_counter
        t1 = perf()
        for child in self.children:
            ring = self.up_recv[child]
            acc = self.program.combine(acc, self.up_layout.unpack(ring.receive(it)))
            ring.release(it)
        t2 = perf()
        times.reduce += t2 - t1
        if self.is_root:
            if self.rt.pending_reports:
                self._await_lent_arrays()
            new_model, step_metrics = self.program.update(self.model, acc, it)
            times.update += perf() - t2
            stop = bool(step_metrics.get("converged", False))
            self.version += 1
            if self.children:
                # First unblock the tree (pack checks shapes), then the bookkeeping.
                self._send_down(it, new_model, stop)
            self._check_model(new_model)
            self.model = new_model
            if self.publisher is not None:
                self.publisher.publish(self.version, it + 1, new_model, step_metrics)
            steps.append(dict(step_metrics))
            return stop
        sbuf = self.up_send.slot(it)
        self.up_layout.pack(acc, sbuf)
        self.up_send.track(
            it,
            [self.rt.peers.Isend([sbuf, MPI.BYTE], dest=self.parent, tag=P.data_tag(P.UP, self.job, it))],
        )
        self._ring([self.parent])
        buf = self.down_recv.receive(it)
        tag = P.data_tag(P.DOWN, self.job, it)
        forwards = [self.rt.peers.Isend([buf, MPI.BYTE], dest=c, tag=tag) for c in self.children]
        self._ring(self.children)
        self.down_recv.release(it, forwards)
        version, _, flags = buf[: self.header_bytes].view(np.float64)
        # Views into the ring slot are safe: the slot's next message is for
        # iteration it + slots, which cannot be sent before this worker has
        # moved past this model.
        self.model = self.down_layout.unpack(buf, self.header_bytes)
        self.version = int(version)
        times.broadcast += perf() - t2
        return flags == P.FLAG_STOP

    def _send_down(self, it: int, model: dict, stop: bool) -> None:
        buf = self.down_send.slot(it)
        buf[: self.header_bytes].view(np.float64)[:] = (self.version, it, P.FLAG_STOP if stop else 0.0)
        self.down_layout.pack({k: model[k] for k in self.shared_keys}, buf, self.header_bytes)
        tag = P.data_tag(P.DOWN, self.job, it)
        self.down_send.track(
            it, [self.rt.peers.Isend([buf, MPI.BYTE], dest=c, tag=tag) for c in self.children]
        )
        self._ring(self.children)

    def _check_model(self, model: dict) -> None:
        if not isinstance(model, dict):
            raise TypeError(f"update must return a dict model, got {type(model).__name__}")
        for key in self.shared_keys:
            if key not in model:
                raise KeyError(f"update dropped model key {key!r}")

    def _cancel(self) -> None:
        for ring in self.up_recv.values():
            ring.cancel()
        if self.down_recv is not None:
            self.down_recv.cancel()

    def close(self) -> None:
        self._cancel()
        if self.shard is not None:  # break the cycle program -> coordinates -> executor -> model
            self._sharded_program.coordinates = REPLICATED
        if self._bcast_pending and self.broadcast is not None and not self.broadcast.test():
            self._in_flight = True
        if self.comm is not None:
            if self._in_flight:
                # An aborted job may leave a collective started on some workers
                # only: it can neither complete nor be freed. The job's
                # communicator is abandoned with it, and no later job uses it.
                _ABANDONED.append((self.comm, self.reduction, self.broadcast, self.gather))
            else:
                for part in (self.reduction, self.broadcast, self.gather):
                    if part is not None:
                        part.free()
                self.comm.Free()
            self.comm = None
        if self.stream is not None:
            self.stream.close()
        if self.publisher is not None:
            self.publisher.close()


#: Model arrays at least this large go to the driver without a pickled copy
#: (raw, out of the report's pickle: see protocol.split_out_of_band).
LEND_MIN_BYTES = 1 << 18

# Communicators and requests of aborted jobs: never freed (MPI forbids freeing
# an active request), kept referenced so that nothing tries to.
_ABANDONED: list[tuple] = []


#: Arrays up to this size are digested whole; larger ones by an evenly strided
#: sample of about this many bytes (hashing 8 MB at every group boundary would
#: cost each worker several milliseconds; replicas that drift apart do so in
#: most coordinates within a few updates).
DIGEST_FULL_BYTES = 1 << 20


def take_rows(part: Partition, lo: int, hi: int) -> tuple:
    """Rows ``lo:hi`` of a partition: ``(X, y, sample_weight)``."""
    pick = slice(lo, hi)
    return (part.X[pick], None if part.y is None else part.y[pick],
            None if part.sample_weight is None else part.sample_weight[pick])


def stack_rows(pieces: list[tuple]) -> tuple:
    """Pieces of :func:`take_rows`, one after the other."""
    X = [p[0] for p in pieces]
    X = sp.vstack(X, format="csr") if sp.issparse(X[0]) else np.concatenate(X)
    rest = []
    for i in (1, 2):
        arrays = [p[i] for p in pieces]
        rest.append(None if arrays[0] is None else np.concatenate(arrays))
    return (X, *rest)


def model_digest(model: dict) -> int:
    """A 64-bit digest of a model's keys, dtypes, shapes and bytes (replicas are compared by it)."""
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(model):
        value = np.asarray(model[key])
        h.update(f"{key}:{value.dtype.str}:{value.shape};".encode())
        flat = value.reshape(-1)
        if flat.nbytes > DIGEST_FULL_BYTES:
            flat = flat[:: -(-flat.nbytes // DIGEST_FULL_BYTES)]
        h.update(np.ascontiguousarray(flat).view(np.uint8))
    return int.from_bytes(h.digest(), "little")
