"""Datasets and their partitions: scattered from driver-held arrays, or read by each worker from HDF5.

Partitions are loaded once per worker and cached by dataset id, so repeated
fits on the same data (``n_init``, grid searches, warm starts) do not move it
again. Rows are split into contiguous, balanced ranges: worker ``i`` of ``W``
gets rows ``bounds[i]:bounds[i + 1]``.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp

from .program import Partition


def row_bounds(n_rows: int, n_workers: int, allow_empty: bool = False) -> np.ndarray:
    """Start offsets of each worker's contiguous row range (length ``n_workers + 1``).

    ``allow_empty``: fewer rows than workers leaves the last workers without
    rows (a micro-batch), instead of being an error.
    """
    if n_rows < n_workers and not allow_empty:
        raise ValueError(
            f"the dataset has {n_rows} rows, fewer than the {n_workers} workers: "
            "every worker needs at least one row"
        )
    base, extra = divmod(n_rows, n_workers)
    sizes = np.full(n_workers, base, dtype=np.int64)
    sizes[:extra] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


# Odd multipliers of the word hash below (fixed: ids must be stable across runs).
_HASH_WORDS = 1 << 15
_HASH_KEYS = np.random.default_rng(0x5EED).integers(0, 2**63, _HASH_WORDS, dtype=np.uint64) | np.uint64(1)
_HALF = np.uint64(32)


def _update_digest(digest: Any, data: np.ndarray) -> None:
    """Feed ``data``'s bytes to ``digest`` through a fast position-keyed word hash.

    Every 32K-word chunk is reduced to ``sum_i K_i * mix(word_i) mod 2^64`` with odd
    fixed multipliers ``K_i``; the chunk sums go to the cryptographic ``digest``.
    ``mix(w) = w ^ (w >> 32)`` (a bijection) brings the high half down first:
    without it a change in a word's top bit (a float's sign) only moved the
    product's top bit, and two such changes in one chunk cancelled (``-X`` hashed
    like ``X``). Any single changed word, and reordered words, change the sum.
    This runs at several times the speed of sha1 or blake2b. It identifies data
    for the partition cache; it is not meant to resist deliberately crafted
    collisions.
    """
    raw = memoryview(np.ascontiguousarray(data)).cast("B")
    n_words = len(raw) // 8
    words = np.frombuffer(raw, dtype=np.uint64, count=n_words)
    sums = np.empty(-(-n_words // _HASH_WORDS), dtype=np.uint64)
    mixed = np.empty(min(n_words, _HASH_WORDS), dtype=np.uint64)  # the one scratch chunk: stays in L2
    for i, lo in enumerate(range(0, n_words, _HASH_WORDS)):
        chunk = words[lo : lo + _HASH_WORDS]
        x = mixed[: len(chunk)]
        np.right_shift(chunk, _HALF, out=x)
        np.bitwise_xor(x, chunk, out=x)
        np.multiply(x, _HASH_KEYS[: len(chunk)], out=x)
        sums[i] = x.sum(dtype=np.uint64)
    digest.update(sums.tobytes())
    digest.update(raw[8 * n_words :])


def _digest_arrays(digest: Any, *arrays: Any) -> Any:
    for arr in arrays:
        if arr is None:
            digest.update(b"none")
            continue
        if sp.issparse(arr):
            parts = [arr.data, arr.indices, arr.indptr]
            digest.update(f"csr{arr.shape}".encode())
        else:
            parts = [arr]
        for part in parts:
            part = np.ascontiguousarray(part)
            digest.update(f"{part.dtype.str}{part.shape}".encode())
            _update_digest(digest, part)
    return digest


def _fingerprint(*arrays: Any) -> str:
    return _digest_arrays(hashlib.sha1(usedforsecurity=False), *arrays).hexdigest()


def _x_digest(X: Any) -> Any:
    """The fingerprint's state after X (its expensive part): y and weights are digested on top."""
    return _digest_arrays(hashlib.sha1(usedforsecurity=False), X)


# X arrays fingerprinted recently, by identity (the object and its buffers): a
# weak reference to it and the digest of its content then. A refit on the same
# object may take that digest for now and check it in the background.
_RECENT_X: OrderedDict[tuple, tuple[weakref.ref, Any]] = OrderedDict()
_RECENT_X_KEPT = 8
_hasher: ThreadPoolExecutor | None = None


def _identity(X: Any) -> tuple:
    parts = [X.data, X.indices, X.indptr] if sp.issparse(X) else [X]
    return (id(X), X.shape) + tuple(
        (p.__array_interface__["data"][0], p.shape, p.strides, p.dtype.str) for p in parts)


def _remember(X: Any, digest: Any) -> None:
    try:
        ref = weakref.ref(X)
    except TypeError:
        return
    key = _identity(X)
    _RECENT_X[key] = (ref, digest.copy())
    _RECENT_X.move_to_end(key)
    while len(_RECENT_X) > _RECENT_X_KEPT:
        _RECENT_X.popitem(last=False)


def _recalled(X: Any) -> Any | None:
    entry = _RECENT_X.get(_identity(X))
    if entry is None or entry[0]() is not X:  # gone, and another object took its address
        return None
    return entry[1].copy()


class ContentChanged(Exception):
    """A speculative dataset id did not hold: X changed in place since its last fingerprint."""


class ArrayDataset:
    """Arrays held by the driver, scattered to the workers once.

    X : ndarray (n_rows, n_features) or scipy.sparse matrix (converted to CSR)
    y, sample_weight : ndarray (n_rows,) or None
    speculate : when X is the very array (object and buffer) a recent dataset
        fingerprinted, take the id it had then, and check X's content in a
        background thread while a job runs on the workers' cached partitions.
        :meth:`Cluster.run <drizzle_ml.Cluster.run>` confirms the id before any
        result of the job counts, and runs the job again on X's new content if
        X changed in place. Anything else that needs the true id calls
        :meth:`confirm` first. The fingerprint of 160 MB takes 30-45 ms; a
        refit then overlaps it with the workers' computation.
    """

    kind = "arrays"

    def __init__(self, X: Any, y: np.ndarray | None = None, sample_weight: np.ndarray | None = None, *,
                 speculate: bool = False):
        global _hasher
        self.X = X.tocsr() if sp.issparse(X) else np.ascontiguousarray(X)
        self.y = None if y is None else np.ascontiguousarray(y)
        self.sample_weight = None if sample_weight is None else np.ascontiguousarray(sample_weight)
        self.n_rows = self.X.shape[0]
        self._checks: list[Callable[[ArrayDataset], None]] = []
        self._pending: Future | None = None
        x_digest = _recalled(self.X) if speculate else None
        if x_digest is None:
            x_digest = _x_digest(self.X)
            _remember(self.X, x_digest)
        else:
            _hasher = _hasher or ThreadPoolExecutor(1, thread_name_prefix="drizzle-fingerprint")
            self._pending = _hasher.submit(_x_digest, self.X)
        self.dataset_id = self._identify(x_digest)

    def _identify(self, x_digest: Any) -> str:
        return "arrays:" + _digest_arrays(x_digest.copy(), self.y, self.sample_weight).hexdigest()

    @property
    def speculative(self) -> bool:
        """True while the id is taken from an earlier fingerprint and not yet confirmed."""
        return self._pending is not None

    def confirm(self) -> bool:
        """Wait for the background fingerprint of a speculative id; True if the id held.

        If X changed in place, the id becomes its content's, the checks added
        with :meth:`add_check` run again on it, and the answer is False.
        """
        if self._pending is None:
            return True
        pending, self._pending = self._pending, None
        x_digest = pending.result()
        _remember(self.X, x_digest)
        content_id = self._identify(x_digest)
        if content_id == self.dataset_id:
            return True
        self.dataset_id = content_id
        for check in self._checks:
            check(self)
        return False

    def add_check(self, check: Callable[[ArrayDataset], None]) -> None:
        """Run ``check(self)`` now, and again if :meth:`confirm` finds new content."""
        self._checks.append(check)
        check(self)

    def _fields(self):
        yield "X", self.X
        if self.y is not None:
            yield "y", self.y
        if self.sample_weight is not None:
            yield "sample_weight", self.sample_weight

    def slices(self, lo: int, hi: int) -> tuple[dict[str, Any], list[np.ndarray]]:
        """Metadata and the buffers that carry rows ``lo:hi`` (sent in this order)."""
        fields, buffers = [], []
        for name, arr in self._fields():
            if sp.issparse(arr):
                start, stop = arr.indptr[lo], arr.indptr[hi]
                parts = [
                    np.ascontiguousarray(arr.data[start:stop]),
                    np.ascontiguousarray(arr.indices[start:stop]),
                    np.ascontiguousarray(arr.indptr[lo : hi + 1] - start),
                ]
                fields.append((name, "csr", (hi - lo, arr.shape[1]), [(p.shape, p.dtype.str) for p in parts]))
                buffers.extend(parts)
            else:
                part = np.ascontiguousarray(arr[lo:hi])
                fields.append((name, "dense", part.shape, [(part.shape, part.dtype.str)]))
                buffers.append(part)
        return {"kind": "arrays", "fields": fields, "row_offset": lo, "n_total": self.n_rows}, buffers


class FileDataset:
    """A dataset on disk whose rows each worker reads itself; the driver knows only its shape.

    Subclasses (:class:`HDF5Dataset`, :class:`~drizzle_ml.parquet.ParquetDataset`)
    give ``path``, ``n_rows``, ``n_features``, ``sparse``, ``dtype``, ``x_key``,
    ``y_key``, ``y_shape``, ``y_dtype``, ``dataset_id``, ``targets()`` (the
    targets in chunks, for the driver's label checks) and ``slices(lo, hi)``
    (the spec a worker reads its rows from).
    """

    kind = "file"


class HDF5Dataset(FileDataset):
    """A dataset in an HDF5 file; each worker reads only its own row range.

    path : the file (must be readable at the same path on every worker's host)
    x_key : dataset of shape (n_rows, n_features), or a group holding CSR
        arrays ``data``, ``indices``, ``indptr`` and a ``shape`` attribute
    y_key : dataset of shape (n_rows,), or None
    """

    kind = "hdf5"

    def __init__(self, path: str | os.PathLike, x_key: str = "X", y_key: str | None = "y"):
        import h5py

        self.path = os.path.abspath(os.fspath(path))
        self.x_key, self.y_key = x_key, y_key
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"HDF5 file not found: {self.path}")
        self.y_shape: tuple[int, ...] | None = None
        self.y_dtype: np.dtype | None = None
        try:
            with h5py.File(self.path, "r") as f:
                self.n_rows, self.n_features = _h5_shape(f, x_key, self.path)
                node = f[x_key]
                self.sparse = not hasattr(node, "shape")
                self.dtype = np.dtype((node["data"] if self.sparse else node).dtype)
                if self.dtype.kind not in "biuf":
                    raise ValueError(f"{self.path}: {x_key!r} has non-numeric dtype {self.dtype}")
                if self.n_features == 0:
                    raise ValueError(f"{self.path}: {x_key!r} has 0 columns; the estimators need at least one "
                                     "feature")
                if y_key is not None:
                    if y_key not in f:
                        raise KeyError(f"{self.path} has no dataset {y_key!r} (keys: {sorted(f.keys())})")
                    node = check_targets(f[y_key], self.n_rows, self.path, x_key, y_key)
                    self.y_shape, self.y_dtype = tuple(node.shape), np.dtype(node.dtype)
        except OSError as exc:
            raise OSError(f"cannot read HDF5 file {self.path}: {exc}") from None
        stat = os.stat(self.path)
        self.dataset_id = f"hdf5:{self.path}:{x_key}:{y_key}:{stat.st_mtime_ns}:{stat.st_size}"

    def targets(self, chunk_rows: int = 1 << 20):
        """Yield ``y`` in chunks of rows (the driver reads targets, never X)."""
        import h5py

        if self.y_key is None:
            raise ValueError(f"{self.path}: no targets (y_key is None)")
        with h5py.File(self.path, "r") as f:
            node = f[self.y_key]
            for lo in range(0, self.n_rows, chunk_rows):
                yield read_targets(node, lo, lo + chunk_rows)

    def slices(self, lo: int, hi: int) -> tuple[dict[str, Any], list[np.ndarray]]:
        spec = {
            "kind": "hdf5",
            "path": self.path,
            "x_key": self.x_key,
            "y_key": self.y_key,
            "rows": (lo, hi),
            "n_total": self.n_rows,
        }
        return spec, []


def check_targets(node: Any, n_rows: int, path: str, x_key: str, y_key: str) -> Any:
    """The HDF5 targets ``node``: a dataset of numbers or text with a row for each of the ``n_rows`` of ``x_key``."""
    import h5py

    if not isinstance(node, h5py.Dataset):
        raise ValueError(f"{path}: {y_key!r} is a group, not a dataset of targets")
    if not node.shape:
        raise ValueError(f"{path}: {y_key!r} is a single value (shape ()), not a target for each of the "
                         f"{n_rows} rows of {x_key!r}")
    if node.shape[0] != n_rows:
        raise ValueError(f"{path}: {y_key!r} has {node.shape[0]} rows but {x_key!r} has {n_rows}")
    if node.dtype.kind not in "biufS" and h5py.check_string_dtype(node.dtype) is None:
        raise ValueError(f"{path}: {y_key!r} has dtype {node.dtype}; targets must be numbers or text labels")
    return node


def read_targets(node: Any, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` of an HDF5 targets dataset; text labels come back as ``str``, not bytes."""
    import h5py

    if h5py.check_string_dtype(node.dtype) is not None:
        return np.asarray(node.asstr()[lo:hi], dtype=str)
    y = node[lo:hi]
    return y.astype(str) if y.dtype.kind == "S" else y


def _h5_shape(f: Any, key: str, path: str) -> tuple[int, int]:
    if key not in f:
        raise KeyError(f"{path} has no dataset {key!r} (keys: {sorted(f.keys())})")
    node = f[key]
    if hasattr(node, "shape"):
        if len(node.shape) != 2:
            raise ValueError(f"{path}: {key!r} must be 2-D (rows, features), got shape {node.shape}")
        return int(node.shape[0]), int(node.shape[1])
    return csr_shape(node, path, key)


def csr_shape(node: Any, path: str, key: str) -> tuple[int, int]:
    """``(rows, columns)`` of the CSR group ``node``: its arrays and its ``shape`` attribute, checked."""
    if not {"data", "indices", "indptr"} <= set(node.keys()) or "shape" not in node.attrs:
        raise ValueError(f"{path}: group {key!r} is not a CSR matrix (data, indices, indptr, shape)")
    shape = np.asarray(node.attrs["shape"])
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
        raise ValueError(f"{path}: group {key!r} has the shape attribute {shape.tolist()!r}; a CSR matrix's "
                         "shape is two non-negative integers (rows, columns)")
    return int(shape[0]), int(shape[1])


def read_csr_rows(node: Any, lo: int, hi: int, path: str, key: str) -> sp.csr_matrix:
    """Rows ``lo:hi`` of the CSR group ``node`` (``data``, ``indices``, ``indptr``, ``shape``), checked.

    scipy trusts a row pointer and column indices: a broken one made a worker
    read out of bounds (SIGSEGV) or accept columns beyond the declared shape,
    instead of saying that the file is damaged.
    """
    indptr = node["indptr"][lo : hi + 1]
    n_cols = int(node.attrs["shape"][1])
    n_stored = min(node["data"].shape[0], node["indices"].shape[0])
    if (len(indptr) != hi - lo + 1 or (lo == 0 and indptr[0] != 0) or np.any(np.diff(indptr) < 0)
            or indptr[0] < 0 or indptr[-1] > n_stored):
        raise ValueError(f"{path}: {key!r} rows {lo}:{hi} have an invalid CSR row pointer (indptr must rise "
                         f"from 0 to at most the {n_stored} stored entries): a corrupted CSR matrix")
    start, stop = int(indptr[0]), int(indptr[-1])
    indices = node["indices"][start:stop]
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n_cols):
        raise ValueError(f"{path}: {key!r} rows {lo}:{hi} have column indices outside 0..{n_cols - 1} "
                         "(the matrix's declared shape): a corrupted or mislabelled CSR matrix")
    return sp.csr_matrix((node["data"][start:stop], indices, indptr - start), shape=(hi - lo, n_cols))


def read_hdf5_partition(spec: dict[str, Any]) -> Partition:
    """Worker side: read rows ``spec['rows']`` of an HDF5 dataset and check them."""
    import h5py

    lo, hi = spec["rows"]
    path, x_key, y_key = spec["path"], spec["x_key"], spec["y_key"]
    try:
        with h5py.File(path, "r") as f:
            node = f[x_key]
            if hasattr(node, "shape"):
                X = node[lo:hi]
            else:
                X = read_csr_rows(node, lo, hi, path, x_key)
            y = read_targets(f[y_key], lo, hi) if y_key is not None else None
    except (OSError, KeyError) as exc:
        raise OSError(f"cannot read rows {lo}:{hi} of {path}: {exc}") from None
    values = X.data if sp.issparse(X) else X
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {x_key!r} has non-numeric dtype {values.dtype}")
    if values.dtype.kind in "biu":  # as the estimators' validation does for arrays: floats to compute with
        X = X.astype(np.float64)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"{path}: {x_key!r} rows {lo}:{hi} contain NaN or infinity")
    if y is not None and y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{path}: {y_key!r} rows {lo}:{hi} contain NaN or infinity")
    return Partition(X=X, y=y, row_offset=lo, n_total=spec["n_total"])


def assemble_partition(spec: dict[str, Any], buffers: list[np.ndarray]) -> Partition:
    """Worker side: rebuild a partition from the buffers a LoadData announced."""
    values, it = {}, iter(buffers)
    for name, kind, shape, _ in spec["fields"]:
        if kind == "csr":
            data, indices, indptr = next(it), next(it), next(it)
            values[name] = sp.csr_matrix((data, indices, indptr), shape=tuple(shape))
        else:
            values[name] = next(it)
    return Partition(
        X=values["X"],
        y=values.get("y"),
        sample_weight=values.get("sample_weight"),
        row_offset=spec["row_offset"],
        n_total=spec["n_total"],
    )


class PartitionCache:
    """Worker-side LRU of loaded partitions; the driver mirrors it and sends drops."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, Partition] = OrderedDict()

    def put(self, dataset_id: str, partition: Partition) -> None:
        self._items[dataset_id] = partition
        self._items.move_to_end(dataset_id)

    def get(self, dataset_id: str) -> Partition:
        try:
            partition = self._items[dataset_id]
        except KeyError:
            raise KeyError(f"dataset {dataset_id} is not loaded on this worker") from None
        self._items.move_to_end(dataset_id)
        return partition

    def drop(self, dataset_id: str) -> None:
        self._items.pop(dataset_id, None)
