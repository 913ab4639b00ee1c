"""What every source has: a picklable description opened on the workers, its partitions' readers, their chunks."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from .records import RecordFormat


@dataclass
class Chunk:
    """Records read from one partition: rows (n, width), malformed count, arrival times (s, epoch)."""

    rows: np.ndarray
    n_bad: int
    oldest: float
    newest: float


class _Arrivals:
    """When bytes (or rows) at a position were first seen: the arrival of a record."""

    def __init__(self) -> None:
        self.marks: deque[tuple[int, float]] = deque()  # (end position, time first seen)
        self.seen = 0

    def saw(self, end: int) -> None:
        if end > self.seen:
            self.marks.append((end, time.time()))
            self.seen = end

    def span(self, start: int, end: int) -> tuple[float, float]:
        """Arrival of the first and last record in ``[start, end)``; forgets what is before ``end``."""
        oldest = newest = time.time()
        first = True
        for mark_end, t in self.marks:
            if mark_end > start and first:
                oldest, first = t, False
            if mark_end >= end:
                newest = t
                break
        while self.marks and self.marks[0][0] <= end:
            self.marks.popleft()
        return oldest, newest


class PartitionReader:
    """One partition of a source on one worker. ``offset`` is JSON; ``read`` never blocks."""

    ended = False

    @property
    def offset(self) -> Any:
        raise NotImplementedError

    def read(self, max_records: int) -> Chunk | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass
class Source:
    """Base of the source descriptions (picklable; opened on the workers)."""

    def open(self, fmt: RecordFormat, partition: int, n_partitions: int, offset: Any) -> PartitionReader:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def partition_key(p: int) -> str:
    return f"p{p}"


def worker_partitions(worker: int, n_workers: int, n_partitions: int) -> list[int]:
    """The partitions worker ``worker`` reads: ``p % n_workers == worker``."""
    return [p for p in range(n_partitions) if p % n_workers == worker]
