"""Pre-scheduled reductions: MPI collectives created once per job and started every iteration.

This is what "pre-scheduling the reduce tasks" (Drizzle) means on MPI. When
a job's first partial is known, every worker creates the same reduction on
the job's communicator of workers; each iteration then packs its partial
into a fixed buffer, starts the collective, and MPI runs the exchange in C.
The driver is never in this path.

Two shapes, chosen the same way on every worker from the program and the
partial's size:

* **gather** (:class:`GatherReduction`, the common case): a persistent
  ``Allgather`` brings every worker's partial to every worker, which
  combines them in worker order 0, 1, ..., W-1. For leaf-wise sums (the
  default ``combine``) that is one ``np.add.reduce`` per dtype run; any
  other ``combine`` (a merge, min/max) is called W-1 times. The order is the
  same on every worker and equals the BSP driver's, so replicas are
  bit-identical by construction and group and BSP runs agree bit for bit.
  Chosen while W x the partial's bytes is at most :data:`GATHER_LIMIT`.
* **allreduce** (:class:`AllreduceReduction`): a persistent ``Allreduce``
  (MPI_SUM) per dtype run, for large summed partials (Gram matrices,
  k-means sums with many centers), where gathering W copies would move W
  times the data. MPICH's algorithm is fixed for a fixed worker count and
  size, so runs are reproducible; replicas are checked by digest (see
  :mod:`drizzle_ml.executor`).

A sharded job (see :mod:`drizzle_ml.sharding`) sums its partial's
coordinate vector (k values per coordinate, coordinate-major) by a
persistent ``Reduce_scatter`` (:class:`ScatterReduction`: each worker
receives its shard of the total; the partial's other leaves take the small
reduction above), all-gathers the coordinates ``local`` reads after each
update (:class:`ShardGather`), and sums over all coordinates inside
``update`` with small all-reduces (:class:`ShardedCoordinates`).

Large partials with a non-sum ``combine`` return None from
:func:`plan_reduction`: the executor keeps its point-to-point reduce tree
for them. Where MPI lacks persistent collectives (before MPI-4), the same
classes start a nonblocking collective each iteration instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from .layout import Layout
from .program import Coordinates, Program
from .sharding import Shard, with_vector, without_vector

#: Bytes one gather may bring to each worker (W x the packed partial); above
#: it summed partials go through Allreduce and others through the tree.
GATHER_LIMIT = 64 << 10

_MPI_SUMMABLE = "iufc"  # dtype kinds MPI_SUM adds as numpy does (not bool)


def sums_leafwise(program: Any) -> bool:
    """True when ``program.combine`` is the default leaf-wise sum."""
    return getattr(getattr(program, "combine", None), "__func__", None) is Program.combine


class Collective:
    """One pre-scheduled MPI collective: persistent (MPI-4) where MPI has it, else nonblocking.

    ``name`` is the mpi4py method family (``"Allgather"``, ``"Allreduce"``,
    ``"Bcast"``); ``args`` its arguments, the same every iteration.
    """

    __slots__ = ("request", "persistent", "_start")

    def __init__(self, comm: MPI.Intracomm, name: str, *args: Any):
        self.request: MPI.Request | None = None
        self.persistent = False
        init = getattr(comm, f"{name}_init", None)
        if init is not None:
            try:
                self.request = init(*args)
                self.persistent = True
            except (NotImplementedError, MPI.Exception):
                self.request = None
        if self.persistent:
            self._start = self.request.Start
        else:
            nonblocking = getattr(comm, "I" + name.lower())
            self._start = lambda: setattr(self, "request", nonblocking(*args))

    def start(self) -> None:
        self._start()

    def test(self) -> bool:
        return self.request.Test()

    def free(self) -> None:
        """Release a persistent request; call only when it is not active."""
        if self.persistent and self.request is not None:
            self.request.Free()
        self.request = None


class Reduction:
    """Every worker's partial in; the combined total, in fresh arrays, out on every worker.

    ``start(partial)`` packs and starts; ``test()`` progresses MPI and says
    whether the exchange is done; ``total()`` combines. The total is freshly
    allocated (an update may keep its arrays in the model).
    """

    kind = ""

    def __init__(self, layout: Layout, collectives: list[Collective], send: np.ndarray):
        self.layout, self.collectives, self.send = layout, collectives, send
        if len(collectives) == 1 and collectives[0].persistent:
            # The common case, called every iteration: straight to MPI.
            request = collectives[0].request
            self._start_all, self.test = request.Start, request.Test
        else:
            self._start_all = lambda: [c.start() for c in collectives]

    def start(self, partial: Any) -> None:
        self.layout.pack(partial, self.send)
        self._start_all()

    def test(self) -> bool:
        return all(collective.test() for collective in self.collectives)

    def total(self) -> Any:
        raise NotImplementedError

    def free(self) -> None:
        for collective in self.collectives:
            collective.free()


class GatherReduction(Reduction):
    """Allgather the packed partials, combine them in worker order on every worker."""

    kind = "gather"

    def __init__(self, comm: MPI.Intracomm, layout: Layout, combine: Callable[[Any, Any], Any] | None):
        send = layout.new_buffer()
        send[:] = 0  # padding between runs takes part in no sum, but stays defined
        self.n = comm.Get_size()
        self.gathered = np.zeros(self.n * layout.nbytes, dtype=np.uint8)
        super().__init__(layout, [Collective(comm, "Allgather", [send, MPI.BYTE], [self.gathered, MPI.BYTE])],
                         send)
        self.combine = combine
        # Summing: each dtype run of every worker's block, as one (W, count) array.
        blocks = self.gathered.reshape(self.n, layout.nbytes)
        runs = layout.runs if combine is None else ()
        if runs is None:
            raise ValueError("summing partials needs a Layout(..., by_dtype=True)")
        self._runs = [blocks[:, off: off + count * dt.itemsize].view(dt) for dt, off, count in runs]
        # Each worker's row of every run, sliced once: total() runs every iteration.
        self._rows = [tuple(stacked) for stacked in self._runs]

    def total(self) -> Any:
        if self.combine is None:
            # Row after row: ((p0 + p1) + p2) + ..., as the BSP driver adds; into fresh arrays.
            if self.n == 1:
                sums = [rows[0].copy() for rows in self._rows]
            elif self.n == 2:
                sums = [np.add(*rows) for rows in self._rows]
            else:
                sums = [np.add.reduce(stacked, axis=0, dtype=stacked.dtype) for stacked in self._runs]
            return self.layout.from_runs(sums)
        nbytes = self.layout.nbytes
        acc = self.layout.unpack(self.gathered[:nbytes].copy(), reused=False)
        for w in range(1, self.n):
            acc = self.combine(acc, self.layout.unpack(self.gathered, w * nbytes))
        return acc


class AllreduceReduction(Reduction):
    """MPI_SUM over each dtype run of the packed partial, in place on every worker."""

    kind = "allreduce"

    def __init__(self, comm: MPI.Intracomm, layout: Layout):
        send = layout.new_buffer()
        send[:] = 0
        self.result = np.zeros(layout.nbytes, dtype=np.uint8)
        collectives = [
            Collective(comm, "Allreduce", send[off: off + count * dt.itemsize].view(dt),
                       self.result[off: off + count * dt.itemsize].view(dt), MPI.SUM)
            for dt, off, count in layout.runs
        ]
        super().__init__(layout, collectives, send)
        self._runs = [self.result[off: off + count * dt.itemsize].view(dt) for dt, off, count in layout.runs]

    def total(self) -> Any:
        return self.layout.from_runs([run.copy() for run in self._runs])


def plan_reduction(comm: MPI.Intracomm, program: Any, layout: Layout) -> Reduction | None:
    """The reduction every worker of ``comm`` creates for partials of ``layout`` (``by_dtype=True``).

    Collective over ``comm`` in effect: every worker must call it with the
    same layout (the executor checks that first), and it decides the same
    way everywhere. None: use the reduce tree.
    """
    sums = sums_leafwise(program)
    if comm.Get_size() * layout.nbytes <= GATHER_LIMIT:
        return GatherReduction(comm, layout, None if sums else program.combine)
    if sums and all(dt.kind in _MPI_SUMMABLE for dt, _, _ in layout.runs):
        return AllreduceReduction(comm, layout)
    return None


class ScatterReduction:
    """A sharded job's reduction: the partial's coordinate vector by reduce-scatter, the rest summed.

    The vector holds ``k >= 1`` values per coordinate, coordinate-major
    (entries ``j k .. j k + k - 1`` are coordinate ``j``'s: a multinomial
    model's gradient, one value per class), so its length is ``k n`` and a
    worker's shard of it is contiguous. ``total()`` is the partial's
    structure with this worker's ``k (hi - lo)`` entries of the summed vector
    in place of the vector (``program.sharded_partial`` says where it is)
    and the other leaves summed whole. With a :class:`SparseExchange`
    ``plan`` (sparse partials), each worker sends only the values of the
    coordinates it touches to their owners (an all-to-all), and owners add
    them up in source order.
    """

    def __init__(self, comm: MPI.Intracomm, program: Any, partial: Any, shard: Shard,
                 plan: SparseExchange | None = None):
        where = program.sharded_partial
        vector = partial[where]
        if not (isinstance(vector, np.ndarray) and vector.dtype == np.float64 and vector.ndim == 1):
            raise ValueError(f"a sharded program's partial[{where!r}] must be a float64 vector of its "
                             f"{shard.n} coordinates, got {getattr(vector, 'dtype', type(vector).__name__)} "
                             f"of shape {np.shape(vector)}")
        k = vector.size // shard.n if shard.n else 1
        if k < 1 or vector.size != k * shard.n:
            raise ValueError(f"a sharded program's partial[{where!r}] must hold k values for each of its "
                             f"{shard.n} coordinates (a float64 vector of length k * {shard.n}, coordinate-major), "
                             f"got length {vector.size}")
        # A wrapper whose combine also merges other leaves (a stream's statistics) says its vector is summed.
        if not (sums_leafwise(program) or getattr(program, "sums_coordinates", False)):
            raise ValueError("a sharded program's partials must be summed (the default combine)")
        self.where, self.plan = where, plan
        self.kind = "scatter" if plan is None else "sparse-scatter"
        if plan is None:
            self.send, self.recv = np.zeros(k * shard.n), np.zeros(k * (shard.hi - shard.lo))
            self.scatter = Collective(comm, "Reduce_scatter", self.send, self.recv,
                                      [k * c for c in shard.counts], MPI.SUM)
        else:
            # The arguments hold the counts: kept with the collective, which may read them at every start.
            self._arguments = send, recv = plan.values_in(k)
            self.send, self.recv = send[0], recv[0]
            self.scatter = Collective(comm, "Alltoallv", send, recv)
            # Which entries of the vector go out, and where each received value adds up: k per coordinate.
            self._take = (plan.touched[:, None] * k + np.arange(k)).ravel()
            self._bins = (plan.local[:, None] * k + np.arange(k)).ravel()
            self._length = k * plan.shard_size
        rest = without_vector(partial, where)
        self.rest = plan_reduction(comm, program, Layout(rest, by_dtype=True)) if rest else None
        if rest and self.rest is None:
            raise ValueError("a sharded program's partial besides its coordinate vector must be small and summed")

    def start(self, partial: Any) -> None:
        if self.plan is None:
            np.copyto(self.send, partial[self.where])
        else:
            np.take(partial[self.where], self._take, out=self.send)
        self.scatter.start()
        if self.rest is not None:
            self.rest.start(without_vector(partial, self.where))

    def test(self) -> bool:
        done = self.scatter.test()
        return (self.rest is None or self.rest.test()) and done

    def total(self) -> Any:
        rest = self.rest.total() if self.rest is not None else ({} if isinstance(self.where, str) else ())
        if self.plan is None:
            summed = self.recv.copy()
        else:
            summed = np.bincount(self._bins, weights=self.recv, minlength=self._length)
        return with_vector(rest, self.where, summed)

    def free(self) -> None:
        self.scatter.free()
        if self.rest is not None:
            self.rest.free()


def _by_coordinate(key: str, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sharded key ``local`` reads, kept coordinate-major: an (n, rows) array holding each
    coordinate's values together (a shard of coordinates is then one contiguous piece, as the
    collectives need), and the key in its own shape as a view of it.

    One vector (n,) is one row; a multinomial model's (m, n) coefficients are m rows, and ``local``
    reads them as the transpose of the (n, m) array (``X @ coef.T`` then reads a C-contiguous array).
    """
    if start.dtype != np.float64 or start.ndim < 1 or start.size == 0:
        raise ValueError(f"sharded key {key!r}, which local reads, must be float64 rows of its coordinates, "
                         f"got {start.dtype} of shape {start.shape}")
    buffer = np.array(start.reshape(-1, start.shape[-1]).T, order="C")  # a copy: collectives write into it
    return buffer, buffer.T.reshape(start.shape)


def _rows_of(shard: np.ndarray, rows: int) -> np.ndarray:
    """This worker's shard of a key as (hi - lo, rows): its coordinates' values together."""
    return shard.reshape(rows, -1).T


class ShardGather:
    """After each update, every worker's shard of the keys ``local`` reads, whole on every worker.

    Each key is gathered coordinate-major (see :func:`_by_coordinate`): every
    worker's shard as (hi - lo, rows), into an (n, rows) array that ``local``
    reads in the key's own shape.
    """

    def __init__(self, comm: MPI.Intracomm, shard: Shard, keys: tuple[str, ...]):
        self.keys = keys
        self.full, self.send, self.rows, self.collectives = {}, {}, {}, []
        for key in keys:
            buffer, self.full[key] = _by_coordinate(key, np.asarray(shard.gathered[key]))
            rows = self.rows[key] = buffer.shape[1]
            self.send[key] = np.zeros((shard.hi - shard.lo, rows))
            counts = [rows * c for c in shard.counts]
            displacements = [rows * d for d in shard.displacements]
            self.collectives.append(Collective(comm, "Allgatherv", self.send[key],
                                               [buffer, counts, displacements, MPI.DOUBLE]))

    def start(self, model: dict) -> None:
        for key, collective in zip(self.keys, self.collectives):
            np.copyto(self.send[key], _rows_of(model[key], self.rows[key]))
            collective.start()

    def test(self) -> bool:
        return all([c.test() for c in self.collectives])

    def finish(self) -> None:
        """Nothing to do once the all-gather is complete (it lands in place)."""

    def view(self, model: dict) -> dict:
        """``model`` (this worker's shards) with the gathered keys whole: what ``local`` reads."""
        return {**model, **self.full}

    def free(self) -> None:
        for collective in self.collectives:
            collective.free()


class SparseExchange:
    """Which coordinates each worker touches, and who owns them: the index plan of a sparse sharded job.

    ``touched`` (sorted) are this worker's coordinates; they are grouped by
    owner already, since shards are contiguous. Built once per job with two
    small collectives (counts, then indices): ``send_counts[j]`` of this
    worker's coordinates belong to worker ``j``; ``recv_counts[i]`` of
    worker ``i``'s fall in this worker's shard, at ``local`` (shard-relative,
    in source order).
    """

    def __init__(self, comm: MPI.Intracomm, shard: Shard, touched: np.ndarray,
                 wait: Callable[[Callable[[], bool], str], Any]):
        edges = np.concatenate([shard.displacements, [shard.n]]).astype(np.int64)
        self.touched = touched
        self.send_counts = np.diff(np.searchsorted(touched, edges)).astype(np.int64)
        self.recv_counts = np.empty_like(self.send_counts)
        request = comm.Ialltoall(self.send_counts, self.recv_counts)
        if not request.Test():
            wait(request.Test, "the other workers' touched coordinates")
        self.send_displ = np.concatenate([[0], np.cumsum(self.send_counts)[:-1]]).astype(np.int64)
        self.recv_displ = np.concatenate([[0], np.cumsum(self.recv_counts)[:-1]]).astype(np.int64)
        indices = np.empty(int(self.recv_counts.sum()), dtype=np.int64)
        request = comm.Ialltoallv([touched, (self.send_counts, self.send_displ), MPI.INT64_T],
                                  [indices, (self.recv_counts, self.recv_displ), MPI.INT64_T])
        if not request.Test():
            wait(request.Test, "the other workers' touched coordinates")
        self.local = indices - shard.lo
        self.shard_size = shard.hi - shard.lo

    def values_in(self, k: int = 1) -> list:
        """Collective arguments: this worker's touched values out, its shard's values from all in
        (``k`` values per coordinate, coordinate-major)."""
        send, recv = np.zeros(k * len(self.touched)), np.zeros(k * len(self.local))
        return ([send, (k * self.send_counts, k * self.send_displ), MPI.DOUBLE],
                [recv, (k * self.recv_counts, k * self.recv_displ), MPI.DOUBLE])

    def values_out(self, k: int = 1) -> list:
        """The reverse: this shard's values each worker touches out, this worker's touched values in."""
        send, recv = np.zeros(k * len(self.local)), np.zeros(k * len(self.touched))
        return ([send, (k * self.recv_counts, k * self.recv_displ), MPI.DOUBLE],
                [recv, (k * self.send_counts, k * self.send_displ), MPI.DOUBLE])


class SparseShardPull:
    """After each update, the values of the coordinates each worker touches, from their owners
    (an all-to-all): ``local`` reads no others, so the rest of its full vector may stay stale.

    Keys are kept coordinate-major as in :class:`ShardGather`: a touched
    coordinate's values (one per row) travel together.
    """

    def __init__(self, comm: MPI.Intracomm, shard: Shard, keys: tuple[str, ...], plan: SparseExchange):
        self.keys, self.plan = keys, plan
        self.full, self.by_coordinate, self.rows, self.send, self.recv, self.collectives = {}, {}, {}, {}, {}, []
        self._arguments = []  # the collectives' arguments hold their counts: kept with them
        for key in keys:
            buffer, self.full[key] = _by_coordinate(key, np.asarray(shard.gathered[key]))
            self.by_coordinate[key] = buffer
            rows = self.rows[key] = buffer.shape[1]
            send, recv = plan.values_out(rows)
            self._arguments.append((send, recv))
            self.send[key], self.recv[key] = send[0].reshape(-1, rows), recv[0].reshape(-1, rows)
            self.collectives.append(Collective(comm, "Alltoallv", send, recv))

    def start(self, model: dict) -> None:
        for key, collective in zip(self.keys, self.collectives):
            np.take(_rows_of(model[key], self.rows[key]), self.plan.local, axis=0, out=self.send[key])
            collective.start()

    def test(self) -> bool:
        return all([c.test() for c in self.collectives])

    def finish(self) -> None:
        for key in self.keys:
            self.by_coordinate[key][self.plan.touched] = self.recv[key]

    def view(self, model: dict) -> dict:
        return {**model, **self.full}

    def free(self) -> None:
        for collective in self.collectives:
            collective.free()


#: A sharded job exchanges sparse partials and pulls only the touched
#: coordinates when every worker touches at most this share of them: the
#: all-to-all then moves less than the reduce-scatter and the all-gather,
#: enough to pay for adding the values up one by one.
SPARSE_DENSITY = 0.25


def touched_density(comm: MPI.Intracomm, n: int, touched: np.ndarray | None,
                    wait: Callable[[Callable[[], bool], str], Any]) -> float:
    """The largest share of the coordinates any worker touches (1.0 where one touches all)."""
    mine = np.array([1.0 if touched is None else len(touched) / max(n, 1)])
    out = np.empty(1)
    request = comm.Iallreduce(mine, out, MPI.MAX)
    if not request.Test():
        wait(request.Test, "the other workers' touched coordinates")
    return float(out[0])


class ShardedCoordinates(Coordinates):
    """Sums over all coordinates from every worker's shard: small nonblocking all-reduces, waited on
    with the job's timeout (``wait(test, what)``)."""

    sharded = True

    def __init__(self, comm: MPI.Intracomm, shard: Shard, wait: Callable[[Callable[[], bool], str], Any]):
        super().__init__(shard.n, shard.lo, shard.hi)
        self.comm, self.wait = comm, wait

    def _allreduce(self, parts: np.ndarray, op: MPI.Op) -> np.ndarray:
        out = np.empty_like(parts)
        request = self.comm.Iallreduce(parts, out, op)
        if not request.Test():
            self.wait(request.Test, "the other workers' sums over their shards")
        return out

    def dot(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(self._allreduce(np.array([a.ravel() @ b.ravel()]), MPI.SUM)[0])

    def sums(self, parts: np.ndarray) -> np.ndarray:
        return self._allreduce(np.ascontiguousarray(parts, dtype=np.float64), MPI.SUM)

    def max_abs(self, a: np.ndarray) -> float:
        # MPI_MAX need not carry a NaN through: send it as a flag beside the maximum.
        m = float(np.max(np.abs(a), initial=0.0)) if a.size else 0.0
        nan = m != m
        top, flag = self._allreduce(np.array([0.0 if nan else m, float(nan)]), MPI.MAX)
        return float("nan") if flag else float(top)


class ModelBroadcast:
    """The root's new model to every worker: a persistent Bcast of a header and the shared keys.

    Used where the update runs on the root only (workers on different
    platforms, whose updates might round differently). The header carries
    the version, the iteration and the stop flag.
    """

    HEADER = 3  # float64 slots: version, iteration, stop

    def __init__(self, comm: MPI.Intracomm, model: dict, keys: tuple[str, ...]):
        self.keys = keys
        self.layout = Layout({k: np.asarray(model[k]) for k in keys})
        self.offset = self.HEADER * 8
        self.buffer = np.zeros(self.offset + self.layout.nbytes, dtype=np.uint8)
        self.header = self.buffer[: self.offset].view(np.float64)
        self.collective = Collective(comm, "Bcast", [self.buffer, MPI.BYTE], 0)

    def start(self, model: dict | None = None, version: int = 0, iteration: int = 0, stop: bool = False) -> None:
        """Start the broadcast; the root passes the model it made."""
        if model is not None:
            self.header[:] = (version, iteration, float(stop))
            self.layout.pack({k: model[k] for k in self.keys}, self.buffer, self.offset)
        self.collective.start()

    def test(self) -> bool:
        return self.collective.test()

    def received(self) -> tuple[dict, int, bool]:
        """``(shared model, version, stop)``: the model's arrays are views of the buffer.

        They stay valid until the next broadcast starts, which happens only
        after this worker's next ``local`` has read them.
        """
        version, _, stop = self.header
        return self.layout.unpack(self.buffer, self.offset), int(version), bool(stop)

    def free(self) -> None:
        self.collective.free()
