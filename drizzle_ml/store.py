"""The versioned model store on the driver (parameter-server state).

Every update makes a new version. A version becomes *visible* when it is
published (a stream's tree root sends each version as it is made) and
*durable* when the driver commits it at a group boundary, where its
checkpoint is written. Readers (prediction while a stream trains) take the
newest visible or the newest durable version without blocking training: a
publish or commit only swaps references under a short lock, and stored
arrays are frozen (read-only) so a reader never sees a half-written model.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sharding import ShardedVersion


@dataclass(frozen=True)
class ModelVersion:
    """One committed model: ``version`` counts updates since the model was created."""

    version: int
    model: Mapping[str, np.ndarray]  # a dict, or a sharded model's ShardedVersion
    iteration: int
    metrics: dict[str, float] = field(default_factory=dict)
    durable: bool = True

    @functools.cached_property
    def nbytes(self) -> int:
        """Bytes of the model's arrays (counted once: the store sums them at every commit)."""
        if isinstance(self.model, ShardedVersion):
            return self.model.nbytes  # without joining its shards
        return sum(int(np.asarray(a).nbytes) for a in self.model.values())


def freeze(model: Mapping[str, Any]) -> Mapping[str, np.ndarray]:
    """Read-only copy-free view of a model dict (arrays are marked non-writeable).

    A :class:`~drizzle_ml.sharding.ShardedVersion` is read-only already and stays one.
    """
    if isinstance(model, ShardedVersion):
        return model
    frozen = {}
    for key, value in model.items():
        arr = np.asarray(value)
        if arr.flags.writeable:
            arr = arr.view()
            arr.flags.writeable = False
        frozen[key] = arr
    return frozen


class ModelStore:
    """Bounded history of model versions, visible and durable.

    Parameters
    ----------
    history : int
        How many versions to keep (the newest ``history``; the newest durable
        version is always kept as well).
    max_bytes : int
        And at most this many bytes of arrays (default 1 GiB): a wide model
        with its optimizer state (2^20 coefficients and L-BFGS's memory are
        180 MB a version) keeps fewer versions. The newest version and the
        newest durable one are kept whatever their size.
    """

    def __init__(self, history: int = 16, max_bytes: int = 1 << 30):
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._history, self._max_bytes = history, max_bytes
        self._versions: dict[int, ModelVersion] = {}
        self._newest = self._durable = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def _add(self, entry: ModelVersion) -> None:
        self._versions[entry.version] = entry
        if self._newest is None or entry.version > self._newest:
            self._newest = entry.version
        if entry.durable and (self._durable is None or entry.version > self._durable):
            self._durable = entry.version
        if len(self._versions) > self._history:
            keep = set(sorted(self._versions)[-self._history:]) | {self._durable}
            self._versions = {v: e for v, e in sorted(self._versions.items()) if v in keep}
        total = sum(e.nbytes for e in self._versions.values())
        for version in sorted(self._versions):
            if total <= self._max_bytes:
                break
            if version not in (self._newest, self._durable):
                total -= self._versions.pop(version).nbytes
        self._changed.notify_all()

    def publish(self, version: int, model: dict[str, Any], iteration: int,
                metrics: dict[str, float] | None = None) -> ModelVersion | None:
        """Make ``model`` visible as ``version`` (not yet durable); older or known versions are ignored."""
        entry = ModelVersion(int(version), freeze(model), int(iteration), dict(metrics or {}), durable=False)
        with self._lock:
            if self._newest is not None and entry.version <= self._newest:
                return None
            self._add(entry)
        return entry

    def commit(
        self,
        version: int,
        model: dict[str, Any],
        iteration: int,
        metrics: dict[str, float] | None = None,
    ) -> ModelVersion:
        """Record ``model`` as durable ``version``; durable versions must increase."""
        entry = ModelVersion(int(version), freeze(model), int(iteration), dict(metrics or {}))
        with self._lock:
            if self._durable is not None and entry.version <= self._durable:
                raise ValueError(
                    f"version {entry.version} is not newer than the committed {self._durable}"
                )
            known = self._versions.get(entry.version)
            if known is not None:  # published earlier: the same model, now durable
                entry = dataclasses.replace(known, durable=True, metrics=entry.metrics or known.metrics)
            self._add(entry)
        return entry

    def latest(self, durable: bool = False) -> ModelVersion:
        """The newest visible version, or with ``durable=True`` the newest committed one.

        Raises LookupError if there is none yet.
        """
        with self._lock:
            newest = self._durable if durable else self._newest
            if newest is None:
                raise LookupError("no model version has been " + ("committed" if durable else "published")
                                  + " yet")
            return self._versions[newest]

    def get(self, version: int) -> ModelVersion:
        """A specific version, if it is still in the bounded history."""
        with self._lock:
            try:
                return self._versions[int(version)]
            except KeyError:
                kept = sorted(self._versions)
                span = f"{kept[0]}..{kept[-1]}" if kept else "none"
                raise LookupError(
                    f"model version {version} is not in the store (kept: {span})"
                ) from None

    def wait_for(self, version: int, timeout: float, durable: bool = False) -> ModelVersion:
        """Block a reader until ``version`` (or newer) is visible (or durable), at most ``timeout`` s."""
        with self._changed:
            def reached():
                newest = self._durable if durable else self._newest
                return newest is not None and newest >= version

            if not self._changed.wait_for(reached, timeout):
                raise TimeoutError(f"model version {version} not {'committed' if durable else 'visible'} "
                                   f"within {timeout:g} s")
            return self._versions[self._durable if durable else self._newest]

    def wait_changed(self, known: tuple[int | None, int | None], timeout: float) -> tuple[int | None, int | None]:
        """Wait at most ``timeout`` s until (newest visible, newest durable) differs from ``known``; return it.

        For a reader that forwards every change (the prediction server's
        feed) without polling the store.
        """
        with self._changed:
            self._changed.wait_for(lambda: (self._newest, self._durable) != tuple(known), timeout)
            return self._newest, self._durable

    def __getstate__(self) -> dict:
        # Locks do not pickle; a fitted estimator (and its store) must.
        with self._lock:
            return {"history": self._history, "versions": [self._versions[v] for v in sorted(self._versions)]}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["history"])
        with self._lock:
            for entry in state["versions"]:
                self._add(entry)

    def versions(self) -> list[int]:
        with self._lock:
            return sorted(self._versions)

    def __len__(self) -> int:
        with self._lock:
            return len(self._versions)
