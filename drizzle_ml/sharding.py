"""Sharded model state: a large model's coordinates split across the workers (parameter-server style).

A program that declares :attr:`~drizzle_ml.program.Program.sharded` keys
(coordinate vectors along their last axis: weights, gradients, optimizer
memory) may run sharded: worker ``i`` holds coordinates ``lo_i:hi_i`` of
those keys (contiguous shards, as equal as they can be) and updates only
them. Its partial's coordinate vector is summed by a reduce-scatter, so each
worker receives just its shard of the total; the keys ``local`` reads are
all-gathered after each update; sums over all coordinates inside ``update``
(dot products, norms) combine every worker's part
(:class:`~drizzle_ml.program.Coordinates`). No rank ever holds the whole
optimizer state, and the update's work is split W ways.

The driver decides per job (:func:`choose`): ``sharding="auto"`` shards a
program that can be sharded once its coordinates number at least
:data:`MIN_COORDINATES`; ``"sharded"`` and ``"replicated"`` force a choice.
A version is then the set of shards at one iteration: the group reports
carry each worker's shard, and the driver assembles the whole model
(:func:`assemble`) for the store, checkpoints and the result, so a resume on
another number of workers simply shards it anew.

This module is pure (no MPI); the collectives are in :mod:`drizzle_ml.collectives`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .protocol import Zeros

SHARDING = ("auto", "replicated", "sharded")
#: ``sharding="auto"`` shards a model with at least this many coordinates:
#: below it the update's vector work is cheaper than the extra small
#: all-reduces a sharded update makes.
MIN_COORDINATES = 1 << 16


@dataclass(frozen=True)
class Shard:
    """One worker's part of a sharded job: ``keys`` are sharded, its coordinates are ``lo:hi`` of ``n``.

    ``counts`` are every worker's shard sizes (in worker order). ``gathered``
    holds, at the job's start, the full arrays of the keys ``local`` reads.
    """

    keys: tuple[str, ...]
    lo: int
    hi: int
    n: int
    counts: tuple[int, ...]
    gathered: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def displacements(self) -> tuple[int, ...]:
        return tuple(int(d) for d in np.concatenate([[0], np.cumsum(self.counts)[:-1]]))


def bounds(n: int, n_workers: int) -> list[tuple[int, int]]:
    """Contiguous shards of ``n`` coordinates over ``n_workers``, sizes differing by at most one."""
    edges = [i * n // n_workers for i in range(n_workers + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _shape(value: Any) -> tuple[int, ...]:
    return value.shape if isinstance(value, Zeros) else np.shape(value)


def n_coordinates(model: dict, keys: tuple[str, ...]) -> int:
    """The length of the sharded keys' last axis (the same for all of them)."""
    lengths = {k: _shape(model[k])[-1] if len(_shape(model[k])) else None for k in keys}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        raise ValueError(f"program.sharded keys must share their last axis (the coordinates), got {lengths}")
    return int(next(iter(lengths.values())))


def choose(program: Any, model: dict, sharding: str, n_workers: int, possible: bool = True) -> tuple[str, ...]:
    """The keys to shard in this job (empty: replicate the model).

    ``possible`` is False where the job cannot run sharded (BSP,
    updates on the root only, the point-to-point reduce tree): ``"sharded"``
    then falls back to replicated, as ``"auto"`` does.
    """
    if sharding not in SHARDING:
        raise ValueError(f"sharding must be one of {SHARDING}, got {sharding!r}")
    keys = tuple(getattr(program, "sharded", ()) or ())
    if sharding == "replicated" or not keys or not possible:
        if sharding == "sharded" and not keys:
            raise ValueError(f"{type(program).__name__} cannot shard its model (it declares no sharded keys)")
        return ()
    missing = [k for k in keys if k not in model]
    if missing:
        raise KeyError(f"program.sharded names {missing}, which the model does not have")
    n = n_coordinates(model, keys)
    if sharding == "auto" and (n < MIN_COORDINATES or n_workers < 2):
        return ()
    return keys


def split(model: dict, shard_keys: tuple[str, ...], lo: int, hi: int) -> dict:
    """A worker's model: the sharded keys' coordinates ``lo:hi`` (copies), the other keys whole.

    A :class:`~drizzle_ml.protocol.Zeros` (a message's all-zero array) stays one, of the shard's shape.
    """
    def part(v: Any) -> Any:
        if isinstance(v, Zeros):
            return Zeros(v.shape[:-1] + (hi - lo,), v.dtype)
        return np.array(v[..., lo:hi])

    return {k: (part(v) if k in shard_keys else v) for k, v in model.items()}


def assemble(replicated: dict, shards: list[dict]) -> dict:
    """The whole model from the replicated keys and every worker's shard, in worker order."""
    model = dict(replicated)
    for key in shards[0]:
        model[key] = np.concatenate([s[key] for s in shards], axis=-1)
    return model
