"""Saving fitted estimators to HDF5 and loading them back, without pickle.

A model file is an HDF5 file laid out as::

    /                       attributes: format, format_version, class, params (JSON),
                            drizzle_ml_version, model_version, n_iter, history (JSON),
                            extra (JSON)
    /fitted/<name>          one dataset per fitted array attribute (``coef_``, ``classes_``...)
    /fitted                 attributes: the fitted python scalars (``intercept_``,
                            ``n_features_in_``...), each as JSON text

Every dataset records the numpy dtype it came from (``dtype``), its memory
order and whether it was a numpy scalar (``kind``), so a loaded estimator
computes bit for bit what the saved one did. String and object label arrays
(``classes_`` with string labels) are stored as UTF-8 variable-length strings.
Nothing is ever unpickled: the loader reads only numbers, booleans,
fixed-length bytes and UTF-8 strings, and refuses any other HDF5 type. The
arrays and JSON go through the engine's codec, :mod:`drizzle_ml.h5files`,
which checkpoints use too.

The engine never imports this module (it imports the estimators); it lives with them.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from drizzle_ml.h5files import (
    from_json,
    json_text,
    open_hdf5,
    read_array,
    root_attributes,
    to_json,
    write_array,
    write_hdf5,
)

from .registry import ENTRIES

__all__ = ["FORMAT", "FORMAT_VERSION", "ESTIMATORS", "save_model", "load_model", "model_info",
           "format_info"]

FORMAT = "drizzle-ml-model"
FORMAT_VERSION = 1

#: The estimator classes a model file may name, by class name.
ESTIMATORS: dict[str, type] = {entry.class_name: entry.load() for entry in ENTRIES}

#: Fitted attributes a file must hold for its estimator to predict.
REQUIRED: dict[str, tuple[str, ...]] = {entry.class_name: entry.saved for entry in ENTRIES}

# Engine attributes kept in root attributes (history_, model_version_, n_iter_) or not saved.
_NOT_SAVED = ("model_store_", "stream_offsets_", "stream_stats_")  # live state; a stream's offsets go in extra
_ROOT_ATTRS = ("history_", "model_version_", "n_iter_")
_REQUIRED_ROOT = ("format", "format_version", "class", "params", "drizzle_ml_version",
                  "model_version", "n_iter", "history")


# -- JSON ----------------------------------------------------------------------------------------

def _dumps(value: Any, where: str) -> str:
    # NaN and infinities allowed: C=np.inf and NaN metrics are legitimate; Python's json reads them back.
    return json_text(value, where, "a model file")


def _loads(text: Any, where: str, path: str) -> Any:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not isinstance(text, str):
        raise ValueError(f"{path}: attribute {where!r} is not JSON text; the model file is corrupted")
    try:
        return from_json(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: attribute {where!r} is not valid JSON ({exc}); "
                         "the model file is corrupted") from None


# -- saving --------------------------------------------------------------------------------------

def _fitted_attributes(estimator: Any) -> dict[str, Any]:
    """The estimator's fitted attributes (public names ending in ``_``), engine ones excepted."""
    return {
        name: value
        for name, value in sorted(vars(estimator).items())
        if name.endswith("_") and not name.startswith("_")
        and name not in _NOT_SAVED and name not in _ROOT_ATTRS
    }


def _write_array(group, name: str, value: np.ndarray | np.generic) -> None:
    """``fitted/<name>``: the array, and whether it was a numpy scalar (``kind``)."""
    ds = write_array(group, name, np.asarray(value), "model file", where=f"fitted attribute {name}")
    ds.attrs["kind"] = "ndarray" if isinstance(value, np.ndarray) else "scalar"


def _write_file(h5, estimator: Any, params_json: str, extra_json: str | None) -> None:
    import drizzle_ml

    h5.attrs["format"] = FORMAT
    h5.attrs["format_version"] = FORMAT_VERSION
    h5.attrs["class"] = type(estimator).__name__
    h5.attrs["params"] = params_json
    h5.attrs["drizzle_ml_version"] = drizzle_ml.__version__
    h5.attrs["model_version"] = int(estimator.model_version_)
    h5.attrs["n_iter"] = int(estimator.n_iter_)
    h5.attrs["history"] = _dumps(estimator.history_, "history_")
    if extra_json is not None:
        h5.attrs["extra"] = extra_json
    fitted = h5.create_group("fitted")
    for name, value in _fitted_attributes(estimator).items():
        if isinstance(value, (np.ndarray, np.generic)):  # a numpy scalar: a 0-d dataset keeps its dtype
            _write_array(fitted, name, value)
        elif value is None or isinstance(value, (bool, int, float, str)):
            fitted.attrs[name] = json.dumps(value, allow_nan=True)
        else:
            raise TypeError(
                f"fitted attribute {name} is a {type(value).__name__}; model files hold numpy "
                "arrays and python scalars (int, float, bool, str, None)"
            )


def save_model(estimator: Any, path: str | os.PathLike, *, extra: dict | None = None) -> None:
    """Write a fitted estimator to ``path`` (HDF5), atomically.

    ``extra``: optional JSON-able metadata (the training data path, a report...),
    returned by :func:`model_info`. The file is written to a temporary file in
    the same directory, flushed, fsynced and renamed over ``path``: a reader
    sees the old file or the new one, never a partial one, and a failed save
    leaves nothing behind.

    Raises TypeError for an unsupported estimator, parameter or attribute
    value (a RandomState as ``random_state``, say), ValueError for an unfitted
    estimator.
    """
    name = type(estimator).__name__
    if ESTIMATORS.get(name) is not type(estimator):
        raise TypeError(f"cannot save a {name}: model files hold {', '.join(ESTIMATORS)}")
    missing = [a for a in _ROOT_ATTRS + REQUIRED[name] if not hasattr(estimator, a)]
    if missing:
        raise ValueError(f"cannot save an unfitted {name} (no {', '.join(missing)}); call fit first")
    params = estimator.get_params(deep=False)
    for key, value in params.items():  # one clear message per offending parameter
        to_json(value, f"parameter {key}", "a model file")
    params_json = _dumps(params, "params")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict or None, got {type(extra).__name__}")
    extra_json = None if extra is None else _dumps(extra, "extra")

    write_hdf5(path, lambda h5: _write_file(h5, estimator, params_json, extra_json))


# -- loading -------------------------------------------------------------------------------------

def _open(path: str):
    """The model file open for reading; FileNotFoundError / ValueError naming the problem."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"model path is a directory, not a file: {path}")
    try:
        return open_hdf5(path, "model")
    except ValueError as exc:
        raise ValueError(f"{path} is {exc}") from None


def _root(h5, path: str) -> tuple[str, dict]:
    """Validate the root attributes; return (class name, attributes as python values)."""
    try:
        attrs = root_attributes(h5, FORMAT, FORMAT_VERSION, "model file")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    for key in _REQUIRED_ROOT:
        if key not in attrs:
            raise ValueError(f"{path}: missing attribute {key!r}; the model file is corrupted")
    name = attrs["class"]
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise ValueError(
            f"{path} holds an unknown estimator class {name!r} (known: {', '.join(ESTIMATORS)})"
        )
    return name, attrs


def _read_array(ds, name: str, path: str):
    """A dataset back as the numpy array (or numpy scalar) it was saved from."""
    try:
        arr, _ = read_array(ds, f"dataset fitted/{name}", "model file")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return arr[()] if ds.attrs.get("kind", "ndarray") in ("scalar", b"scalar") else arr


def _read_scalar(text: Any, name: str, path: str):
    value = _loads(text, f"fitted/{name}", path)
    if not (value is None or isinstance(value, (bool, int, float, str))):
        raise ValueError(f"{path}: fitted attribute {name} is not a scalar; the model file is corrupted")
    return value


def _read_fitted(h5, path: str) -> dict[str, Any]:
    import h5py

    group = h5.get("fitted")
    if not isinstance(group, h5py.Group):
        raise ValueError(f"{path}: missing group 'fitted'; the model file is corrupted")
    fitted = {}
    for name in group.attrs:
        fitted[name] = _read_scalar(group.attrs[name], name, path)
    for name, item in group.items():
        if not isinstance(item, h5py.Dataset):
            raise ValueError(f"{path}: fitted/{name} is not a dataset; the model file is corrupted")
        if item.compression is not None or item.chunks is not None:
            # save_model writes contiguous, unfiltered arrays, so an array costs the memory the file
            # takes; a compressed one could inflate a small file into gigabytes before any check.
            raise ValueError(f"{path}: fitted/{name} is stored {item.compression or 'chunked'} "
                             f"({item.size:,} elements); drizzle-ml model files store arrays contiguous "
                             "and uncompressed: not a file save_model wrote")
        fitted[name] = _read_array(item, name, path)
    for name in fitted:
        if not (name.isidentifier() and name.endswith("_") and not name.startswith("_")):
            raise ValueError(f"{path}: fitted attribute name {name!r} is not a fitted attribute")
    return fitted


def _check_shapes(name: str, fitted: dict[str, Any], path: str) -> None:
    """The fitted arrays' shapes must agree with each other and with ``n_features_in_``
    (a tampered file could otherwise predict the wrong number of rows, say, and exit 0)."""
    n = fitted["n_features_in_"]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{path}: n_features_in_ = {n!r} is not a positive integer; the model file is corrupted")

    def shape(attr: str, *allowed: tuple) -> tuple:
        value = np.asarray(fitted[attr])
        for expected in allowed:
            if len(value.shape) == len(expected) and all(e is None or s == e for s, e in zip(value.shape, expected)):
                return value.shape
        wanted = " or ".join(str(tuple("k" if e is None else e for e in a)) for a in allowed)
        raise ValueError(f"{path}: {attr} has shape {value.shape}, expected {wanted} for {name} with "
                         f"n_features_in_ = {n}; the model file is corrupted")

    if name == "LogisticRegression":
        classes = shape("classes_", (None,))[0]
        rows = 1 if classes == 2 else classes
        shape("coef_", (rows, n))
        shape("intercept_", (rows,))
    elif name in ("LinearRegression", "Ridge", "Lasso", "ElasticNet"):
        coef = shape("coef_", (n,), (None, n))
        shape("intercept_", ()) if len(coef) == 1 else shape("intercept_", (coef[0],))
    elif name == "PCA":
        k = shape("components_", (None, n))[0]
        shape("mean_", (n,))
        shape("explained_variance_", (k,))
    elif name == "KMeans":
        shape("cluster_centers_", (None, n))


def _guard(path, read):
    """Run ``read``; HDF5 read errors (a damaged file) become one-line ValueErrors."""
    try:
        return read()
    except (ValueError, FileNotFoundError, IsADirectoryError, TypeError):
        raise
    except (OSError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{os.fspath(path)} is a truncated or corrupted model file ({exc})") from None


def load_model(path: str | os.PathLike):
    """The estimator saved in ``path`` by :func:`save_model`, ready to predict.

    Nothing is unpickled. Raises FileNotFoundError for a missing file and
    ValueError, with one line naming the problem, for a file that is not
    HDF5, is truncated or corrupted, is not a drizzle-ml model, names an
    unknown estimator class, has a newer format version, or lacks an attribute.
    """
    spath = os.fspath(path)

    def read():
        with _open(spath) as h5:
            name, attrs = _root(h5, spath)
            params = _loads(attrs["params"], "params", spath)
            history = _loads(attrs["history"], "history", spath)
            fitted = _read_fitted(h5, spath)
            return name, attrs, params, history, fitted

    name, attrs, params, history, fitted = _guard(spath, read)
    if not isinstance(params, dict):
        raise ValueError(f"{spath}: attribute 'params' is not a JSON object; the model file is corrupted")
    if not isinstance(history, list):
        raise ValueError(f"{spath}: attribute 'history' is not a JSON list; the model file is corrupted")
    missing = [a for a in REQUIRED[name] if a not in fitted]
    if missing:
        raise ValueError(f"{spath}: missing fitted attribute {', '.join(missing)} for {name}")
    _check_shapes(name, fitted, spath)
    cls = ESTIMATORS[name]
    try:
        estimator = cls(**params)
    except TypeError as exc:
        raise ValueError(f"{spath}: parameters do not fit {name} ({exc})") from None
    for key, value in fitted.items():
        setattr(estimator, key, value)
    estimator.history_ = history
    estimator.model_version_ = int(attrs["model_version"])
    estimator.n_iter_ = int(attrs["n_iter"])
    return estimator


# -- inspecting ----------------------------------------------------------------------------------

def model_info(path: str | os.PathLike) -> dict:
    """What ``path`` holds, without building the estimator.

    Keys: ``path``, ``class``, ``format_version``, ``drizzle_ml_version``,
    ``params``, ``model_version``, ``n_iter``, ``n_groups`` (groups in the
    training history), ``attributes`` (name -> ``{"shape", "dtype"}`` for
    arrays, ``{"value", "type"}`` for scalars), ``extra`` (None if not saved).
    Same errors as :func:`load_model`.
    """
    import h5py

    spath = os.fspath(path)

    def read():
        with _open(spath) as h5:
            name, attrs = _root(h5, spath)
            group = h5.get("fitted")
            if not isinstance(group, h5py.Group):
                raise ValueError(f"{spath}: missing group 'fitted'; the model file is corrupted")
            attributes: dict[str, dict] = {}
            for key in group.attrs:
                value = _read_scalar(group.attrs[key], key, spath)
                attributes[key] = {"value": value, "type": type(value).__name__}
            for key, ds in group.items():
                dtype = ds.attrs.get("dtype", str(getattr(ds, "dtype", "?")))
                dtype = dtype.decode() if isinstance(dtype, bytes) else str(dtype)
                shape = tuple(int(n) for n in getattr(ds, "shape", ()) or ())
                attributes[key] = {"shape": shape, "dtype": str(np.dtype(dtype)) if dtype != "object" else "object"}
            history = _loads(attrs["history"], "history", spath)
            extra = _loads(attrs["extra"], "extra", spath) if "extra" in attrs else None
            return {
                "path": spath,
                "class": name,
                "format_version": int(attrs["format_version"]),
                "drizzle_ml_version": str(attrs["drizzle_ml_version"]),
                "params": _loads(attrs["params"], "params", spath),
                "model_version": int(attrs["model_version"]),
                "n_iter": int(attrs["n_iter"]),
                "n_groups": len(history) if isinstance(history, list) else 0,
                "attributes": dict(sorted(attributes.items())),
                "extra": extra,
            }

    return _guard(spath, read)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_info(info: dict) -> str:
    """:func:`model_info`'s dict as readable text lines (``drizzle-ml info``)."""
    lines = [
        f"{info['path']}: {info['class']} (drizzle-ml model format {info['format_version']}, "
        f"saved by drizzle-ml {info['drizzle_ml_version']})",
        f"  model version {info['model_version']}, {info['n_iter']} iteration{'s' if info['n_iter'] != 1 else ''} in "
        f"{info['n_groups']} group{'s' if info['n_groups'] != 1 else ''}",
        "  parameters:",
    ]
    for key, value in sorted(info["params"].items()):
        if isinstance(value, np.ndarray):
            value = f"array{value.shape} {value.dtype}"
            lines.append(f"    {key} = {value}")
        else:
            lines.append(f"    {key} = {_short(value)}")
    lines.append("  fitted attributes:")
    for key, meta in info["attributes"].items():
        if "shape" in meta:
            shape = "scalar" if meta["shape"] == () else "x".join(str(n) for n in meta["shape"])
            lines.append(f"    {key}: {meta['dtype']} {shape}")
        else:
            lines.append(f"    {key} = {_short(meta['value'])}")
    if info.get("extra"):
        lines.append("  extra:")
        for key, value in sorted(info["extra"].items()):
            lines.append(f"    {key} = {_short(value, 200)}")
    return "\n".join(lines)
