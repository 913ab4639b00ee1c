"""The pre-scheduled reduce tree over workers.

Fixed when a job starts: worker ``i``'s parent is ``(i - 1) // fanout`` and its
children are ``fanout * i + 1 .. fanout * i + fanout``; worker 0 is the root,
where the model update runs. Because the shape and the child order are fixed,
every reduction associates the same way and results are bit-identical across
runs with the same worker count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReduceTree:
    n_workers: int
    fanout: int = 4

    def __post_init__(self) -> None:
        if self.n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {self.n_workers}")
        if self.fanout < 1:
            raise ValueError(f"fanout must be >= 1, got {self.fanout}")

    def parent(self, worker: int) -> int | None:
        """Parent of ``worker``, or None for the root."""
        return None if worker == 0 else (worker - 1) // self.fanout

    def children(self, worker: int) -> list[int]:
        """Children of ``worker`` in their fixed combine order."""
        first = self.fanout * worker + 1
        return list(range(first, min(first + self.fanout, self.n_workers)))

    @property
    def depth(self) -> int:
        """Number of edges on the longest root-to-leaf path."""
        depth, worker = 0, self.n_workers - 1
        while worker:
            worker = (worker - 1) // self.fanout
            depth += 1
        return depth
