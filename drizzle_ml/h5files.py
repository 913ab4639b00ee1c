"""drizzle-ml's own HDF5 files (saved models and checkpoints): the codec both formats share.

Opening (signature, truncation, the root's ``format`` and ``format_version``),
writing a file atomically, one dataset per array (attributes ``dtype``, numpy's
``dtype.str`` or ``"object"``, and ``order``, C or F), and JSON in attributes:
numeric arrays as ``{"__ndarray__": nested list, "dtype": str}``, NaN allowed.
Nothing is ever pickled. Errors name the problem but not the path (callers
add it): :class:`FormatError` (a ``ValueError``), or ``TypeError`` for what
cannot be written.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

NUMERIC_KINDS = "biufc"  # bool, int, uint, float, complex
class FormatError(ValueError):
    """A file that is not one of ours, or a damaged one; the message says why, without the path."""


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def has_hdf5_signature(path: str) -> bool:
    """Whether ``path`` holds an HDF5 superblock: at byte 0, or after a user block of 512, 1024, ... bytes."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            if f.read(8) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else 2 * offset
    return False


def open_hdf5(path: str, kind: str) -> Any:
    """``h5py.File(path, "r")``, or FormatError for a file that is no HDF5 file or a damaged one.

    ``kind`` names what the file should be (``"model"``, ``"checkpoint"``).
    """
    import h5py

    if os.path.exists(path) and not os.path.isfile(path):  # opening a FIFO or a device would block
        raise FormatError(f"not a regular file (a directory, a FIFO or a device), so not a drizzle-ml {kind}")
    if not has_hdf5_signature(path):
        raise FormatError(f"not an HDF5 file (no HDF5 signature), so not a drizzle-ml {kind}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        text = str(exc)  # h5py: "Unable to synchronously open file (truncated file: eof = ...)"
        reason = text.split("(", 1)[-1].rstrip(")") if "(" in text else text
        raise FormatError(f"a truncated or corrupted HDF5 file ({reason})") from None


def root_attributes(h5: Any, fmt: str, max_version: int, kind: str) -> dict[str, Any]:
    """The root attributes as Python values (bytes decoded), once ``format`` is ``fmt`` and
    ``format_version`` an integer from 1 to ``max_version``; FormatError otherwise."""
    attrs = {}
    for key in h5.attrs:
        value = h5.attrs[key]
        attrs[key] = value.decode("utf-8") if isinstance(value, bytes) else value
    found = attrs.get("format")
    if found != fmt:
        what = "no 'format' attribute" if found is None else f"format {found!r}"
        raise FormatError(f"not a drizzle-ml {kind} ({what}, expected {fmt!r})")
    version = attrs.get("format_version")
    if version is None:
        raise FormatError("missing attribute 'format_version'")
    if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)):
        raise FormatError(f"format_version {version!r} is not an integer")
    if not 1 <= int(version) <= max_version:
        raise FormatError(f"{kind} format version {int(version)}, but this drizzle-ml reads versions "
                         f"1 to {max_version} (upgrade drizzle-ml to read it)")
    return attrs


def write_hdf5(path: str, fill: Callable[[Any], None]) -> None:
    """Write one of our HDF5 files at ``path`` atomically; ``fill(h5)`` writes its contents.

    The file is built in memory and then written with plain file I/O
    (:func:`drizzle_ml.files.atomic_output`): HDF5 itself never writes to the
    disk. A full disk or a failing device is then a clean ``OSError`` that
    leaves nothing behind; when HDF5 wrote the file and the disk filled, the
    library kept a half-closed file that crashed the process at exit.
    """
    import h5py

    from .files import atomic_output

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        fill(h5)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())


# -- JSON in attributes --------------------------------------------------------------------------

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


def json_text(value: Any, where: str, container: str, *, separators: tuple[str, str] = (", ", ": ")) -> str:
    """``value`` as JSON text: sorted keys, ASCII, NaN allowed; ``separators`` are the format's."""
    return json.dumps(to_json(value, where, container), sort_keys=True, separators=separators,
                      ensure_ascii=True, allow_nan=True)


def attribute_text(value: Any, where: str) -> str:
    """An attribute's value as text (h5py may give bytes); FormatError if it is no text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise FormatError(f"attribute {where!r} is not text")
    return value


# -- arrays --------------------------------------------------------------------------------------

def memory_order(arr: np.ndarray) -> str:
    """``"F"`` for an array laid out in Fortran order only (2-D and up), ``"C"`` otherwise."""
    return "F" if arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"


def write_array(group: Any, name: str, arr: np.ndarray, kind: str, *, where: str | None = None,
                order: str | None = None, key: str | None = None) -> Any:
    """Dataset ``name`` in ``group`` holding ``arr`` in C order, contiguous and unfiltered; returns it.

    Attributes: ``key`` if given, ``dtype``, ``order`` (``memory_order(arr)``
    unless given). ``U`` and object arrays of ``str`` become UTF-8 strings;
    other dtypes are a TypeError naming ``where`` and ``kind`` (``"model file"``).
    """
    import h5py

    where = name if where is None else where
    order = memory_order(arr) if order is None else order
    dkind = arr.dtype.kind
    if dkind in NUMERIC_KINDS or dkind == "S":
        ds = group.create_dataset(name, data=np.asarray(arr, order="C"))  # 0-d stays 0-d
    elif dkind in "UO":
        items = arr.ravel().tolist()
        for item in items:
            if not isinstance(item, str):
                raise TypeError(f"{where} is an object array holding {type(item).__name__} {item!r}; "
                                "only strings can be saved from object arrays")
        ds = group.create_dataset(name, shape=arr.shape, dtype=h5py.string_dtype("utf-8"))
        if arr.size:
            ds[...] = np.array(items, dtype=object).reshape(arr.shape)
    else:
        raise TypeError(f"{where} has dtype {arr.dtype}, which {kind}s do not hold")
    if key is not None:
        ds.attrs["key"] = key
    ds.attrs["dtype"] = arr.dtype.str if dkind != "O" else "object"
    ds.attrs["order"] = order
    return ds


def read_array(ds: Any, where: str, kind: str) -> tuple[np.ndarray, str]:
    """The array :func:`write_array` wrote, in its saved dtype and order; and that order.

    FormatError naming ``where`` and ``kind`` for a stored type other than the
    claimed one, an order other than C or F, or an HDF5 type that is neither
    numbers nor strings (references, opaque data: what a pickle would be).
    """
    import h5py

    if "dtype" not in ds.attrs:
        raise FormatError(f"{where} has no 'dtype' attribute; the {kind} is corrupted")
    dtype_text = attribute_text(ds.attrs["dtype"], f"{where}.dtype")
    order = attribute_text(ds.attrs.get("order", "C"), f"{where}.order")
    try:
        dtype = np.dtype(dtype_text) if dtype_text != "object" else np.dtype(object)
    except TypeError:
        raise FormatError(f"{where} has an unknown dtype {dtype_text!r}") from None
    if order not in ("C", "F"):
        raise FormatError(f"{where} claims order {order!r}, not 'C' or 'F'")
    stored = ds.dtype
    if h5py.check_string_dtype(stored) is not None and stored.kind == "O":
        if dtype.kind not in "UO":
            raise FormatError(f"{where} holds strings but claims dtype {dtype_text}")
        items = ds.asstr()[()]  # read as str, then made the saved dtype (U or object)
        if dtype.kind == "U":
            arr = np.array(items, dtype=dtype) if ds.shape != () else np.array(str(items), dtype=dtype)
        else:
            arr = np.empty(ds.shape, dtype=object)
            arr[...] = items
    elif stored.kind in NUMERIC_KINDS or stored.kind == "S":
        if dtype.kind != stored.kind or dtype.itemsize != stored.itemsize:
            raise FormatError(f"{where} stores {stored} but claims dtype {dtype_text}")
        arr = np.asarray(ds[()]).astype(dtype, copy=False)
    else:
        raise FormatError(
            f"{where} has HDF5 type {stored} (object, reference or opaque data); "
            f"drizzle-ml {kind}s hold only numbers, booleans and strings, and never unpickle"
        )
    return (np.asfortranarray(arr) if order == "F" else arr), order
