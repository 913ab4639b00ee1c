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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from .. import protocol as P
from ..group_loop import GroupHooks
from ..layout import Layout
from ..program import Program
from ..store import ModelStore

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

    def __init__(self, program: Any, n_workers: int):
        self.program, self.n_workers = program, int(n_workers)
        self.shared = program.shared

    def local(self, model, batch):
        stats = np.array([batch.n_rows, batch.n_bad, float(batch.idle), batch.oldest, batch.newest])
        return self.program.local(model, batch), stats

    def combine(self, a, b):
        stats = a[1] if a[1].flags.writeable else a[1].copy()
        stats[:_OLDEST] += b[1][:_OLDEST]
        stats[_OLDEST] = min(stats[_OLDEST], b[1][_OLDEST])
        stats[_NEWEST] = max(stats[_NEWEST], b[1][_NEWEST])
        return self.program.combine(a[0], b[0]), stats

    def update(self, model, total, iteration):
        partial, stats = total
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
    """The root's side: send each new version to the driver without ever waiting for it.

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
    """

    def __init__(self, comm: MPI.Comm, job: int, model: dict, store: ModelStore, root_rank: int = 1):
        self.comm, self.job, self.store, self.root_rank = comm, job, store, root_rank
        self.keys = tuple(model)
        self.layout = Layout({k: np.asarray(model[k]) for k in self.keys})
        self.header = len(PUBLISH_HEADER) * 8
        self.status = MPI.Status()
        self.latest_version = -1
        self.batches: list[tuple[float, float, float]] = []  # (records, latency of oldest, of newest)

    def drain(self) -> int:
        """Receive every publication that has arrived; return how many."""
        received = 0
        while True:
            msg = self.comm.Improbe(source=self.root_rank, tag=P.TAG_PUBLISH, status=self.status)
            if msg is None:
                return received
            buf = np.empty(self.status.Get_count(MPI.BYTE), dtype=np.uint8)
            msg.Recv([buf, MPI.BYTE])
            received += 1
            if buf.size != self.header + self.layout.nbytes:
                continue  # left over from an aborted job with another model
            job, version, iteration, records, oldest, newest = buf[: self.header].view(np.float64)
            if int(job) != self.job or version <= self.latest_version:
                continue
            now = time.time()
            model = self.layout.unpack(buf, self.header, reused=False)  # a new buffer per version
            self.store.publish(int(version), model, int(iteration), {"records": float(records)})
            self.latest_version = int(version)
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
        self.latencies: list[tuple[float, float, float]] = []  # every published batch of the job

    def at_boundary(self, root: P.GroupReport, metrics: dict[str, float]) -> None:
        self.publications.drain()
        metrics["records"] = float(sum(root.metrics.get("records", ())))
        metrics["malformed"] = float(sum(root.metrics.get("malformed", ())))
        batches = self.publications.take()
        self.latencies += batches
        metrics.update(latency_percentiles(batches))

    def result(self) -> dict[str, Any]:
        return {"latencies": [tuple(b) for b in self.latencies]}

