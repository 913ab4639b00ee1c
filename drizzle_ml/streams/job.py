"""Streams through the iteration path: a micro-batch is one iteration of a job.

A stream job is an ordinary group-scheduled job whose partition changes every
iteration: each worker cuts its next micro-batch from its own partitions of
the source (:mod:`drizzle_ml.streams`) and runs the program's ``local`` on it.
Two things are added around the user's program, here rather than in every
algorithm:

* :class:`StreamStep` wraps the program so each partial also carries the
  batch's record counts and arrival times through the reduce tree, and the
  job stops once every worker's partitions are idle or finished.
* Publication: the tree root sends each new model version to the driver as
  soon as it is made (best effort, never blocking the root), where
  :class:`Publications` makes it visible in the :class:`~drizzle_ml.store.ModelStore`
  before the group ends (:class:`PublishingHooks` plugs it into the
  driver's :class:`~drizzle_ml.group_loop.GroupLoop`). The group boundary
  then commits it as durable, with every partition's offset in the checkpoint.
  A sharded model is published by every worker, each its shard, and the
  driver assembles a version once it has every shard of it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from .. import protocol as P
from .. import sharding
from ..group_loop import GroupHooks
from ..layout import Layout
from ..metrics import STREAM_KEEP
from ..program import Program
from ..store import ModelStore
from ..waiting import look_twice

# Stream statistics carried with every partial: sums, then a min and a max.
_RECORDS, _BAD, _IDLE, _OLDEST, _NEWEST = range(5)

# Publication header (float64 slots) in front of the packed model.
PUBLISH_HEADER = ("job", "version", "iteration", "records", "oldest", "newest")


RECORDS_KEY = "stream_records"


class StreamStep(Program):
    """``program`` run on micro-batches, with the stream's statistics alongside its partial.

    The model gains ``stream_records`` (1,): the records learnt so far. It is
    checkpointed with the model, so after restarts it still counts every
    record in the model exactly once.
    """

    def __init__(self, program: Any, n_workers: int, sharded: bool = False):
        self.program, self.n_workers = program, int(n_workers)
        self.shared = program.shared
        # Sharded, the partial is (coordinate vector, the rest of the program's partial, stats):
        # the engine finds the vector at the top of the partial.
        self.sharded = tuple(program.sharded) if sharded else ()
        self.sharded_partial = 0 if sharded else None
        # The vector is summed (a sharded program's partials are), though this combine is no plain sum.
        self.sums_coordinates = sharded
        self._where = program.sharded_partial if sharded else None

    @property
    def coordinates(self):  # set by the engine on this wrapper, used by the program's update
        return self.program.coordinates

    @coordinates.setter
    def coordinates(self, value) -> None:
        self.program.coordinates = value

    def local(self, model, batch):
        stats = np.array([batch.n_rows, batch.n_bad, float(batch.idle), batch.oldest, batch.newest])
        partial = self.program.local(model, batch)
        if self._where is None:
            return partial, stats
        return partial[self._where], sharding.without_vector(partial, self._where), stats

    def combine(self, a, b):
        # (partial, stats), or sharded (vector, rest, stats); the engine's reduce-scatter sums the vector
        # and combines the (rest, stats) left without it here too.
        stats = a[-1] if a[-1].flags.writeable else a[-1].copy()
        stats[:_OLDEST] += b[-1][:_OLDEST]
        stats[_OLDEST] = min(stats[_OLDEST], b[-1][_OLDEST])
        stats[_NEWEST] = max(stats[_NEWEST], b[-1][_NEWEST])
        if len(a) == 2:  # (partial, stats), or a sharded one's (rest, stats) once the engine took the vector
            return self.program.combine(a[0], b[0]), stats
        return a[0] + b[0], self.program.combine(a[1], b[1]), stats

    def update(self, model, total, iteration):
        if self._where is None:
            partial, stats = total
        else:
            vector, rest, stats = total
            partial = sharding.with_vector(rest, self._where, vector)
        new, metrics = self.program.update(model, partial, iteration)
        new = dict(new)
        new[RECORDS_KEY] = model[RECORDS_KEY] + stats[_RECORDS]
        metrics = dict(metrics)
        metrics.update(records=float(stats[_RECORDS]), malformed=float(stats[_BAD]),
                       oldest=float(stats[_OLDEST]), newest=float(stats[_NEWEST]))
        # The stream ends when every worker's partitions are idle or finished.
        metrics["converged"] = bool(metrics.get("converged", False)) or stats[_IDLE] >= self.n_workers
        return new, metrics


class Publisher:
    """The root's side (every worker's, each its shard, when sharded): send each new version to the
    driver without ever waiting for it.

    A send slot is reused only when its previous send completed; when every
    slot is still in flight (a driver that cannot keep up with very large
    models) the version is skipped: readers get a newer one, training never waits.
    """

    SLOTS = 8

    def __init__(self, comm: MPI.Comm, job: int, model: dict, ring: Callable[[], None] | None = None):
        self.comm, self.job = comm, job
        self.ring = ring  # wakes the driver (its doorbell) after each send
        self.keys = tuple(model)
        self.layout = Layout({k: np.asarray(model[k]) for k in self.keys})
        self.header = len(PUBLISH_HEADER) * 8
        self.buffers = [np.empty(self.header + self.layout.nbytes, dtype=np.uint8) for _ in range(self.SLOTS)]
        self.requests: list[MPI.Request | None] = [None] * self.SLOTS
        self.skipped = 0

    def publish(self, version: int, iteration: int, model: dict, metrics: dict) -> None:
        slot = next((i for i, req in enumerate(self.requests) if req is None or req.Test()), None)
        if slot is None:  # every buffer still in flight: this version is skipped, the root never waits
            self.skipped += 1
            return
        buf = self.buffers[slot]
        buf[: self.header].view(np.float64)[:] = (
            self.job, version, iteration, metrics.get("records", 0.0),
            metrics.get("oldest", float("inf")), metrics.get("newest", float("-inf")))
        self.layout.pack({k: model[k] for k in self.keys}, buf, self.header)
        self.requests[slot] = self.comm.Isend([buf, MPI.BYTE], dest=0, tag=P.TAG_PUBLISH)
        if self.ring is not None:
            self.ring()

    def close(self, linger: float = 1.0) -> None:
        # A publication the driver has matched already must complete: cancelling a large
        # (rendezvous) send while the driver copies it crashes MPICH. The driver drains
        # publications while the job runs, so this wait is short; one it never takes is cancelled.
        pending = [req for req in self.requests if req is not None]
        deadline = time.monotonic() + linger
        while pending:
            pending = [req for req in pending if not req.Test()]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(1e-4)
        for req in pending:
            try:
                req.Cancel()
            except MPI.Exception:
                pass


class Publications:
    """The driver's side: drain published versions into the store; measure event-to-model latency.

    A record's latency runs from its arrival at a worker's reader to the
    moment the driver made a version including it visible. Each published
    batch gives the latency of its oldest and newest record; the record-weighted
    distribution counts each record at its batch's oldest arrival, an upper bound.

    A sharded job (``shard_keys``, each worker's coordinates in ``spans``)
    publishes each version in pieces: every worker sends its shard of the
    sharded keys, the root also the replicated keys and the header. A version
    becomes visible once all its pieces arrived, assembled into one model;
    the pieces of a version that some worker skipped (its send slots busy)
    are dropped when a newer version completes, so readers always see the
    newest complete version and no worker ever waits for the driver.

    ``dropped`` counts the versions readers never saw: the gaps between
    consecutive visible versions (a replicated root's publications arrive in
    order; a sharded version is visible once complete, and the incomplete
    ones before it are given up). ``version`` is the job's first version.
    """

    #: Incomplete versions kept at most (a worker that skips many in a row leaves them unfinished).
    MAX_PENDING = 2 * Publisher.SLOTS

    def __init__(self, comm: MPI.Comm, job: int, model: dict, store: ModelStore, root_rank: int = 1,
                 shard_keys: tuple[str, ...] = (), spans: list[tuple[int, int]] | None = None, version: int = -1):
        self.comm, self.job, self.store, self.root_rank = comm, job, store, root_rank
        self.keys = tuple(model)
        self.header = len(PUBLISH_HEADER) * 8
        self.shard_keys = tuple(shard_keys)
        if self.shard_keys:
            # Each worker's piece, laid out as its Publisher packs it (see JobExecutor).
            self.layouts = {}
            for worker, (lo, hi) in enumerate(spans):
                piece = sharding.split(model, self.shard_keys, lo, hi)
                if worker:
                    piece = {k: piece[k] for k in self.shard_keys}
                self.layouts[root_rank + worker] = Layout({k: np.asarray(v) for k, v in piece.items()})
            self.layout = self.layouts[root_rank]
        else:
            self.layout = Layout({k: np.asarray(model[k]) for k in self.keys})
            self.layouts = {root_rank: self.layout}
        self.source = root_rank if not self.shard_keys else MPI.ANY_SOURCE
        self.pending: dict[int, dict[int, np.ndarray]] = {}  # version -> rank -> received piece
        self.dropped = 0  # versions never made visible (skipped by a worker)
        self.status = MPI.Status()
        self._probe = lambda: self.comm.Improbe(source=self.source, tag=P.TAG_PUBLISH, status=self.status)
        self.latest_version = version
        self.batches: list[tuple[float, float, float]] = []  # (records, latency of oldest, of newest)

    def drain(self) -> int:
        """Receive every publication that has arrived; return how many."""
        received = 0
        while True:
            msg = look_twice(self._probe)
            if msg is None:
                return received
            source = self.status.Get_source()
            buf = np.empty(self.status.Get_count(MPI.BYTE), dtype=np.uint8)
            msg.Recv([buf, MPI.BYTE])
            received += 1
            self.receive(source, buf)

    def receive(self, source: int, buf: np.ndarray) -> None:
        """One publication (or a sharded version's piece) from rank ``source``."""
        layout = self.layouts.get(source)
        if layout is None or buf.size != self.header + layout.nbytes:
            return  # left over from an aborted job with another model
        job, version = buf[: self.header].view(np.float64)[:2]
        if int(job) != self.job or version <= self.latest_version:
            return
        if not self.shard_keys:
            self._publish(buf, self.layout.unpack(buf, self.header, reused=False))  # a new buffer per version
            return
        pieces = self.pending.setdefault(int(version), {})
        pieces[source] = buf
        if len(pieces) == len(self.layouts):
            self._publish(pieces[self.root_rank], self._assemble(pieces))
        elif len(self.pending) > self.MAX_PENDING:
            del self.pending[min(self.pending)]  # counted as a gap once a newer version is complete

    def _assemble(self, pieces: dict[int, np.ndarray]) -> dict:
        """One version's model from every worker's piece (copies: the pieces' buffers are let go)."""
        unpacked = [self.layouts[r].unpack(pieces[r], self.header, reused=False) for r in sorted(pieces)]
        replicated = {k: v for k, v in unpacked[0].items() if k not in self.shard_keys}
        whole = sharding.assemble(replicated, [{k: u[k] for k in self.shard_keys} for u in unpacked])
        return {k: whole[k] for k in self.keys}

    def _publish(self, head: np.ndarray, model: dict) -> None:
        _, version, iteration, records, oldest, newest = head[: self.header].view(np.float64)
        now = time.time()
        self.store.publish(int(version), model, int(iteration), {"records": float(records)})
        if self.latest_version >= 0:
            self.dropped += int(version) - self.latest_version - 1
        self.latest_version = int(version)
        if self.shard_keys:  # versions up to this one can no longer become visible
            for stale in [v for v in self.pending if v <= self.latest_version]:
                del self.pending[stale]
        if records > 0:
            self.batches.append((float(records), now - oldest, now - newest))

    def take(self) -> list[tuple[float, float, float]]:
        """The latency records gathered since the last call."""
        out, self.batches = self.batches, []
        return out


def latency_percentiles(batches: list[tuple[float, float, float]], qs=(50, 99)) -> dict[str, float]:
    """Record-weighted latency percentiles (seconds), each record at its batch's oldest arrival."""
    if not batches:
        return {}
    arr = np.array(batches)
    order = np.argsort(arr[:, 1])
    weights = np.cumsum(arr[order, 0])
    out = {}
    for q in qs:
        index = int(np.searchsorted(weights, weights[-1] * q / 100.0))
        out[f"latency_p{q}"] = float(arr[order[min(index, len(order) - 1)], 1])
    return out


class PublishingHooks(GroupHooks):
    """A publishing job's part of the group loop: versions drained into the store while the driver
    waits, and at each boundary the group's record counts and event-to-model latency."""

    urgent = True

    def __init__(self, publications: Publications):
        self.publications = publications
        self.poll = publications.drain
        # The newest published batches (see STREAM_KEEP), and counts over the whole job.
        self.latencies: deque[tuple[float, float, float]] = deque(maxlen=STREAM_KEEP["versions"])
        self.counts = {"records": 0.0, "malformed": 0.0, "unpublished": 0.0}
        self._dropped = 0  # publications.dropped at the last boundary

    def at_boundary(self, root: P.GroupReport, metrics: dict[str, float]) -> None:
        self.publications.drain()
        metrics["records"] = float(sum(root.metrics.get("records", ())))
        metrics["malformed"] = float(sum(root.metrics.get("malformed", ())))
        batches = self.publications.take()
        self.latencies.extend(batches)
        metrics.update(latency_percentiles(batches))
        # Versions readers never saw: the driver fell behind a worker's sends (see Publisher).
        metrics["unpublished"] = float(self.publications.dropped - self._dropped)
        self._dropped = self.publications.dropped
        for key in self.counts:
            self.counts[key] += metrics[key]

    def result(self) -> dict[str, Any]:
        return {"latencies": [tuple(b) for b in self.latencies]}

    def totals(self) -> dict[str, float]:
        return dict(self.counts)

