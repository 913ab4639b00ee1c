"""Plain JSON for what the engine and the estimators store in files: never pickled.

Numeric arrays become ``{"__ndarray__": nested list, "dtype": str}`` and come
back as arrays; numpy scalars become Python numbers; tuples come back as lists.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def to_json(value: Any, where: str, container: str = "a file") -> Any:
    """``value`` as plain JSON data; a TypeError naming ``where`` if it cannot be stored in ``container``."""
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, (list, tuple)):
        return [to_json(v, f"{where}[{i}]", container) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-string key {k!r}; {container} holds JSON")
            out[k] = to_json(v, f"{where}[{k!r}]", container)
        return out
    raise TypeError(
        f"{where} = {value!r} ({type(value).__name__}) cannot be stored in {container} "
        "(only None, bool, int, float, str, lists, dicts and numeric arrays; never pickled)"
    )


def from_json(value: Any) -> Any:
    """The inverse of :func:`to_json`: arrays back from their tagged form (numeric dtypes only)."""
    if isinstance(value, dict):
        if set(value) == {"__ndarray__", "dtype"}:
            dtype = np.dtype(value["dtype"])
            if dtype.kind not in "biuf":
                raise ValueError(f"an array value has dtype {dtype}, not a numeric one")
            return np.array(value["__ndarray__"], dtype=dtype)
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value
