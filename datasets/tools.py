"""Make, convert and inspect the HDF5 files the engine reads (:class:`drizzle_ml.data.HDF5Dataset`);
convert Parquet to HDF5 and back (pyarrow, imported only then).

Layout written by every function here:

* ``X``: a dense 2-D dataset ``(n_rows, n_features)``, chunked by rows; or,
  for sparse input (LIBSVM), a group ``X`` holding CSR arrays ``data``
  (float64), ``indices`` (int32), ``indptr`` (int64) and an attribute
  ``shape = (n_rows, n_features)``;
* ``y``: a 1-D dataset ``(n_rows,)`` (absent when there are no labels);
* file attributes saying how the file was made (kind, parameters, seed, or
  the source file and its format).

Everything streams: :func:`make_dataset` generates rows chunk by chunk and
:func:`convert` reads its source chunk by chunk, so files larger than memory
can be made and converted. Output goes to a temporary file in the
destination's directory that is renamed into place once complete, so a
failed run never leaves a half-written file behind.

Errors are ``ValueError`` / ``FileNotFoundError`` / ``FileExistsError`` with
one-line messages that name the file and, for text input, the line.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from drizzle_ml.files import atomic_output

__all__ = [
    "KINDS",
    "FORMATS",
    "make_dataset",
    "convert",
    "describe",
    "summary_line",
]

KINDS = ("classification", "regression", "lowrank", "blobs")
FORMATS = ("csv", "npy", "npz", "libsvm", "parquet", "hdf5")

_EXTENSIONS = {
    ".csv": "csv",
    ".npy": "npy",
    ".npz": "npz",
    ".svm": "libsvm",
    ".libsvm": "libsvm",
    ".svmlight": "libsvm",
    ".txt": "libsvm",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
}

# Rows of one random stream in make_dataset. Fixed: each block of this many
# rows draws from its own generator seeded by (seed, block index), so a file
# depends on the seed only, never on the chunk size used to write it.
_BLOCK_ROWS = 65536

# Target size of one HDF5 chunk (bytes), and of one in-memory work chunk.
_H5_CHUNK_BYTES = 1 << 20
_WORK_CHUNK_BYTES = 1 << 25


# --------------------------------------------------------------------------- helpers


def _h5_chunk_rows(n_features: int, itemsize: int = 8) -> int:
    return max(1, min(65536, _H5_CHUNK_BYTES // max(1, n_features * itemsize)))


def _work_chunk_rows(n_features: int) -> int:
    return max(1, min(1 << 20, _WORK_CHUNK_BYTES // max(1, 8 * n_features)))


def _check_chunk_rows(chunk_rows: int | None, default: int) -> int:
    if chunk_rows is None:
        return default
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    return int(chunk_rows)


def _json_attr(value: Any) -> Any:
    """An HDF5-storable form of a parameter value."""
    if value is None:
        return "none"
    if isinstance(value, (bool, int, float, str, np.integer, np.floating)):
        return value
    return json.dumps(value)


def _python(value: Any) -> Any:
    """h5py attribute values as plain Python objects."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


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
            chunks=(_h5_chunk_rows(n_features, np.dtype(dtype).itemsize), n_features),
        )
        self.n = 0

    def append(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        self.dset.resize(self.n + len(rows), axis=0)
        self.dset[self.n : self.n + len(rows)] = rows
        self.n += len(rows)


# --------------------------------------------------------------------------- make


def _seed_seq(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=key)


class _Generator:
    """Parameters of one synthetic dataset kind and its per-row sampler.

    ``sample(streams, m)`` draws the next ``m`` rows from the block's
    generators; each stream is used for one kind of draw only, so drawing a
    block in several pieces yields exactly the rows of drawing it at once.
    """

    has_y = True
    y_dtype: Any = np.int64

    def __init__(self, rows: int, features: int, rng: np.random.Generator, **options: Any):
        raise NotImplementedError

    params: dict[str, Any]
    model: dict[str, np.ndarray]

    def sample(self, streams: list[np.random.Generator], m: int) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError


def _matmul_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B`` computed so that each row's result depends on that row only.

    BLAS picks different kernels (and summation orders) for different numbers
    of rows, so ``A @ B`` on a chunk can differ in the last bit from the same
    rows in another chunk; this fixed-order accumulation cannot.
    """
    out = np.zeros((A.shape[0],) + B.shape[1:])
    for j in range(A.shape[1]):
        out += A[:, j, None] * B[j] if B.ndim == 2 else A[:, j] * B[j]
    return out


def _labels(stream: np.random.Generator, m: int, n: int) -> np.ndarray:
    # uniform doubles (one draw each, no buffering across calls), not integers()
    return np.minimum((stream.random(m) * n).astype(np.int64), n - 1)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _nonnegative(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


class _Classification(_Generator):
    """Like ``sklearn.datasets.make_classification`` (one cluster per class, no redundant features).

    Each class has a centroid at a distinct vertex of the hypercube
    ``[-class_sep, class_sep]^n_informative``; a row is its class centroid plus
    standard normal noise mixed by a random ``n_informative`` square matrix
    (informative features, the first ones), then standard normal noise features.
    Labels are uniform over ``0..n_classes-1``.
    """

    def __init__(self, rows, features, rng, n_classes=2, n_informative=None, class_sep=1.0):
        n_classes = _positive_int("n_classes", n_classes)
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        needed = max(2, math.ceil(math.log2(n_classes)))
        if n_informative is None:
            n_informative = min(features, needed)
        n_informative = _positive_int("n_informative", n_informative)
        if n_informative > features:
            raise ValueError(f"n_informative={n_informative} exceeds features={features}")
        if 2**n_informative < n_classes:
            raise ValueError(
                f"{n_classes} classes need at least {math.ceil(math.log2(n_classes))} informative features "
                f"(distinct hypercube vertices), got {n_informative}"
            )
        class_sep = _nonnegative("class_sep", class_sep)
        if n_informative <= 30:
            vertices = rng.choice(2**n_informative, n_classes, replace=False)
            bits = (vertices[:, None] >> np.arange(n_informative)) & 1
        else:
            bits = rng.random((n_classes, n_informative)) < 0.5
        self.centers = class_sep * (2.0 * bits - 1.0)
        self.mixing = rng.uniform(-1.0, 1.0, (n_informative, n_informative))
        self.n_classes, self.n_informative, self.features = n_classes, n_informative, features
        self.params = {"n_classes": n_classes, "n_informative": n_informative, "class_sep": class_sep}
        self.model = {"centers": self.centers, "mixing": self.mixing}

    def sample(self, streams, m):
        y = _labels(streams[0], m, self.n_classes)
        X = streams[1].standard_normal((m, self.features))
        k = self.n_informative
        X[:, :k] = _matmul_rows(X[:, :k], self.mixing) + self.centers[y]
        return X, y


class _Regression(_Generator):
    """A linear model plus noise: ``y = X @ coef + bias + noise * N(0, 1)``, X standard normal.

    ``n_informative`` randomly chosen features (default all) get coefficients
    uniform in ``[0, 100)`` as in ``sklearn.datasets.make_regression``; the
    coefficients are stored in ``model/coef``.
    """

    y_dtype = np.float64

    def __init__(self, rows, features, rng, n_informative=None, noise=0.1, bias=0.0):
        n_informative = features if n_informative is None else _positive_int("n_informative", n_informative)
        if n_informative > features:
            raise ValueError(f"n_informative={n_informative} exceeds features={features}")
        noise = _nonnegative("noise", noise)
        bias = float(bias)
        self.coef = np.zeros(features)
        self.coef[rng.permutation(features)[:n_informative]] = 100.0 * rng.random(n_informative)
        self.noise, self.bias, self.features = noise, bias, features
        self.params = {"n_informative": n_informative, "noise": noise, "bias": bias}
        self.model = {"coef": self.coef}

    def sample(self, streams, m):
        X = streams[1].standard_normal((m, self.features))
        y = _matmul_rows(X, self.coef) + self.bias + self.noise * streams[2].standard_normal(m)
        return X, y


class _LowRank(_Generator):
    """``X = Z diag(s) V^T + noise * N(0, 1)``: rows with a rank-``rank`` covariance plus isotropic noise.

    ``V`` (``features x rank``) has orthonormal columns (stored transposed as
    ``model/components``), ``Z`` is standard normal, and ``s_k = 1 / (k + 1)``
    (``model/singular_values``): the rows' covariance is
    ``V diag(s**2) V^T + noise**2 I``. No ``y``.
    """

    has_y = False
    y_dtype = None

    def __init__(self, rows, features, rng, rank=None, noise=0.01):
        rank = min(10, features) if rank is None else _positive_int("rank", rank)
        if rank > features:
            raise ValueError(f"rank={rank} exceeds features={features}")
        noise = _nonnegative("noise", noise)
        q, r = np.linalg.qr(rng.standard_normal((features, rank)))
        self.components = (q * np.sign(np.diag(r))).T.copy()  # (rank, features), orthonormal rows
        self.s = 1.0 / np.arange(1, rank + 1)
        self.rank, self.noise, self.features = rank, noise, features
        self.params = {"rank": rank, "noise": noise}
        self.model = {"components": self.components, "singular_values": self.s}

    def sample(self, streams, m):
        Z = streams[0].standard_normal((m, self.rank))
        X = _matmul_rows(Z * self.s, self.components)
        if self.noise:
            X += self.noise * streams[1].standard_normal((m, self.features))
        return X, None


class _Blobs(_Generator):
    """Isotropic Gaussian blobs like ``sklearn.datasets.make_blobs``.

    ``centers`` centers uniform in ``center_box`` (stored in ``model/centers``);
    a row is a uniformly chosen center (its index is the label) plus
    ``cluster_std * N(0, 1)``.
    """

    def __init__(self, rows, features, rng, centers=3, cluster_std=1.0, center_box=(-10.0, 10.0)):
        centers = _positive_int("centers", centers)
        cluster_std = _nonnegative("cluster_std", cluster_std)
        lo, hi = (float(v) for v in center_box)
        if not lo < hi:
            raise ValueError(f"center_box must be (low, high) with low < high, got {center_box!r}")
        self.centers = rng.uniform(lo, hi, (centers, features))
        self.n_centers, self.cluster_std, self.features = centers, cluster_std, features
        self.params = {"centers": centers, "cluster_std": cluster_std, "center_box": [lo, hi]}
        self.model = {"centers": self.centers}

    def sample(self, streams, m):
        y = _labels(streams[0], m, self.n_centers)
        X = self.centers[y] + self.cluster_std * streams[1].standard_normal((m, self.features))
        return X, y


_GENERATORS: dict[str, type[_Generator]] = {
    "classification": _Classification,
    "regression": _Regression,
    "lowrank": _LowRank,
    "blobs": _Blobs,
}


def _kind_options(kind: str) -> list[str]:
    import inspect

    params = inspect.signature(_GENERATORS[kind].__init__).parameters
    return [p for p in params if p not in ("self", "rows", "features", "rng")]


def make_dataset(
    kind: str,
    path: str | os.PathLike,
    rows: int,
    features: int,
    *,
    random_state: int = 0,
    chunk_rows: int | None = None,
    overwrite: bool = False,
    **kind_options: Any,
) -> dict[str, Any]:
    """Write a synthetic dataset to the HDF5 file ``path``, chunk by chunk; return :func:`describe` of it.

    kind : ``"classification"`` (options ``n_classes=2``, ``n_informative``,
        ``class_sep=1.0``; int64 labels ``0..n_classes-1``),
        ``"regression"`` (``n_informative``, ``noise=0.1``, ``bias=0.0``;
        float64 ``y``), ``"lowrank"`` (``rank=min(10, features)``,
        ``noise=0.01``; no ``y``) or ``"blobs"`` (``centers=3``,
        ``cluster_std=1.0``, ``center_box=(-10, 10)``; int64 labels).
    rows, features : the shape of ``X`` (float64).
    random_state : a non-negative integer seed. The model (centers, weights,
        basis) is drawn once from it; rows are drawn in fixed blocks of
        65,536, each from a generator seeded by ``(random_state, block)``,
        so the file depends on the seed only, not on ``chunk_rows``.
    chunk_rows : rows generated and written at a time (default: about 32 MB
        of ``X``); memory use is bounded by it, not by ``rows``.
    overwrite : replace ``path`` if it exists (otherwise ``FileExistsError``).

    The model arrays are stored in the group ``model`` (e.g. ``model/coef``),
    and the file attributes record ``kind``, ``seed``, ``rows``, ``features``
    and every option.
    """
    import h5py

    if kind not in _GENERATORS:
        raise ValueError(f"unknown dataset kind {kind!r}: choose from {', '.join(KINDS)}")
    rows = _positive_int("rows", rows)
    features = _positive_int("features", features)
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0:
        raise ValueError(f"random_state must be a non-negative integer, got {random_state!r}")
    seed = int(random_state)
    allowed = _kind_options(kind)
    unknown = sorted(set(kind_options) - set(allowed))
    if unknown:
        raise ValueError(
            f"{kind} datasets take no option {', '.join(map(repr, unknown))} (options: {', '.join(allowed)})"
        )
    chunk_rows = _check_chunk_rows(chunk_rows, _work_chunk_rows(features))
    gen = _GENERATORS[kind](rows, features, np.random.default_rng(_seed_seq(seed, 0)), **kind_options)

    with atomic_output(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        X = f.create_dataset("X", shape=(rows, features), dtype=np.float64,
                             chunks=(min(rows, _h5_chunk_rows(features)), features))
        y = None
        if gen.has_y:
            y = f.create_dataset("y", shape=(rows,), dtype=gen.y_dtype, chunks=(min(rows, 65536),))
        streams: list[np.random.Generator] = []
        for lo in range(0, rows, chunk_rows):
            hi = min(rows, lo + chunk_rows)
            xs, ys = [], []
            start = lo
            while start < hi:  # split the chunk at block boundaries
                block, offset = divmod(start, _BLOCK_ROWS)
                stop = min(hi, (block + 1) * _BLOCK_ROWS)
                if offset == 0:  # chunks are written in order: a block always starts with its first row
                    streams = [np.random.default_rng(_seed_seq(seed, 1, block, s)) for s in range(3)]
                xb, yb = gen.sample(streams, stop - start)
                xs.append(xb)
                ys.append(yb)
                start = stop
            X[lo:hi] = xs[0] if len(xs) == 1 else np.concatenate(xs)
            if y is not None:
                y[lo:hi] = np.concatenate(ys)
        model = f.create_group("model")
        for name, arr in gen.model.items():
            model.create_dataset(name, data=arr)
        f.attrs["generator"] = "drizzle_ml.datasets.make_dataset"
        f.attrs["kind"] = kind
        f.attrs["seed"] = seed
        f.attrs["rows"] = rows
        f.attrs["features"] = features
        f.attrs["block_rows"] = _BLOCK_ROWS
        for name, value in gen.params.items():
            f.attrs[name] = _json_attr(value)
    return describe(path, y_key="y" if gen.has_y else None)


# --------------------------------------------------------------------------- convert


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
    with open(src, newline="", encoding="utf-8", errors="replace") as fh:
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
                        raise ValueError(f"{src}: no feature columns (only the label column)")
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
        step = chunk_rows or _work_chunk_rows(ncols)
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
        n_features = _positive_int("n_features", n_features)
    if y_key is None:
        raise ValueError(f"{src}: LIBSVM lines start with a label; give y_key")
    chunk_rows = chunk_rows or 65536
    g = f.create_group(x_key)
    opts = dict(maxshape=(None,), chunks=(65536,))
    data = g.create_dataset("data", shape=(0,), dtype=np.float64, **opts)
    indices = g.create_dataset("indices", shape=(0,), dtype=np.int32, **opts)
    indptr = g.create_dataset("indptr", shape=(1,), dtype=np.int64, data=[0], **opts)
    sink = _LabelSink(directory)
    nnz = rows = 0
    min_index, max_index, max_line, zero_line = None, -1, 0, 0
    b_data: list[float] = []
    b_idx: list[int] = []
    b_ptr: list[int] = []
    b_y: list[float] = []

    def flush() -> None:
        nonlocal nnz
        k = len(b_data)
        if k:
            data.resize(nnz + k, axis=0)
            data[nnz:] = np.asarray(b_data, dtype=np.float64)
            indices.resize(nnz + k, axis=0)
            indices[nnz:] = np.asarray(b_idx, dtype=np.int32)
            nnz += k
        start = indptr.shape[0]
        indptr.resize(start + len(b_ptr), axis=0)
        indptr[start:] = np.asarray(b_ptr, dtype=np.int64)
        sink.append(np.asarray(b_y, dtype=np.float64))
        b_data.clear(), b_idx.clear(), b_ptr.clear(), b_y.clear()

    try:
        with open(src, encoding="utf-8", errors="replace") as fh:
            for ln, line in enumerate(fh, 1):
                toks = line.split("#", 1)[0].split()
                if not toks:
                    continue
                lab = toks[0]
                if ":" in lab:
                    raise ValueError(f"{src} line {ln}: the line starts with {lab!r}, not a label")
                if "," in lab:
                    raise ValueError(f"{src} line {ln}: multilabel {lab!r} is not supported")
                try:
                    yv = float(lab)
                except ValueError:
                    raise ValueError(f"{src} line {ln}: label {lab!r} is not a number") from None
                if not math.isfinite(yv):
                    raise ValueError(f"{src} line {ln}: label {lab!r} is not a finite number")
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
                        val = float(val_s)
                    except ValueError:
                        raise ValueError(f"{src} line {ln}: {val_s!r} is not a number") from None
                    if not math.isfinite(val):
                        raise ValueError(f"{src} line {ln}: {val_s!r} is not a finite number")
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
                b_ptr.append(nnz + len(b_data))
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
            for lo in range(0, nnz, step):
                indices[lo : lo + step] = indices[lo : lo + step] - 1
        g.attrs["shape"] = np.array([rows, n_features], dtype=np.int64)
        sink.write(f, y_key, chunk_rows)
    finally:
        sink.close()
    return {"zero_based": not shift, "n_features": n_features}


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
    step = chunk_rows or _work_chunk_rows(dataset.n_features)
    for block in dataset.iter_rows(with_targets=write_y, chunk_rows=step):
        X, y = block if write_y else (block, None)
        writer.append(X)
        if ydset is not None:
            ydset.resize(writer.n, axis=0)
            ydset[writer.n - len(y):] = y.astype(object) if y.dtype.kind == "U" else y
    return {"feature_names": list(dataset.features), "label_column": dataset.target if write_y else "none",
            "files": len(dataset.files)}


def _write_parquet(h5_path: str, dst: str, x_key: str, y_key: str | None, chunk_rows: int | None,
                   overwrite: bool) -> dict[str, Any]:
    """An HDF5 dataset (dense X, optional y) to the Parquet file ``dst``: one row group per chunk of rows.

    Columns: the features by name (the CSV header's names when the HDF5 file
    came from a CSV with one, else ``x0``, ``x1``, ...), then the target as
    ``y_key`` (``y``), which is the Parquet commands' default target.
    """
    import h5py

    from drizzle_ml.data import read_targets
    from drizzle_ml.parquet import pyarrow_parquet

    pq = pyarrow_parquet()
    import pyarrow as pa

    with h5py.File(h5_path, "r") as f:
        if x_key not in f:
            raise ValueError(f"{h5_path} has no {x_key!r} (keys: {', '.join(sorted(f.keys())) or 'none'})")
        node = f[x_key]
        if not isinstance(node, h5py.Dataset):
            raise ValueError(f"{h5_path}: {x_key!r} is a sparse (CSR) matrix; Parquet columns would store every "
                             "zero: keep it in HDF5")
        if node.ndim != 2:
            raise ValueError(f"{h5_path}: {x_key!r} must be 2-D (rows, features), got shape {node.shape}")
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
            raise ValueError(f"{h5_path}: {y_key!r} must have shape ({n},) like {x_key!r} rows")
        if ynode is not None and y_key in names:
            raise ValueError(f"{h5_path}: a feature column is named {y_key!r} like the target; give another y_key")
        step = chunk_rows or _work_chunk_rows(d)
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
                    raise ValueError(f"{h5_path}: no data rows")
            finally:
                if writer is not None:
                    writer.close()
    return {"path": dst, "rows": n, "features": d, "columns": names,
            "target": y_key if ynode is not None else None, "row_groups": groups}


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
    """One line about a Parquet file written by :func:`convert`."""
    target = f"target column {info['target']!r}" if info["target"] else "no target column"
    return (f"wrote {info['path']}: {info['rows']} rows x {info['features']} features "
            f"(Parquet, {info['row_groups']} row group{'s' if info['row_groups'] != 1 else ''}), {target}")


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
    fmt = _infer_format(src_s, fmt)
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
    chunk_rows = None if chunk_rows is None else _check_chunk_rows(chunk_rows, 0)
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
            else:
                info = _convert_libsvm(src_s, f, x_key, y_key, chunk_rows, n_features, zero_based, directory)
            f.attrs["converted_by"] = "drizzle_ml.datasets.convert"
            f.attrs["source"] = os.path.basename(src_s)
            f.attrs["format"] = fmt
            for name, value in info.items():
                f.attrs[name] = _json_attr(value)
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
        return _write_parquet(scratch, dst, x_key, y_key, chunk_rows, overwrite)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(scratch)


# --------------------------------------------------------------------------- describe


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
            if not {"data", "indices", "indptr"} <= set(node.keys()) or "shape" not in node.attrs:
                raise ValueError(f"{path_s}: group {x_key!r} is not a CSR matrix (data, indices, indptr, shape)")
            rows, features = (int(s) for s in node.attrs["shape"])
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
        if y_key is not None and y_key in f and isinstance(f[y_key], h5py.Dataset):
            out["y"] = _describe_y(f[y_key], y_key)
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
            if part.size:
                lo_v, hi_v, total = min(lo_v, part.min()), max(hi_v, part.max()), total + part.sum()
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
