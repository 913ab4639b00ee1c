"""What is in a dataset file: :func:`describe` of an HDF5 file, its :func:`summary_line`, and Parquet's lines."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np


def _python(value: Any) -> Any:
    """h5py attribute values as plain Python objects."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def describe(path: str | os.PathLike, *, x_key: str = "X", y_key: str | None = "y") -> dict[str, Any]:
    """Summarize an HDF5 dataset file.

    Returns a dict: ``path``, ``rows``, ``features``, ``sparse`` (bool),
    ``dtype`` (of X's values), ``nnz`` (stored values; rows x features when
    dense), ``keys`` (top-level names), ``attributes`` (file attributes as
    Python values), and ``y``: None when the file has no ``y_key``, else
    ``{"key", "dtype", "classes", "counts"}`` for integer labels (up to 1000
    distinct values; more give ``"n_distinct"`` and ``min``/``max``) or
    ``{"key", "dtype", "min", "max", "mean"}`` for float labels. Reads y in chunks.
    """
    import h5py

    from drizzle_ml.data import check_targets, csr_shape

    path_s = os.fspath(path)
    if not os.path.exists(path_s):
        raise FileNotFoundError(f"{path_s}: no such file")
    if not h5py.is_hdf5(path_s):
        raise ValueError(f"{path_s}: not an HDF5 file")
    with h5py.File(path_s, "r") as f:
        if x_key not in f:
            raise ValueError(f"{path_s} has no {x_key!r} (keys: {', '.join(sorted(f.keys())) or 'none'})")
        node = f[x_key]
        if isinstance(node, h5py.Dataset):
            if node.ndim != 2:
                raise ValueError(f"{path_s}: {x_key!r} must be 2-D (rows, features), got shape {node.shape}")
            rows, features = (int(s) for s in node.shape)
            sparse, dtype, nnz = False, node.dtype, rows * features
        else:
            rows, features = csr_shape(node, path_s, x_key)
            sparse, dtype, nnz = True, node["data"].dtype, int(node["data"].shape[0])
        out: dict[str, Any] = {
            "path": path_s,
            "rows": rows,
            "features": features,
            "sparse": sparse,
            "dtype": str(dtype),
            "nnz": nnz,
            "keys": sorted(f.keys()),
            "attributes": {k: _python(v) for k, v in f.attrs.items()},
            "y": None,
        }
        if y_key is not None and y_key in f:
            out["y"] = _describe_y(check_targets(f[y_key], rows, path_s, x_key, y_key), y_key)
    return out


def _describe_y(dset: Any, key: str) -> dict[str, Any]:
    info: dict[str, Any] = {"key": key, "dtype": str(dset.dtype), "rows": int(dset.shape[0])}
    n = dset.shape[0]
    step = 1 << 20
    import h5py

    if h5py.check_string_dtype(dset.dtype) is not None or dset.dtype.kind == "S":  # text labels (from Parquet)
        from drizzle_ml.data import read_targets

        found: dict[str, int] = {}
        for lo in range(0, n, step):
            values, cnt = np.unique(read_targets(dset, lo, lo + step), return_counts=True)
            for v, c in zip(values.tolist(), cnt.tolist()):
                found[v] = found.get(v, 0) + c
        if len(found) <= 1000:
            info["classes"] = sorted(found)
            info["counts"] = [found[k] for k in info["classes"]]
        else:
            info["n_distinct"], info["min"], info["max"] = "more than 1000", min(found), max(found)
        return info
    if dset.dtype.kind in "biu":
        counts: dict[int, int] = {}
        lo_v = hi_v = None
        for lo in range(0, n, step):
            part = dset[lo : lo + step]
            if part.size:
                lo_v = part.min() if lo_v is None else min(lo_v, part.min())
                hi_v = part.max() if hi_v is None else max(hi_v, part.max())
            if counts is not None:
                vals, cnt = np.unique(part, return_counts=True)
                for v, c in zip(vals.tolist(), cnt.tolist()):
                    counts[v] = counts.get(v, 0) + c
                if len(counts) > 1000:
                    counts = None
        if counts is not None:
            keys = sorted(counts)
            info["classes"] = keys
            info["counts"] = [counts[k] for k in keys]
        else:
            info["n_distinct"] = "more than 1000"
        info["min"], info["max"] = _python(lo_v), _python(hi_v)
    else:
        lo_v, hi_v, total = math.inf, -math.inf, 0.0
        for lo in range(0, n, step):
            part = np.asarray(dset[lo : lo + step], dtype=np.float64)
            if part.size:  # np.minimum keeps a NaN, which the builtin min drops
                lo_v, hi_v, total = np.minimum(lo_v, part.min()), np.maximum(hi_v, part.max()), total + part.sum()
        info["min"], info["max"] = float(lo_v), float(hi_v)
        info["mean"] = float(total / n) if n else math.nan
    return info


def summary_line(info: dict[str, Any], verb: str = "wrote") -> str:
    """One line about a :func:`describe` result, e.g. ``wrote d.h5: 100 rows x 5 features (dense), y: 2 classes``."""
    layout = f"sparse, {info['nnz']} nonzeros" if info["sparse"] else "dense"
    y = info["y"]
    if y is None:
        ytext = "no y"
    elif "classes" in y:
        ytext = f"y: {len(y['classes'])} classes"
    elif y["dtype"].startswith(("int", "uint", "bool")):
        ytext = f"y: integers in [{y['min']}, {y['max']}]"
    else:
        ytext = f"y: float in [{y['min']:.6g}, {y['max']:.6g}]"
    return f"{verb} {info['path']}: {info['rows']} rows x {info['features']} features ({layout}), {ytext}"


def parquet_info_lines(path: str) -> list[str]:
    """``datasets info`` of Parquet data: rows, row groups, files, columns, and the default features and target."""
    from drizzle_ml.parquet import ParquetDataset

    dataset = ParquetDataset(path)
    files = f" in {len(dataset.files)} files" if len(dataset.files) > 1 else ""
    groups = len(dataset.row_groups)
    return [
        f"{dataset.path}: {dataset.n_rows} rows x {len(dataset.schema)} columns, Parquet, "
        f"{groups} row group{'s' if groups != 1 else ''}{files}",
        "  columns: " + ", ".join(f"{f.name} ({f.type})" for f in dataset.schema),
        "  default features: " + ", ".join(dataset.features),
        f"  default target: {dataset.target or 'none (no column y)'}",
    ]


def parquet_summary_line(info: dict[str, Any]) -> str:
    """One line about a Parquet file written by :func:`~drizzle_ml.datasets.convert`."""
    target = f"target column {info['target']!r}" if info["target"] else "no target column"
    return (f"wrote {info['path']}: {info['rows']} rows x {info['features']} features "
            f"(Parquet, {info['row_groups']} row group{'s' if info['row_groups'] != 1 else ''}), {target}")
