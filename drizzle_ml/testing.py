"""Small programs that exercise the engine in tests and examples.

They live in the package (not in ``tests/``) because workers unpickle programs
by module path, and every worker can import ``drizzle_ml.testing``.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import scipy.sparse as sp

from .program import Partition, Program


class TreeSum(Program):
    """One pass: the model becomes the column sums and row count of the whole dataset."""

    def local(self, model, part: Partition):
        X = part.X
        sums = np.asarray(X.sum(axis=0)).ravel() if sp.issparse(X) else X.sum(axis=0)
        return {"sums": np.array(sums, dtype=np.float64), "rows": np.array([float(X.shape[0])])}

    def update(self, model, total, iteration):
        return {"sums": np.array(total["sums"]), "rows": np.array(total["rows"])}, {"converged": True}


class Counter(Program):
    """``x`` grows by one per update, so it always equals the model version.

    ``stop_at``: report convergence at that iteration. ``fail_at``/``fail_worker``:
    raise ValueError in ``local`` on that worker at that iteration.
    ``kill_at``/``kill_worker``: SIGKILL the worker process there.
    ``sleep``: seconds each ``local`` sleeps; ``update_sleep``: seconds each ``update`` sleeps.
    """

    def __init__(self, stop_at=None, fail_at=None, fail_worker=None, kill_at=None, kill_worker=None,
                 sleep=0.0, update_sleep=0.0):
        self.stop_at, self.fail_at, self.fail_worker = stop_at, fail_at, fail_worker
        self.kill_at, self.kill_worker, self.sleep = kill_at, kill_worker, sleep
        self.update_sleep = update_sleep

    def local(self, model, part: Partition):
        it = int(model["x"][0])
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail_at == it and self.fail_worker == part.worker:
            raise ValueError(f"injected failure at iteration {it}")
        if self.kill_at == it and self.kill_worker == part.worker:
            os.kill(os.getpid(), signal.SIGKILL)
        return np.array([float(part.n_rows)])

    def update(self, model, total, iteration):
        if self.update_sleep:
            time.sleep(self.update_sleep)
        x = model["x"] + 1.0
        return {"x": x, "seen": np.array([iteration], dtype=np.float64)}, {
            "rows": float(total[0]),
            "converged": self.stop_at is not None and iteration >= self.stop_at,
        }


class LeastSquaresGD(Program):
    """Least squares by gradient descent on ``coef``; a small non-trivial float workload."""

    def __init__(self, learning_rate=0.1):
        self.learning_rate = learning_rate

    def local(self, model, part: Partition):
        r = part.X @ model["coef"] - part.y
        return np.asarray(part.X.T @ r, dtype=np.float64), np.array([0.5 * float(r @ r), part.n_rows])

    def update(self, model, total, iteration):
        grad, (loss, n) = total
        return {"coef": model["coef"] - self.learning_rate * grad / n}, {"loss": loss / n}


class UnevenPartial(Program):
    """A broken program: worker 1's partial has ``extra`` more (or fewer) entries than worker 0's."""

    def __init__(self, extra: int):
        self.extra = extra

    def local(self, model, part: Partition):
        return np.ones(2 + (self.extra if part.worker == 1 else 0))

    def update(self, model, total, iteration):
        return {"x": model["x"] + 1.0}, {}


class StreamSum(Program):
    """Accumulates every record it is given: column sums, target sum, record count.

    On a stream, the model after the last micro-batch says exactly which
    records were learnt: the sums equal the input's once every record is in
    the model exactly once. ``sleep``: seconds each ``local`` sleeps.
    """

    def __init__(self, sleep: float = 0.0):
        self.sleep = sleep

    @staticmethod
    def initial_model(n_features: int) -> dict[str, np.ndarray]:
        return {"sums": np.zeros(n_features), "ysum": np.zeros(1), "rows": np.zeros(1)}

    def local(self, model, part: Partition):
        if self.sleep:
            time.sleep(self.sleep)
        y = 0.0 if part.y is None else float(np.sum(part.y))
        return {"sums": part.X.sum(axis=0).astype(np.float64), "ysum": np.array([y]),
                "rows": np.array([float(part.n_rows)])}

    def update(self, model, total, iteration):
        return {k: model[k] + total[k] for k in ("sums", "ysum", "rows")}, {}


class MergeMax(Program):
    """A non-sum combine: the model becomes the element-wise maximum of the workers' partials.

    Worker ``w``'s partial at iteration ``i`` is ``values(w, i, size)``, so
    the expected model is known without the engine. ``size`` entries: small
    partials are gathered, large ones go through the reduce tree.
    """

    def __init__(self, size: int):
        self.size = int(size)

    @staticmethod
    def values(worker: int, iteration: int, size: int) -> np.ndarray:
        return np.cos(np.arange(size) * (worker + 1.0) + iteration)

    def local(self, model, part: Partition):
        return self.values(part.worker, int(model["it"][0]), self.size)

    def combine(self, a, b):
        return np.maximum(a, b)

    def update(self, model, total, iteration):
        return {"m": np.array(total), "it": model["it"] + 1.0}, {}


class DivergentReplica(Program):
    """A broken program whose update differs on ``worker``: its replica drifts by 1e-12 per step.

    ``local`` notes the worker it runs on (``update`` is not told), so that
    replicated updates disagree; the engine's digest check must catch it.
    """

    def __init__(self, worker: int):
        self.worker, self.here = int(worker), -1

    def local(self, model, part: Partition):
        self.here = part.worker
        return np.array([float(part.n_rows)])

    def update(self, model, total, iteration):
        drift = 1e-12 if self.here == self.worker else 0.0
        return {"x": model["x"] + total + drift}, {}


class ShardedMomentumGD(Program):
    """Least squares by gradient descent with momentum, written to run sharded or replicated.

    ``w`` (read by ``local``) and the momentum ``m`` are coordinate vectors the
    engine may shard; ``t`` counts updates on every worker. Metrics use sums
    over all coordinates (``gnorm``, ``gmax``), so a sharded run exercises
    :class:`~drizzle_ml.program.Coordinates`. ``nan_at`` makes the gradient
    NaN at that iteration on the shard holding coordinate 0; ``partial_dtype``
    other than float64 makes a partial a sharded job must refuse.
    """

    shared = ("w",)
    sharded = ("w", "m")
    sharded_partial = 0

    def __init__(self, learning_rate: float = 0.1, momentum: float = 0.9, nan_at: int | None = None,
                 partial_dtype: type = np.float64):
        self.learning_rate, self.momentum, self.nan_at = learning_rate, momentum, nan_at
        self.partial_dtype = partial_dtype

    @staticmethod
    def initial_model(n_features: int) -> dict[str, np.ndarray]:
        return {"w": np.zeros(n_features), "m": np.zeros(n_features), "t": np.zeros(1)}

    def local(self, model, part: Partition):
        r = part.X @ model["w"] - part.y
        return (np.asarray(part.X.T @ r, dtype=self.partial_dtype), np.array([0.5 * float(r @ r), float(part.n_rows)]))

    def update(self, model, total, iteration):
        g, (loss, n) = total
        g = g / n
        if iteration == self.nan_at and self.coordinates.lo == 0:
            g[0] = np.nan
        m = self.momentum * model["m"] + g
        c = self.coordinates
        metrics = {"loss": loss / n, "gnorm": c.dot(g, g) ** 0.5, "gmax": c.max_abs(g)}
        return {"w": model["w"] - self.learning_rate * m, "m": m, "t": model["t"] + 1}, metrics
