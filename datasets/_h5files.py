"""What :mod:`.make` and :mod:`.converters` share: HDF5 chunk sizes, attribute values, argument checks."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

# Target size of one HDF5 chunk (bytes), and of one in-memory work chunk.
_H5_CHUNK_BYTES = 1 << 20
_WORK_CHUNK_BYTES = 1 << 25


def h5_chunk_rows(n_features: int, itemsize: int = 8) -> int:
    """Rows in one HDF5 chunk of a dataset ``(rows, n_features)``: about 1 MB."""
    return max(1, min(65536, _H5_CHUNK_BYTES // max(1, n_features * itemsize)))


def work_chunk_rows(n_features: int) -> int:
    """Rows made or read at a time by default: about 32 MB of float64."""
    return max(1, min(1 << 20, _WORK_CHUNK_BYTES // max(1, 8 * n_features)))


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int when it is an integer >= 1; otherwise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_chunk_rows(chunk_rows: int | None, default: int) -> int:
    """A caller's ``chunk_rows``, or ``default`` when it gave none."""
    return default if chunk_rows is None else positive_int("chunk_rows", chunk_rows)


def json_attr(value: Any) -> Any:
    """An HDF5-storable form of a parameter value."""
    if value is None:
        return "none"
    if isinstance(value, (bool, int, float, str, np.integer, np.floating)):
        return value
    return json.dumps(value)
