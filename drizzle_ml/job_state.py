"""A job's state at group boundaries: committed in memory at every boundary, written to its checkpoints at some.

:class:`JobState` is everything a job needs to continue from a group
boundary: the model (optimizer state included), its version and iteration,
the group sizer's state and, for a stream, every partition's offset.
:meth:`JobState.restore` rebuilds it from a checkpoint (as Horovod elastic's
``State`` carries commit and restore). :class:`Commits` is the group loop's
side: at each boundary it commits the state and, every ``checkpoint_every``
commits (or seconds) and always at the job's last, writes a checkpoint in the
background while the next group runs.

This is an engine module: it imports nothing from ``drizzle_ml.algorithms``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checkpoint import Checkpoint, CheckpointStore


@dataclass
class JobState:
    """A job at a group boundary: what a resume or a recovery continues from.

    ``model`` holds the program's whole state (an optimizer's memory too);
    ``tuner`` is the group sizer's state; ``offsets`` and ``n_partitions``
    belong to streams; ``converged`` is what the last commit said.
    """

    model: Mapping[str, np.ndarray]  # a sharded job's is joined when read (sharding.ShardedVersion)
    version: int = 0
    iteration: int = 0
    tuner: dict | None = None
    offsets: dict[str, Any] = field(default_factory=dict)
    n_partitions: int | None = None
    converged: bool = False

    def commit(self, version: int, model: Mapping[str, np.ndarray], iteration: int, tuner: dict | None,
               offsets: dict[str, Any] | None, converged: bool) -> None:
        """The group loop's commit at a group boundary (the model as the store holds it, read-only)."""
        self.version, self.model, self.iteration, self.tuner = version, model, iteration, tuner
        self.offsets = dict(offsets or {})
        self.converged = converged

    @classmethod
    def restore(cls, checkpoint: Checkpoint) -> JobState:
        """The state a checkpoint holds."""
        n_partitions = checkpoint.params.get("n_partitions")
        return cls(dict(checkpoint.model), checkpoint.version, checkpoint.iteration, checkpoint.tuner,
                   dict(checkpoint.stream_offsets), None if n_partitions is None else int(n_partitions),
                   bool(checkpoint.metrics.get("converged")))


def parse_checkpoint_every(every: int | str) -> tuple[int, float | None]:
    """``checkpoint_every``: an int counts groups (commits); ``"30s"`` is an interval in seconds."""
    if isinstance(every, str) and every.endswith("s"):
        try:
            seconds = float(every[:-1])
        except ValueError:
            seconds = -1.0
        if seconds > 0:
            return 1, seconds
    elif not isinstance(every, bool) and isinstance(every, (int, np.integer)) and every >= 1:
        return int(every), None
    raise ValueError(f"checkpoint_every must be an integer >= 1 (groups) or seconds like '30s', got {every!r}")


class Commits:
    """A job's commits: ``state`` at every group boundary; a checkpoint every ``every``-th
    commit (or once per interval of seconds), and always the last one."""

    def __init__(self, state: JobState | None = None, checkpoints: CheckpointStore | None = None,
                 every: int | str = 1, params: dict | None = None):
        self.every, self.seconds = parse_checkpoint_every(every)
        self.state, self.checkpoints, self.params = state, checkpoints, params or {}
        self.commits = 0
        self.written_at = time.monotonic()

    def due(self, last: bool) -> bool:
        """Whether this commit is written: the last one, every ``every``-th, or once per interval."""
        self.commits += 1
        if self.seconds is not None:
            due = time.monotonic() - self.written_at >= self.seconds
        else:
            due = self.commits % self.every == 0
        return last or due

    def commit(self, version: int, model: Mapping[str, np.ndarray], iteration: int, tuner: dict, metrics: dict,
               last: bool, offsets: dict | None = None) -> None:
        if self.state is not None:  # what a recovery continues from
            self.state.commit(version, model, iteration, tuner, offsets, bool(metrics.get("converged")))
        if self.checkpoints is None or not self.due(last):
            return
        self.written_at = time.monotonic()
        self.checkpoints.save_async(Checkpoint(
            job_key=self.checkpoints.job_key, version=version, iteration=iteration, model=dict(model),
            tuner=tuner, params=self.params, stream_offsets=dict(offsets or {}),
            metrics={k: float(v) for k, v in metrics.items()} | {"last": float(last)},
        ))

    def finish(self, raise_errors: bool = True) -> None:
        """Wait for the checkpoint being written (errors raise unless the job failed already)."""
        if self.checkpoints is None:
            return
        try:
            self.checkpoints.flush(timeout=60.0)
        except Exception:
            if raise_errors:
                raise
