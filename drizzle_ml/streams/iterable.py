"""Records from a Python iterable held by the driver and shipped with the source (tests, notebooks)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import Chunk, PartitionReader, Source
from .records import RecordFormat


class _IterableReader(PartitionReader):
    """Items ``i`` with ``i % n_partitions == partition`` of a sequence shipped to the worker."""

    def __init__(self, source: IterableSource, fmt: RecordFormat, partition: int, n_partitions: int,
                 offset: Any):
        self.items, self.fmt = source.items, fmt
        self.partition, self.n_partitions = partition, n_partitions
        self.count = int(offset or 0)  # items of this partition taken
        self.ended = False

    @property
    def offset(self) -> int:
        return self.count

    def read(self, max_records: int) -> Chunk | None:
        start = self.partition + self.count * self.n_partitions
        if start >= len(self.items):
            self.ended = True
            return None
        stop = min(len(self.items), start + max(max_records or len(self.items), 1) * self.n_partitions)
        picked = self.items[start:stop:self.n_partitions]
        now = time.time()
        rows, item_of_row, n_bad = [], [], 0
        for i, item in enumerate(picked):
            try:
                values = np.asarray(_flatten(item, self.fmt.has_target), dtype=np.float64)
            except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an int beyond a float's range
                n_bad += 1
                self.fmt.fail(f"item {start + i * self.n_partitions}", str(exc))
                continue
            if self.fmt.n_features is None:
                self.fmt.n_features = values.size - int(self.fmt.has_target)
            if values.size != self.fmt.width:
                n_bad += 1
                self.fmt.fail(f"item {start + i * self.n_partitions}",
                              f"{values.size} values, expected {self.fmt.width}")
                continue
            rows.append(values)
            item_of_row.append(start + i * self.n_partitions)
        block = np.array(rows, dtype=np.float64).reshape(len(rows), self.fmt.width or 0)
        block, more = self.fmt.check_rows(block, lambda j: f"item {item_of_row[j]}")
        self.count += len(picked)
        return Chunk(block, n_bad + more, now, now)


def _flatten(item: Any, has_target: bool) -> list[float]:
    if isinstance(item, tuple) and len(item) == 2 and has_target:
        x, y = item
        return [*np.ravel(np.asarray(x, dtype=np.float64)).tolist(), float(y)]
    return np.ravel(np.asarray(item, dtype=np.float64)).tolist()


@dataclass
class IterableSource(Source):
    """A Python sequence of records (arrays, lists, or ``(x, y)`` pairs), for tests and notebooks.

    It is pickled to the workers, so it must be a sequence (list, array),
    not a generator; item ``i`` belongs to partition ``i % n_partitions``.
    """

    items: Sequence[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not hasattr(self.items, "__getitem__") or not hasattr(self.items, "__len__"):
            raise TypeError(
                f"IterableSource needs a sequence (list, tuple, array) that can be sent to the "
                f"workers, got {type(self.items).__name__}; use list(...) on a generator"
            )

    def open(self, fmt, partition, n_partitions, offset):
        return _IterableReader(self, fmt, partition, n_partitions, offset)

    def describe(self) -> str:
        return f"iterable of {len(self.items)} records"

    @property
    def follow(self) -> bool:
        return False
