"""Sharded model state: a large model's coordinates split across the workers (parameter-server style).

A program that declares :attr:`~drizzle_ml.program.Program.sharded` keys
(coordinate vectors along their last axis: weights, gradients, optimizer
memory) may run sharded: worker ``i`` holds coordinates ``lo_i:hi_i`` of
those keys (contiguous shards, as equal as they can be) and updates only
them. Its partial's coordinate vector (k values per coordinate,
coordinate-major, for keys of k rows) is summed by a reduce-scatter, so each
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

import threading
from collections.abc import Iterator, Mapping
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


def without_vector(partial: Any, where: int | str) -> Any:
    """A sharded program's partial without its coordinate vector (``program.sharded_partial``)."""
    if isinstance(partial, dict):
        return {k: v for k, v in partial.items() if k != where}
    return tuple(v for i, v in enumerate(partial) if i != where)


def with_vector(rest: Any, where: int | str, vector: np.ndarray) -> Any:
    """The partial again: ``rest`` (see :func:`without_vector`) with ``vector`` back at ``where``."""
    if isinstance(rest, dict):
        return {**rest, where: vector}
    items = list(rest)
    items.insert(where, vector)
    return tuple(items)


def split(model: dict, shard_keys: tuple[str, ...], lo: int, hi: int) -> dict:
    """A worker's model: the sharded keys' coordinates ``lo:hi`` (copies), the other keys whole.

    A :class:`~drizzle_ml.protocol.Zeros` (a message's all-zero array) stays one, of the shard's shape.
    """
    def part(v: Any) -> Any:
        if isinstance(v, Zeros):
            return Zeros(v.shape[:-1] + (hi - lo,), v.dtype)
        return np.array(v[..., lo:hi])

    return {k: (part(v) if k in shard_keys else v) for k, v in model.items()}


class ShardedVersion(Mapping):
    """A model version as a group's reports bring it: the replicated keys, and every worker's
    shard of each sharded key (in worker order), joined only when the key is read.

    At a group boundary the driver commits it without copying a wide model's
    optimizer state (at 2^22 coordinates a version of L-BFGS is 800 MB, and
    joining it cost the driver most of a core on a small machine). Results,
    checkpoints and readers get whole arrays, read-only, joined once per key;
    a joined key's shards are dropped, so a version never holds both.
    It pickles as a plain dict.
    """

    def __init__(self, replicated: dict, shards: list[dict]):
        self._whole = dict(replicated)
        self._shards = [dict(s) for s in shards]
        self._keys = list(self._whole) + [k for k in self._shards[0] if k not in self._whole]
        self._lock = threading.Lock()  # readers in other threads (a served model) may join a key at once
        for shard in self._shards:
            for array in shard.values():
                array.flags.writeable = False

    def __getitem__(self, key: str) -> np.ndarray:
        whole = self._whole.get(key)
        if whole is not None:
            return whole
        with self._lock:
            if key not in self._whole:
                if key not in self._shards[0]:
                    raise KeyError(key)
                whole = np.concatenate([s.pop(key) for s in self._shards], axis=-1)
                whole.flags.writeable = False
                self._whole[key] = whole
            return self._whole[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def nbytes(self) -> int:
        """Bytes of the version's arrays, without joining any."""
        with self._lock:
            arrays = list(self._whole.values()) + [a for s in self._shards for a in s.values()]
        return sum(int(np.asarray(a).nbytes) for a in arrays)

    def __reduce__(self) -> tuple:
        return dict, (dict(self),)


def assemble(replicated: dict, shards: list[dict]) -> ShardedVersion:
    """The whole model from the replicated keys and every worker's shard, in worker order
    (see :class:`ShardedVersion`: the sharded keys are joined when read)."""
    return ShardedVersion(replicated, shards)
