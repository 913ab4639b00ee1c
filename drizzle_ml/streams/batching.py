"""Micro-batches: how a worker cuts its partitions of a stream into batches, and what a stream job carries."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..program import Partition
from .base import Chunk, PartitionReader, Source, partition_key
from .records import RecordFormat


@dataclass
class Batching:
    """How micro-batches are cut, per worker.

    max_batch : records per worker per micro-batch (a batch is cut when it has them).
    interval : seconds after the previous cut at which a batch is cut with what
        it has (None: only by size, which makes the batches, and so the model,
        independent of timing).
    idle_timeout : a worker whose partitions brought nothing for this long is
        idle; the stream ends when every worker is idle (None: only finished
        sources are idle).
    """

    max_batch: int = 10_000
    interval: float | None = 0.01
    idle_timeout: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, (int, np.integer)) \
                or self.max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {self.max_batch!r}")
        for name in ("interval", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")


@dataclass
class Batch(Partition):
    """One worker's micro-batch: a :class:`Partition` plus what the stream knows of it.

    n_bad : malformed records skipped. idle : this worker's partitions are
    finished or quiet (see :class:`Batching`). oldest, newest : arrival times
    (seconds since the epoch) of its first and last record (inf/-inf when empty).
    """

    n_bad: int = 0
    idle: bool = False
    oldest: float = float("inf")
    newest: float = float("-inf")


class StreamReader:
    """A worker's partitions of a stream, cut into micro-batches.

    ``wait(test)`` is the worker's bounded wait (it also serves control
    messages); the reader polls its sources every ``poll_interval`` seconds.
    """

    def __init__(self, source: Source, fmt: RecordFormat, batching: Batching, partitions: Iterable[int],
                 n_partitions: int, offsets: dict[str, Any], worker: int, poll_interval: float = 2.5e-4):
        self.fmt, self.batching, self.worker = fmt, batching, worker
        self.readers: dict[int, PartitionReader] = {}
        try:
            for p in partitions:
                self.readers[p] = source.open(fmt, p, n_partitions, offsets.get(partition_key(p)))
        except BaseException:
            self.close()
            raise
        self.poll_interval = poll_interval
        self.last_cut = time.monotonic()
        self.last_record = time.monotonic()

    def offsets(self) -> dict[str, Any]:
        return {partition_key(p): r.offset for p, r in self.readers.items()}

    def _ended(self) -> bool:
        return all(r.ended for r in self.readers.values())

    def next_batch(self, wait: Callable[[Callable[[], bool], float], Any]) -> Batch:
        """The next micro-batch: cut by size, interval, or idleness, whichever comes first."""
        want = self.batching.max_batch
        chunks: list[Chunk] = []
        have = 0
        idle = False

        def ready() -> bool:
            nonlocal have, idle
            for reader in self.readers.values():
                while have < want:
                    chunk = reader.read(want - have)
                    if chunk is None:
                        break
                    chunks.append(chunk)
                    have += chunk.rows.shape[0] + chunk.n_bad
                    if chunk.rows.shape[0] or chunk.n_bad:
                        self.last_record = time.monotonic()
            if have >= want:
                return True
            now = time.monotonic()
            if self._ended() or (self.batching.idle_timeout is not None
                                 and now - self.last_record >= self.batching.idle_timeout):
                idle = True
                return True
            return self.batching.interval is not None and now - self.last_cut >= self.batching.interval

        if not ready():
            wait(ready, self.poll_interval)
        self.last_cut = time.monotonic()
        n_features = self.fmt.n_features or 0
        # One copy of the rows: features and target cut from each chunk straight into the batch.
        full = [c.rows for c in chunks if c.rows.shape[0]]
        if full and sp.issparse(full[0]):  # hashed records: CSR, the target in the last column
            rows = sp.vstack(full, format="csr")
            X = rows[:, :n_features]
            y = rows[:, [n_features]].toarray().ravel() if self.fmt.has_target else None
        else:
            X = np.concatenate([r[:, :n_features] for r in full]) if full else np.empty((0, n_features))
            y = None
            if self.fmt.has_target:
                y = np.concatenate([r[:, n_features] for r in full]) if full else np.empty(0)
        return Batch(
            X=X, y=y, worker=self.worker, n_bad=sum(c.n_bad for c in chunks), idle=idle,
            oldest=min((c.oldest for c in chunks if c.rows.shape[0]), default=float("inf")),
            newest=max((c.newest for c in chunks if c.rows.shape[0]), default=float("-inf")),
        )

    def close(self) -> None:
        for reader in self.readers.values():
            try:
                reader.close()
            except Exception:
                pass


@dataclass
class StreamSpec:
    """What a stream job's workers need: the source, the record format, batching, offsets."""

    source: Source
    fmt: RecordFormat
    batching: Batching
    n_partitions: int
    offsets: dict[str, Any] = field(default_factory=dict)
