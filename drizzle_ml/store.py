"""The versioned model store on the driver (parameter-server state).

Every update makes a new version. The driver commits the model at group
boundaries; readers (prediction while a stream trains) take the newest
version without blocking training: a commit only swaps references under a
short lock, and committed arrays are frozen (read-only) so a reader never
sees a half-written model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ModelVersion:
    """One committed model: ``version`` counts updates since the model was created."""

    version: int
    model: dict[str, np.ndarray]
    iteration: int
    metrics: dict[str, float] = field(default_factory=dict)


def freeze(model: dict[str, Any]) -> dict[str, np.ndarray]:
    """Read-only copy-free view of a model dict (arrays are marked non-writeable)."""
    frozen = {}
    for key, value in model.items():
        arr = np.asarray(value)
        if arr.flags.writeable:
            arr = arr.view()
            arr.flags.writeable = False
        frozen[key] = arr
    return frozen


class ModelStore:
    """Bounded history of committed model versions.

    Parameters
    ----------
    history : int
        How many versions to keep (the newest ``history`` commits).
    """

    def __init__(self, history: int = 16):
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self._history = history
        self._versions: OrderedDict[int, ModelVersion] = OrderedDict()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def commit(
        self,
        version: int,
        model: dict[str, Any],
        iteration: int,
        metrics: dict[str, float] | None = None,
    ) -> ModelVersion:
        """Record ``model`` as ``version``; versions must increase."""
        entry = ModelVersion(int(version), freeze(model), int(iteration), dict(metrics or {}))
        with self._lock:
            if self._versions:
                newest = next(reversed(self._versions))
                if entry.version <= newest:
                    raise ValueError(
                        f"version {entry.version} is not newer than the committed {newest}"
                    )
            self._versions[entry.version] = entry
            while len(self._versions) > self._history:
                self._versions.popitem(last=False)
            self._changed.notify_all()
        return entry

    def latest(self) -> ModelVersion:
        """The newest committed version (raises LookupError if none yet)."""
        with self._lock:
            if not self._versions:
                raise LookupError("no model version has been committed yet")
            return next(reversed(self._versions.values()))

    def get(self, version: int) -> ModelVersion:
        """A specific version, if it is still in the bounded history."""
        with self._lock:
            try:
                return self._versions[int(version)]
            except KeyError:
                kept = list(self._versions)
                span = f"{kept[0]}..{kept[-1]}" if kept else "none"
                raise LookupError(
                    f"model version {version} is not in the store (kept: {span})"
                ) from None

    def wait_for(self, version: int, timeout: float) -> ModelVersion:
        """Block a reader until ``version`` (or newer) is committed, at most ``timeout`` s."""
        with self._changed:
            ok = self._changed.wait_for(
                lambda: self._versions and next(reversed(self._versions)) >= version, timeout
            )
            if not ok:
                raise TimeoutError(f"model version {version} not committed within {timeout:g} s")
            return next(reversed(self._versions.values()))

    def __getstate__(self) -> dict:
        # Locks do not pickle; a fitted estimator (and its store) must.
        with self._lock:
            return {"history": self._history, "versions": list(self._versions.values())}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["history"])
        for entry in state["versions"]:
            self._versions[entry.version] = entry

    def versions(self) -> list[int]:
        with self._lock:
            return list(self._versions)

    def __len__(self) -> int:
        with self._lock:
            return len(self._versions)
