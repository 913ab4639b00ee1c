"""The algorithm contract: what runs on a partition, how partials combine, how the model updates.

Programs live in ``drizzle_ml.algorithms`` and know nothing of MPI; the engine
never imports them (it receives program objects from the caller and ships them
to workers by pickling, once per job).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Model = dict[str, np.ndarray]


@dataclass
class Partition:
    """One worker's rows of a dataset.

    X : ndarray of shape (n_rows, n_features), or scipy.sparse CSR matrix
    y : ndarray of shape (n_rows,) or None
    sample_weight : ndarray of shape (n_rows,) or None
    row_offset : index of this partition's first row in the whole dataset
    n_total : number of rows in the whole dataset
    worker : 0-based index of the worker holding the partition
    cache : scratch for quantities a program derives from the partition's data
        alone (row norms, a transposed copy). It lives as long as the worker
        keeps the partition, across iterations and jobs, and must never hold
        model-dependent values. Name keys after the program to avoid clashes.
    """

    X: Any
    y: np.ndarray | None = None
    sample_weight: np.ndarray | None = None
    row_offset: int = 0
    n_total: int = 0
    worker: int = 0
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_rows(self) -> int:
        return self.X.shape[0]


class Coordinates:
    """Where ``update`` finds a program's coordinate vectors: all of them (replicated, this class),
    or one worker's contiguous shard of them (the engine's sharded subclass).

    An ``update`` that may run sharded computes anything over all coordinates
    through this object: dot products, norms, maxima. Replicated, they are
    plain numpy; sharded, each is this worker's part combined with the other
    workers' parts, identical on every worker. ``lo``/``hi`` bound this
    worker's coordinates (of ``n``; ``hi`` is None when replicated).
    """

    sharded = False

    def __init__(self, n: int | None = None, lo: int = 0, hi: int | None = None):
        self.n, self.lo, self.hi = n, lo, hi

    def shard(self, full: np.ndarray) -> np.ndarray:
        """This worker's coordinates of a full-length array (its last axis)."""
        return full if self.hi is None else full[..., self.lo:self.hi]

    def dot(self, a: np.ndarray, b: np.ndarray) -> float:
        """``a · b`` over all coordinates."""
        return float(a.ravel() @ b.ravel())

    def sums(self, parts: np.ndarray) -> np.ndarray:
        """Several sums over all coordinates at once, from this worker's parts (a small float64 array)."""
        return parts

    def max_abs(self, a: np.ndarray) -> float:
        """``max |a_i|`` over all coordinates (0 for none; NaN if any is NaN)."""
        # The ufunc's own reduce: np.max's dispatch layers cost more than the work on small vectors.
        return float(np.maximum.reduce(np.abs(a), axis=None)) if a.size else 0.0


#: The replicated case, where every worker holds every coordinate.
REPLICATED = Coordinates()


class Program:
    """Base class of an iterative algorithm run by the engine.

    A program has three pure parts:

    ``local(model, partition) -> partial``
        The work on one partition, vectorized. ``model`` holds only the keys in
        :attr:`shared`. A partial is a numeric array, scalar, or a tuple/list/dict
        of them, whose structure, shapes and dtypes do not depend on the partition
        (it crosses the reduce tree as raw bytes). Counts the update needs (rows,
        weight sums) belong in the partial.
    ``combine(a, b) -> partial``
        Associative merge of two partials. The default sums them leaf by leaf,
        in place into ``a``; ``b`` may be a view of a receive buffer and must not
        be kept.
    ``update(model, total, iteration) -> (model, metrics)``
        The driver-free step that makes the next model version from the
        combined partial of all workers. It runs on the tree root. It must not
        modify the input model's read-only arrays in place (older versions may
        still be read: the engine passes those read-only); an array it may
        write to is its own to reuse (a large optimizer memory need not be
        copied every iteration). It returns a new dict with the same keys,
        shapes and dtypes and a dict of float metrics. ``metrics["converged"] = True`` stops the job
        after this iteration.
    """

    #: Model keys that ``local`` reads and that flow down the tree each
    #: iteration; ``None`` means all keys. Other keys (optimizer state) stay
    #: on the root and reach the driver with the group report.
    shared: tuple[str, ...] | None = None

    #: Model keys whose last axis is one vector of coordinates (weights,
    #: gradients, optimizer memory), which the engine may shard across the
    #: workers when the model is large: each worker then holds and updates
    #: coordinates ``lo:hi`` of these keys, and ``update`` sees only those
    #: (see :class:`Coordinates`). Empty: the model is always replicated.
    sharded: tuple[str, ...] = ()
    #: Where the partial holds its coordinate vector (a top-level index or key):
    #: a 1-D float64 array of k >= 1 values per coordinate, coordinate-major
    #: (entries j k .. j k + k - 1 are coordinate j's: a model with m rows of
    #: coordinates gives ``G.T.reshape(-1)``). When the model is sharded, it is
    #: summed by a reduce-scatter, each worker receiving its shard (k (hi - lo)
    #: values, in the same order).
    sharded_partial: int | str | None = None

    #: Set by the engine for a sharded job (see :class:`Coordinates`).
    coordinates: Coordinates = REPLICATED

    def local(self, model: Model, partition: Partition) -> Any:
        raise NotImplementedError

    def combine(self, a: Any, b: Any) -> Any:
        return sum_partials(a, b)

    def touched_coordinates(self, partition: Partition) -> np.ndarray | None:
        """For a sharded model: the coordinates ``local`` reads and can make nonzero on this partition
        (sorted, int64), or None for all of them. Sparse rows touch few: the engine then exchanges
        just those values instead of whole vectors. Derived from the data alone (cache it)."""
        return None

    def update(self, model: Model, total: Any, iteration: int) -> tuple[Model, dict[str, float]]:
        raise NotImplementedError


def sum_partials(a: Any, b: Any) -> Any:
    """Leaf-wise ``a + b`` over nested arrays/scalars, in place into ``a`` where possible."""
    if isinstance(a, dict):
        return {k: sum_partials(a[k], b[k]) for k in a}
    if isinstance(a, (tuple, list)):
        return type(a)(sum_partials(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) and a.ndim and a.flags.writeable:
        np.add(a, b, out=a)
        return a
    return a + b
