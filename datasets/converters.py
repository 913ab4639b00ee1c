"""Conversion to the engine's HDF5 layout, and to Parquet: :func:`convert` and a reader per format.

CSV, NPY/NPZ, LIBSVM and Parquet input stream into HDF5 (:func:`_convert_csv`,
:func:`_convert_arrays`, :func:`_convert_libsvm`, :func:`_convert_parquet`);
Parquet output is written from HDF5 (:func:`_write_parquet`), through a
temporary HDF5 file for text and array input.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from drizzle_ml.files import atomic_output
from drizzle_ml.hashing import LineHasher, check_n_bits, finite_number, line_label

from ._h5files import check_chunk_rows, h5_chunk_rows, json_attr, positive_int, work_chunk_rows
from .summary import describe

FORMATS = ("csv", "npy", "npz", "libsvm", "tokens", "parquet", "hdf5")
HASHED_FORMATS = ("libsvm", "tokens")  # the text formats that --hash-features reads

_EXTENSIONS = {
    ".csv": "csv",
    ".npy": "npy",
    ".npz": "npz",
    ".svm": "libsvm",
    ".libsvm": "libsvm",
    ".svmlight": "libsvm",
    ".txt": "libsvm",
    ".tokens": "tokens",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
}


class _LabelSink:
    """Labels appended chunk by chunk to a scratch file; stored as int64 if all integral, else float64."""

    def __init__(self, directory: str):
        self._file = tempfile.TemporaryFile(dir=directory)
        self.n = 0
        self.integral = True

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float64)
        if self.integral and values.size:
            self.integral = bool(np.all(values == np.round(values)) and np.all(np.abs(values) < 2**53))
        values.tofile(self._file)
        self.n += len(values)

    def write(self, h5: Any, key: str, chunk_rows: int) -> None:
        dtype = np.int64 if self.integral else np.float64
        dset = h5.create_dataset(key, shape=(self.n,), dtype=dtype, chunks=(max(1, min(self.n, 65536)),))
        self._file.seek(0)
        step = max(chunk_rows, 65536)
        for lo in range(0, self.n, step):
            part = np.fromfile(self._file, dtype=np.float64, count=min(step, self.n - lo))
            dset[lo : lo + len(part)] = part.astype(dtype)

    def close(self) -> None:
        self._file.close()


class _RowWriter:
    """A resizable dense 2-D dataset that grows by appended row blocks."""

    def __init__(self, h5: Any, key: str, n_features: int, dtype: Any):
        self.dset = h5.create_dataset(
            key,
            shape=(0, n_features),
            maxshape=(None, n_features),
            dtype=dtype,
            chunks=(h5_chunk_rows(n_features, np.dtype(dtype).itemsize), n_features),
        )
        self.n = 0

    def append(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        self.dset.resize(self.n + len(rows), axis=0)
        self.dset[self.n : self.n + len(rows)] = rows
        self.n += len(rows)


class _CSRWriter:
    """A CSR matrix in an HDF5 group (``data``, ``indices``, ``indptr``) that grows by appended rows."""

    def __init__(self, h5: Any, key: str):
        self.group = h5.create_group(key)
        opts = dict(maxshape=(None,), chunks=(65536,))
        self.data = self.group.create_dataset("data", shape=(0,), dtype=np.float64, **opts)
        self.indices = self.group.create_dataset("indices", shape=(0,), dtype=np.int32, **opts)
        self.indptr = self.group.create_dataset("indptr", shape=(1,), dtype=np.int64, data=[0], **opts)
        self.nnz = 0

    def append(self, data: Any, indices: Any, row_ends: Any) -> None:
        """Rows whose values are ``data`` (columns ``indices``); ``row_ends``: where each row ends in ``data``."""
        k = len(data)
        if k:
            self.data.resize(self.nnz + k, axis=0)
            self.data[self.nnz:] = np.asarray(data, dtype=np.float64)
            self.indices.resize(self.nnz + k, axis=0)
            self.indices[self.nnz:] = np.asarray(indices, dtype=np.int32)
        start = self.indptr.shape[0]
        self.indptr.resize(start + len(row_ends), axis=0)
        self.indptr[start:] = np.asarray(row_ends, dtype=np.int64) + self.nnz
        self.nnz += k


def _infer_format(src: str, fmt: str | None) -> str:
    if fmt is None and os.path.isdir(src):
        return "parquet"  # a directory of Parquet files is the only directory a dataset can be
    if fmt is not None:
        fmt = {"svm": "libsvm", "svmlight": "libsvm"}.get(fmt.lower(), fmt.lower())
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
        return fmt
    ext = os.path.splitext(src)[1].lower()
    if ext not in _EXTENSIONS:
        raise ValueError(
            f"cannot infer the format of {src} from its extension {ext or '(none)'!r}: "
            f"give the format ({', '.join(FORMATS)})"
        )
    return _EXTENSIONS[ext]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _check_finite_rows(values: np.ndarray, where: Callable[[int], str], tokens: Any = None) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        r = int(bad[0])
        what = repr(tokens[r][int(bad[1])]) if tokens is not None and values.ndim == 2 else "a value"
        raise ValueError(f"{where(r)}: {what} is not a finite number (NaN and infinity are rejected)")


def _convert_csv(src, f, x_key, y_key, label_column, delimiter, has_header, chunk_rows, directory):
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"the CSV delimiter must be one character, got {delimiter!r}")
    with open(src, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh, delimiter=delimiter, skipinitialspace=True)
        header: list[str] | None = None
        ncols = label = None
        writer: _RowWriter | None = None
        sink: _LabelSink | None = None
        buf: list[list[str]] = []
        lines: list[int] = []

        def flush() -> None:
            try:
                arr = np.array(buf, dtype=np.float64)
            except ValueError:
                for fields, ln in zip(buf, lines):
                    for tok in fields:
                        if not _is_number(tok):
                            raise ValueError(f"{src} line {ln}: {tok!r} is not a number") from None
                raise ValueError(f"{src} lines {lines[0]}-{lines[-1]}: cannot parse the values as numbers") from None
            _check_finite_rows(arr, lambda r: f"{src} line {lines[r]}", buf)
            if label is None:
                writer.append(arr)
            else:
                sink.append(arr[:, label])
                writer.append(np.delete(arr, label, axis=1))
            buf.clear()
            lines.clear()

        try:
            for fields in reader:
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # blank line
                if ncols is None:  # the first non-blank line: header or data
                    ncols = len(fields)
                    is_header = has_header
                    if is_header is None:
                        is_header = not all(_is_number(tok) for tok in fields)
                    if is_header:
                        header = [tok.strip() for tok in fields]
                    label = _resolve_label(src, label_column, ncols, header, default_last=True)
                    if ncols - (label is not None) < 1:
                        other = next((c for c in ";\t|" if c in fields[0] and c != delimiter), None)
                        hint = (f"; the lines hold {other!r}: is that the delimiter? (delimiter, --delimiter)"
                                if other else "")
                        raise ValueError(f"{src}: no feature columns (only the label column){hint}")
                    writer = _RowWriter(f, x_key, ncols - (label is not None), np.float64)
                    if label is not None:
                        if y_key is None:
                            raise ValueError(f"{src}: a label column needs y_key (or label_column=None)")
                        sink = _LabelSink(directory)
                    if chunk_rows is None:
                        chunk_rows = max(1, min(65536, (1 << 20) // ncols))
                    if is_header:
                        continue
                if len(fields) != ncols:
                    raise ValueError(f"{src} line {reader.line_num}: expected {ncols} columns, got {len(fields)}")
                buf.append(fields)
                lines.append(reader.line_num)
                if len(buf) >= chunk_rows:
                    flush()
            if buf:
                flush()
            if writer is None or writer.n == 0:
                raise ValueError(f"{src}: no data rows")
            if sink is not None:
                sink.write(f, y_key, chunk_rows)
        except csv.Error as exc:
            raise ValueError(f"{src} line {reader.line_num}: {exc}") from None
        finally:
            if sink is not None:
                sink.close()
    info = {"label_column": "none" if label is None else (header[label] if header else int(label)),
            "header": header is not None}
    if header is not None:  # kept for a Parquet copy's column names
        info["feature_names"] = [name for i, name in enumerate(header) if i != label]
    return info


def _resolve_label(src, label_column, ncols, header, default_last):
    """Index of the label column among ``ncols``, or None."""
    if label_column == "auto":
        return ncols - 1 if default_last else None
    if label_column is None:
        return None
    if isinstance(label_column, str):
        if header is None:
            raise ValueError(f"{src}: label column {label_column!r} is given by name but the file has no header")
        if label_column not in header:
            raise ValueError(f"{src}: no column named {label_column!r} (columns: {', '.join(header)})")
        return header.index(label_column)
    if isinstance(label_column, bool) or not isinstance(label_column, (int, np.integer)):
        raise ValueError(f"label_column must be a column index, a name, 'auto' or None, got {label_column!r}")
    if not -ncols <= label_column < ncols:
        raise ValueError(f"{src}: label column {label_column} is out of range for {ncols} columns")
    return int(label_column) % ncols


class _NpyStream:
    """Rows of an ``.npy`` member of an ``.npz`` archive, read in order without loading the array."""

    def __init__(self, fh: Any, shape: tuple, dtype: np.dtype):
        self.fh, self.shape, self.dtype = fh, shape, dtype
        self.row_items = int(np.prod(shape[1:], dtype=np.int64))
        self.pos = 0

    def __getitem__(self, rows: slice) -> np.ndarray:
        lo, hi = rows.start, rows.stop
        assert lo == self.pos, "rows are read in order"
        count = (hi - lo) * self.row_items
        raw = self.fh.read(count * self.dtype.itemsize)
        arr = np.frombuffer(raw, dtype=self.dtype, count=count)
        self.pos = hi
        return arr.reshape((hi - lo,) + tuple(self.shape[1:]))


def _npz_member(src: str, zf: zipfile.ZipFile, key: str, stack: contextlib.ExitStack) -> Any:
    names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    if key not in names:
        raise ValueError(f"{src} has no array {key!r} (arrays: {', '.join(names) or 'none'})")
    fh = stack.enter_context(zf.open(key + ".npy"))
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        fortran, dtype = True, None
    if fortran or dtype is None or dtype.hasobject:
        # Fortran-ordered (or unusual) members cannot be streamed by rows: load this one whole
        with np.load(src, allow_pickle=False) as archive:
            try:
                return archive[key]
            except ValueError as exc:
                raise ValueError(f"{src}: array {key!r} cannot be read: {exc}") from None
    return _NpyStream(fh, shape, dtype)


def _check_numeric(src: str, key: str, arr: Any) -> None:
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{src}: array {key!r} has non-numeric dtype {arr.dtype}")


def _convert_arrays(src, fmt, f, x_key, y_key, label_column, chunk_rows, directory):
    with contextlib.ExitStack() as stack:
        if fmt == "npy":
            try:
                X = np.load(src, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise ValueError(f"{src}: not a readable .npy file ({exc})") from None
            if not isinstance(X, np.ndarray):  # np.load opens a .npz archive too
                X.close()
                raise ValueError(f"{src}: a .npz archive, not a .npy file: give the format npz (--format npz)")
            name, Y = "array", None
        else:
            try:
                zf = stack.enter_context(zipfile.ZipFile(src))
            except zipfile.BadZipFile:
                raise ValueError(f"{src}: not a .npz (zip) archive") from None
            X = _npz_member(src, zf, x_key, stack)
            name = repr(x_key)
            Y = None if y_key is None else _npz_member(src, zf, y_key, stack)
        _check_numeric(src, x_key if fmt == "npz" else "array", X)
        if len(X.shape) != 2:
            raise ValueError(f"{src}: {name} must be 2-D (rows, features), got shape {tuple(X.shape)}")
        n, ncols = (int(s) for s in X.shape)
        if n == 0:
            raise ValueError(f"{src}: no data rows")
        if fmt == "npz" and label_column != "auto":
            raise ValueError(f"{src}: label_column applies to CSV and .npy input; a .npz has its own {y_key!r}")
        label = _resolve_label(src, label_column, ncols, None, default_last=False) if fmt == "npy" else None
        if label is not None and y_key is None:
            raise ValueError(f"{src}: a label column needs y_key (or label_column=None)")
        if ncols - (label is not None) < 1:
            raise ValueError(f"{src}: no feature columns (only the label column)")
        if Y is not None:
            _check_numeric(src, y_key, Y)
            if len(Y.shape) != 1 or Y.shape[0] != n:
                raise ValueError(f"{src}: {y_key!r} must have shape ({n},) like {x_key!r} rows, got {tuple(Y.shape)}")
        x_dtype = X.dtype if X.dtype.kind == "f" else np.dtype(np.float64)
        writer = _RowWriter(f, x_key, ncols - (label is not None), x_dtype)
        sink = _LabelSink(directory) if label is not None else None
        ydset = None
        if Y is not None:
            ydset = f.create_dataset(y_key, shape=(n,), dtype=Y.dtype, chunks=(max(1, min(n, 65536)),))
        step = chunk_rows or work_chunk_rows(ncols)
        try:
            for lo in range(0, n, step):
                hi = min(n, lo + step)
                block = np.asarray(X[lo:hi])
                if block.dtype.kind == "f":
                    _check_finite_rows(block, lambda r: f"{src} row {lo + r}")
                if label is None:
                    writer.append(block.astype(x_dtype, copy=False))
                else:
                    sink.append(block[:, label])
                    writer.append(np.delete(block, label, axis=1).astype(x_dtype, copy=False))
                if ydset is not None:
                    yb = np.asarray(Y[lo:hi])
                    if yb.dtype.kind == "f":
                        _check_finite_rows(yb, lambda r: f"{src} {y_key!r} row {lo + r}")
                    ydset[lo:hi] = yb
            if sink is not None:
                sink.write(f, y_key, step)
        finally:
            if sink is not None:
                sink.close()
    return {"label_column": "none" if label is None else label}


def _convert_libsvm(src, f, x_key, y_key, chunk_rows, n_features, zero_based, directory):
    if zero_based not in (True, False, "auto"):
        raise ValueError(f"zero_based must be True, False or 'auto', got {zero_based!r}")
    if n_features is not None:
        n_features = positive_int("n_features", n_features)
    if y_key is None:
        raise ValueError(f"{src}: LIBSVM lines start with a label; give y_key")
    chunk_rows = chunk_rows or 65536
    csr = _CSRWriter(f, x_key)
    sink = _LabelSink(directory)
    rows = 0
    min_index, max_index, max_line, zero_line = None, -1, 0, 0
    b_data: list[float] = []
    b_idx: list[int] = []
    b_ptr: list[int] = []
    b_y: list[float] = []

    def flush() -> None:
        csr.append(b_data, b_idx, b_ptr)
        sink.append(np.asarray(b_y, dtype=np.float64))
        b_data.clear(), b_idx.clear(), b_ptr.clear(), b_y.clear()

    try:
        with open(src, encoding="utf-8-sig", errors="replace") as fh:
            for ln, line in enumerate(fh, 1):
                toks = line.split("#", 1)[0].split()
                if not toks:
                    continue
                try:
                    yv = line_label(toks[0])
                except ValueError as exc:
                    raise ValueError(f"{src} line {ln}: {exc}") from None
                prev, row_first = -1, None
                for tok in toks[1:]:
                    idx_s, sep, val_s = tok.partition(":")
                    if not sep:
                        raise ValueError(f"{src} line {ln}: expected index:value, got {tok!r}")
                    if idx_s == "qid":
                        continue  # query ids (ranking data) are ignored
                    try:
                        idx = int(idx_s)
                    except ValueError:
                        raise ValueError(f"{src} line {ln}: {idx_s!r} is not a feature index") from None
                    if idx < 0 or idx >= 2**31 - 1:
                        raise ValueError(f"{src} line {ln}: feature index {idx} is out of range")
                    if idx <= prev:
                        raise ValueError(
                            f"{src} line {ln}: feature indices must be increasing, got {idx} after {prev}"
                        )
                    try:
                        val = finite_number(val_s)
                    except ValueError as exc:
                        raise ValueError(f"{src} line {ln}: {exc}") from None
                    if prev < 0:
                        row_first = idx
                    prev = idx
                    b_idx.append(idx)
                    b_data.append(val)
                if row_first is not None:
                    if min_index is None or row_first < min_index:
                        min_index = row_first
                        if min_index == 0:
                            zero_line = ln
                    if prev > max_index:
                        max_index, max_line = prev, ln
                rows += 1
                b_ptr.append(len(b_data))
                b_y.append(yv)
                if len(b_ptr) >= chunk_rows:
                    flush()
        if b_ptr:
            flush()
        if rows == 0:
            raise ValueError(f"{src}: no data rows")
        shift = 1 if zero_based is False or (zero_based == "auto" and (min_index is None or min_index >= 1)) else 0
        if zero_based is False and min_index == 0:
            raise ValueError(f"{src} line {zero_line}: feature index 0 in a file read as one-based")
        needed = max_index + 1 - shift if max_index >= 0 else 0
        if n_features is None:
            if needed == 0:
                raise ValueError(f"{src}: no feature values in the file: give n_features")
            n_features = needed
        elif needed > n_features:
            raise ValueError(
                f"{src} line {max_line}: feature index {max_index} needs {needed} features, "
                f"but n_features is {n_features}"
            )
        if shift:
            step = 1 << 20
            for lo in range(0, csr.nnz, step):
                csr.indices[lo : lo + step] = csr.indices[lo : lo + step] - 1
        csr.group.attrs["shape"] = np.array([rows, n_features], dtype=np.int64)
        sink.write(f, y_key, chunk_rows)
    finally:
        sink.close()
    return {"zero_based": not shift, "n_features": n_features}


def _convert_hashed(src, fmt, f, x_key, y_key, label_column, chunk_rows, n_bits, directory):
    """LIBSVM or token lines hashed into ``2**n_bits`` columns (:class:`drizzle_ml.hashing.LineHasher`), by chunks."""

    if fmt == "libsvm" and label_column != "auto":
        raise ValueError(f"{src}: LIBSVM lines start with their label; label_column applies to CSV, NPY and tokens")
    if label_column not in ("auto", 0, None):
        raise ValueError(f"{src}: a token line's label is its first field (label_column 'auto' or 0) or there is "
                         f"none (label_column None), got {label_column!r}")
    has_label = label_column is not None
    if has_label and y_key is None:
        raise ValueError(f"{src}: the lines start with a label; give y_key (or label_column=None for tokens)")
    hasher = LineHasher(n_bits, fmt, has_label=has_label)
    chunk_rows = chunk_rows or 65536
    csr = _CSRWriter(f, x_key)
    sink = _LabelSink(directory) if has_label else None
    rows = 0

    def flush(lines: list[str], first: int) -> None:
        nonlocal rows

        def fail(i: int, reason: str) -> None:
            raise ValueError(f"{src} line {first + i}: {reason}")

        X, y, _ = hasher.hash_lines(lines, fail)
        csr.append(X.data, X.indices, X.indptr[1:])
        rows += X.shape[0]
        if sink is not None:
            sink.append(y)

    try:
        with open(src, encoding="utf-8-sig", errors="replace") as fh:
            line_no = 1
            while lines := list(itertools.islice(fh, chunk_rows)):
                flush(lines, line_no)
                line_no += len(lines)
        if rows == 0:
            raise ValueError(f"{src}: no data rows")
        csr.group.attrs["shape"] = np.array([rows, hasher.n_features], dtype=np.int64)
        if sink is not None:
            sink.write(f, y_key, chunk_rows)
    finally:
        if sink is not None:
            sink.close()
    return {"hash_bits": n_bits, "n_features": hasher.n_features, "alternate_sign": True,
            "label_column": "first" if has_label else "none"}


def _convert_parquet(src, f, x_key, y_key, label_column, features, chunk_rows):
    """Parquet (a file or a directory of them) to HDF5, a batch of rows at a time."""
    import h5py

    from drizzle_ml.parquet import ParquetDataset

    if label_column == "auto":
        target = "auto"
    elif label_column is None or isinstance(label_column, str):
        target = label_column
    else:
        raise ValueError(f"{src}: give the Parquet label column by name, not by index ({label_column!r})")
    dataset = ParquetDataset(src, features=features, target=target)
    write_y = y_key is not None and dataset.target is not None
    writer = _RowWriter(f, x_key, dataset.n_features, np.float64)
    ydset = None
    if write_y:
        text = dataset.y_dtype.kind == "U"
        ydset = f.create_dataset(y_key, shape=(0,), maxshape=(None,), chunks=(65536,),
                                 dtype=h5py.string_dtype() if text else dataset.y_dtype)
    step = chunk_rows or work_chunk_rows(dataset.n_features)
    for block in dataset.iter_rows(with_targets=write_y, chunk_rows=step):
        X, y = block if write_y else (block, None)
        writer.append(X)
        if ydset is not None:
            ydset.resize(writer.n, axis=0)
            ydset[writer.n - len(y):] = y.astype(object) if y.dtype.kind == "U" else y
    return {"feature_names": list(dataset.features), "label_column": dataset.target if write_y else "none",
            "files": len(dataset.files)}


def _write_parquet(h5_path: str, dst: str, x_key: str, y_key: str | None, chunk_rows: int | None,
                   overwrite: bool, source: str | None = None) -> dict[str, Any]:
    """An HDF5 dataset (dense X, optional y) to the Parquet file ``dst``: one row group per chunk of rows.

    Columns: the features by name (the CSV header's names when the HDF5 file
    came from a CSV with one, else ``x0``, ``x1``, ...), then the target as
    ``y_key`` (``y``), which is the Parquet commands' default target.
    ``source`` names the file the user gave in errors (the HDF5 file may be
    a scratch copy of it).
    """
    import h5py

    from drizzle_ml.data import check_targets, read_targets
    from drizzle_ml.parquet import pyarrow_parquet

    pq = pyarrow_parquet()
    import pyarrow as pa

    shown = source or h5_path
    if not h5py.is_hdf5(h5_path):
        raise ValueError(f"{shown}: not an HDF5 file")
    try:
        h5 = h5py.File(h5_path, "r")
    except OSError as exc:
        raise OSError(f"cannot read {shown}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    with h5 as f:
        if x_key not in f:
            raise ValueError(f"{shown} has no {x_key!r} (keys: {', '.join(sorted(f.keys())) or 'none'})")
        node = f[x_key]
        if not isinstance(node, h5py.Dataset):
            raise ValueError(f"{shown}: {x_key!r} is a sparse (CSR) matrix; Parquet columns would store every "
                             "zero: keep it in HDF5")
        if node.ndim != 2:
            raise ValueError(f"{shown}: {x_key!r} must be 2-D (rows, features), got shape {node.shape}")
        _check_numeric(shown, x_key, node)
        n, d = (int(v) for v in node.shape)
        names = None
        stored = f.attrs.get("feature_names")
        if stored is not None:
            try:
                names = json.loads(stored)
            except (TypeError, ValueError):
                names = None
        if not (isinstance(names, list) and len(names) == d and all(isinstance(v, str) and v for v in names)
                and len(set(names)) == d):
            names = [f"x{j}" for j in range(d)]
        ynode = f[y_key] if y_key is not None and y_key in f else None
        if ynode is not None and (not isinstance(ynode, h5py.Dataset) or ynode.shape != (n,)):
            raise ValueError(f"{shown}: {y_key!r} must have shape ({n},) like {x_key!r} rows")
        if ynode is not None:
            check_targets(ynode, n, shown, x_key, y_key)
        if ynode is not None and y_key in names:
            raise ValueError(f"{shown}: a feature column is named {y_key!r}, the name the target column takes; "
                             "give the target another name (y_key, --y-key)")
        step = chunk_rows or work_chunk_rows(d)
        groups = 0
        with atomic_output(dst, overwrite=overwrite) as tmp:
            writer = None
            try:
                for lo in range(0, n, step):
                    hi = min(n, lo + step)
                    block = node[lo:hi]
                    columns = {name: block[:, j] for j, name in enumerate(names)}
                    if ynode is not None:
                        columns[y_key] = read_targets(ynode, lo, hi)
                    table = pa.table(columns)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table, row_group_size=hi - lo)
                    groups += 1
                if writer is None:
                    raise ValueError(f"{shown}: no data rows")
            finally:
                if writer is not None:
                    writer.close()
    return {"path": dst, "rows": n, "features": d, "columns": names,
            "target": y_key if ynode is not None else None, "row_groups": groups}


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    fmt: str | None = None,
    x_key: str = "X",
    y_key: str | None = "y",
    label_column: int | str | None = "auto",
    delimiter: str = ",",
    has_header: bool | None = None,
    chunk_rows: int | None = None,
    n_features: int | None = None,
    zero_based: bool | str = "auto",
    overwrite: bool = False,
    features: list[str] | None = None,
    hash_features: int | None = None,
) -> dict[str, Any]:
    """Convert ``src`` (CSV, NPY, NPZ, LIBSVM or Parquet) to the HDF5 file ``dst``; return :func:`describe` of it.

    With ``dst`` ending in ``.parquet`` (or ``.pq``), ``src`` (CSV, NPY, NPZ,
    LIBSVM with dense rows, or HDF5) becomes a Parquet file instead, one row
    group per ``chunk_rows`` rows, with feature columns ``x0``, ``x1``, ...
    (a CSV header's names when it has one) and the target column ``y_key``;
    the result is then a dict with ``path``, ``rows``, ``features``,
    ``columns``, ``target``, ``row_groups``. Text and array input goes
    through a temporary HDF5 file beside ``dst``, so memory stays bounded.

    Parquet input (a file or a directory of them, needs pyarrow): the
    columns ``features`` (default: every numeric column but the target) and
    the target ``label_column`` by name (``"auto"``: the column ``y`` if there is one).

    fmt : ``"csv"``, ``"npy"``, ``"npz"`` or ``"libsvm"`` (also ``"svm"``,
        ``"svmlight"``); by default inferred from the extension: ``.csv``,
        ``.npy``, ``.npz``, ``.svm`` / ``.libsvm`` / ``.svmlight`` / ``.txt``.
    x_key, y_key : names of X and y in the output (the engine's
        ``HDF5Dataset(path, x_key, y_key)``), and for NPZ input also the
        names of the arrays read from the archive. ``y_key=None``: no y.
    label_column : the column holding y, for CSV and NPY input: an index
        (negative counts from the end), a header name (CSV), ``None`` for no
        label (every column is a feature), or ``"auto"``: the last column for
        CSV, none for NPY (the array is X).
    delimiter : CSV field separator (one character).
    has_header : CSV header line: ``None`` detects it (a first line with any
        non-numeric field is a header; pass ``True`` for a header of numbers).
    chunk_rows : rows (lines) read and written at a time; memory use is
        bounded by it, not by the input size. The result does not depend on it.
    n_features : LIBSVM: the number of features (default: the largest index
        seen + 1); an index beyond it is an error.
    zero_based : LIBSVM: whether feature indices start at 0. ``"auto"`` (as
        ``sklearn.datasets.load_svmlight_file``): one-based unless some index
        is 0, i.e. a file with no index 0 is read as one-based.
    overwrite : replace ``dst`` if it exists (otherwise ``FileExistsError``).
    hash_features : hash the features of LIBSVM or ``"tokens"`` input into
        ``2**hash_features`` columns (1..31) with
        :class:`drizzle_ml.hashing.LineHasher`, as scikit-learn's
        ``FeatureHasher`` does: a LIBSVM index is the feature named by its
        integer (``"7"``), any order; a token line is ``label token token
        ...`` (``label_column=None``: no label), each token worth 1. The file
        attributes record ``hash_bits``, which ``train`` copies into the model
        so that ``predict`` hashes text input the same way.

    CSV and LIBSVM values are stored as float64 (X) and y as int64 when
    every label is integral, else float64. NPY/NPZ arrays keep float32 or
    float64 (other numeric dtypes become float64); NPZ ``y`` keeps its dtype.
    Blank lines are skipped (and ``#`` comments in LIBSVM). NaN or infinite
    values are rejected, naming the line (text) or row (arrays). LIBSVM
    ``qid:`` tokens are ignored; indices must increase within a line.
    Output goes to a temporary file renamed to ``dst`` on success.
    """
    import h5py

    src_s = os.fspath(src)
    if not os.path.exists(src_s):
        raise FileNotFoundError(f"{src_s}: no such file")
    if not (os.path.isfile(src_s) or os.path.isdir(src_s)):  # reading a FIFO would wait for a writer
        raise ValueError(f"{src_s} is not a regular file (a FIFO or a device): give a file to convert")
    fmt = _infer_format(src_s, fmt)
    if hash_features is not None:
        check_n_bits(hash_features, "hash_features")
        if fmt not in HASHED_FORMATS:
            raise ValueError(f"hash_features (--hash-features) applies to LIBSVM and tokens input, not {fmt}")
        if n_features is not None or zero_based != "auto":
            raise ValueError("n_features and zero_based do not apply to hashed features (2**hash_features columns)")
        if os.fspath(dst).lower().endswith((".parquet", ".pq")):
            raise ValueError("hashed features are a sparse matrix; Parquet columns would store every zero: write HDF5")
    elif fmt == "tokens":
        raise ValueError(f"{src_s}: tokens input is hashed: give hash_features (--hash-features BITS)")
    if os.path.isdir(src_s) and fmt != "parquet":
        raise IsADirectoryError(f"{src_s} is a directory, not an input file")
    if features is not None and fmt != "parquet":
        raise ValueError(f"features choose Parquet columns; {src_s} is {fmt}")
    if os.fspath(dst).lower().endswith((".parquet", ".pq")):
        return _convert_to_parquet(src_s, os.fspath(dst), fmt, x_key, y_key, label_column, delimiter,
                                   has_header, chunk_rows, n_features, zero_based, overwrite)
    if fmt == "hdf5":
        raise ValueError(f"{src_s} is HDF5 already: convert writes HDF5, or Parquet when -o ends in .parquet")
    if not x_key or (y_key is not None and (not y_key or y_key == x_key)):
        raise ValueError(f"x_key and y_key must be distinct non-empty names, got {x_key!r} and {y_key!r}")
    if n_features is not None and fmt != "libsvm":
        raise ValueError(f"n_features applies to LIBSVM input only, not {fmt}")
    chunk_rows = None if chunk_rows is None else check_chunk_rows(chunk_rows, 0)
    directory = os.path.dirname(os.path.abspath(os.fspath(dst)))
    with atomic_output(dst, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            if fmt == "csv":
                info = _convert_csv(src_s, f, x_key, y_key, label_column, delimiter, has_header,
                                    chunk_rows, directory)
            elif fmt in ("npy", "npz"):
                info = _convert_arrays(src_s, fmt, f, x_key, y_key, label_column, chunk_rows, directory)
            elif fmt == "parquet":
                info = _convert_parquet(src_s, f, x_key, y_key, label_column, features, chunk_rows)
            elif hash_features is not None:
                info = _convert_hashed(src_s, fmt, f, x_key, y_key, label_column, chunk_rows, hash_features,
                                       directory)
            else:
                info = _convert_libsvm(src_s, f, x_key, y_key, chunk_rows, n_features, zero_based, directory)
            f.attrs["converted_by"] = "drizzle_ml.datasets.convert"
            f.attrs["source"] = os.path.basename(src_s)
            f.attrs["format"] = fmt
            for name, value in info.items():
                f.attrs[name] = json_attr(value)
    return describe(dst, x_key=x_key, y_key=y_key if y_key is not None else None)


def _convert_to_parquet(src, dst, fmt, x_key, y_key, label_column, delimiter, has_header, chunk_rows,
                        n_features, zero_based, overwrite) -> dict[str, Any]:
    if fmt == "parquet":
        raise ValueError(f"{src} is Parquet already: convert writes Parquet from CSV, NPY, NPZ, LIBSVM or HDF5")
    if os.path.lexists(dst) and not overwrite:  # before any work
        raise FileExistsError(f"{dst} exists: pass overwrite=True (--overwrite) to replace it")
    if fmt == "hdf5":
        return _write_parquet(src, dst, x_key, y_key, chunk_rows, overwrite)
    # Through a hidden HDF5 file beside dst: every text and array reader streams into HDF5 already.
    directory = os.path.dirname(os.path.abspath(dst))
    fd, scratch = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", suffix=".h5", dir=directory)
    os.close(fd)
    try:
        convert(src, scratch, fmt=fmt, x_key=x_key, y_key=y_key, label_column=label_column, delimiter=delimiter,
                has_header=has_header, chunk_rows=chunk_rows, n_features=n_features, zero_based=zero_based,
                overwrite=True)
        return _write_parquet(scratch, dst, x_key, y_key, chunk_rows, overwrite, source=src)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
