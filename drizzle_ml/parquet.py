"""Parquet datasets: each worker reads its own row groups with pyarrow; the driver reads only footers.

A dataset is one Parquet file or a directory of them (the files ending in
``.parquet`` or ``.pq``, in name order; names starting with ``.`` or ``_``
are skipped, as Spark and Hive leave ``_SUCCESS`` and hidden temporary files
there). The files' rows, in that order, are the rows of the dataset: worker
``i`` of ``W`` gets rows ``bounds[i]:bounds[i + 1]`` (:func:`~drizzle_ml.data.row_bounds`)
and reads only the row groups that overlap them, only the chosen columns.

Columns: ``features`` (default: every numeric column, i.e. integer, float
or boolean, except the target and the index columns pandas' ``to_parquet``
may add) and ``target`` (default ``"auto"``: the
column ``y`` when there is one). Features are read as float64. Nulls and
non-numeric feature columns are one-line errors naming the file and column.

pyarrow is an optional dependency (``pip install 'drizzle-ml[parquet]'``);
nothing imports it until a Parquet file is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .data import FileDataset
from .program import Partition

SUFFIXES = (".parquet", ".pq")
MISSING_PYARROW = "reading Parquet needs pyarrow: pip install 'drizzle-ml[parquet]'"
AUTO = "auto"
DEFAULT_TARGET = "y"


def pyarrow_parquet() -> Any:
    """``pyarrow.parquet``, or ImportError with the one-line install hint."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(MISSING_PYARROW) from None
    return pq


def is_parquet_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names Parquet data: a ``.parquet``/``.pq`` file, or a directory (of such files)."""
    path = os.fspath(path)
    return os.path.isdir(path) or path.lower().endswith(SUFFIXES)


def wanted_name(name: str) -> bool:
    """Whether a directory entry is one of the dataset's files (not hidden, not a marker, not temporary)."""
    return not name.startswith((".", "_")) and name.lower().endswith(SUFFIXES)


def parquet_files(path: str | os.PathLike) -> list[str]:
    """The files of a Parquet dataset: ``[path]`` for a file, the directory's Parquet files by name."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"Parquet data not found: {path}")
    if not os.path.isdir(path):
        if not os.path.isfile(path):
            raise ValueError(f"{path} is not a regular file (a FIFO or a device): give a Parquet file")
        return [path]
    names = sorted(n for n in os.listdir(path) if wanted_name(n) and os.path.isfile(os.path.join(path, n)))
    if not names:
        raise ValueError(f"{path} holds no Parquet files (names ending in {' or '.join(SUFFIXES)})")
    return [os.path.join(path, n) for n in names]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_file(path: str) -> Any:
    """``pq.ParquetFile(path)`` (footer only), or ValueError for a file that is not Parquet."""
    pq = pyarrow_parquet()
    import pyarrow as pa

    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: an empty file (0 bytes), not a Parquet file")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path}: not a Parquet file, or a damaged one ({_reason(exc)})") from None


def is_numeric(arrow_type: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)


def _is_label(arrow_type: Any) -> bool:
    """A type a target may have: numeric, or text (class labels)."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return is_numeric(arrow_type) or pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _columns_text(schema: Any) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in schema)


def resolve_columns(schema: Any, where: str, features: Sequence[str] | None,
                    target: str | None) -> tuple[list[str], str | None]:
    """The feature columns and the target column (or None), checked against ``schema``.

    ``target="auto"``: the column ``y`` if the schema has one, else none.
    ``features=None``: every numeric column but the target and a pandas index. Errors are
    one-line ValueErrors naming ``where`` and, for a missing column, the columns there are.
    """
    names = list(schema.names)
    if target == AUTO:
        target = DEFAULT_TARGET if DEFAULT_TARGET in names else None
    if target is not None:
        if target not in names:
            raise ValueError(f"{where} has no target column {target!r} (columns: {_columns_text(schema)})")
        if not _is_label(schema.field(target).type):
            raise ValueError(f"{where}: target column {target!r} has type {schema.field(target).type}; "
                             "a target must be numbers or text labels")
    if features is None:
        index = _pandas_index(schema)
        features = [f.name for f in schema if f.name != target and f.name not in index and is_numeric(f.type)]
        if not features:
            raise ValueError(f"{where} has no numeric column to use as a feature "
                             f"(columns: {_columns_text(schema)})")
    else:
        features = list(features)
        if not features:
            raise ValueError(f"{where}: no feature columns chosen; name at least one")
        seen: set[str] = set()
        for name in features:
            if name not in names:
                raise ValueError(f"{where} has no column {name!r} (columns: {_columns_text(schema)})")
            if name in seen:
                raise ValueError(f"{where}: feature column {name!r} is named twice")
            seen.add(name)
            if name == target:
                raise ValueError(f"{where}: column {name!r} is the target; it cannot also be a feature")
            field_type = schema.field(name).type
            if not is_numeric(field_type):
                raise ValueError(f"{where}: feature column {name!r} has type {field_type}, not a number "
                                 "(int, float or bool); leave it out of the features")
    return features, target


def _pandas_index(schema: Any) -> set[str]:
    """The columns pandas' ``to_parquet`` stored a DataFrame's index in (row labels, not features)."""
    raw = (schema.metadata or {}).get(b"pandas")
    if not raw:
        return set()
    try:
        described = json.loads(raw)
    except ValueError:
        return set()
    index = described.get("index_columns", []) if isinstance(described, dict) else []
    return {name for name in index if isinstance(name, str)}


def _null_counts(pf: Any, columns: Sequence[str]) -> dict[str, int | None]:
    """Nulls per column from the footer's statistics (None where a row group has none recorded)."""
    md = pf.metadata
    index = {md.schema.column(i).path: i for i in range(md.num_columns)}
    counts: dict[str, int | None] = {}
    for name in columns:
        total: int | None = 0
        j = index.get(name)
        for g in range(md.num_row_groups):
            stats = md.row_group(g).column(j).statistics if j is not None else None
            if stats is None or not stats.has_null_count:
                total = None
                break
            total += int(stats.null_count)
        counts[name] = total
    return counts


def null_error(path: str, column: str, count: int, rows: str = "") -> ValueError:
    return ValueError(f"{path}: column {column!r} has {count} null value{'s' if count != 1 else ''}"
                      f"{rows}; drizzle-ml needs every value (drop or fill the missing ones first)")


class ParquetDataset(FileDataset):
    """A Parquet file, or a directory of them; each worker reads only its own rows (row groups).

    path : a ``.parquet``/``.pq`` file or a directory of them (readable at
        the same path on every worker's host)
    features : column names, or None: every numeric column but the target
    target : a column name, ``"auto"`` (the column ``y`` if there is one) or None

    The driver reads only the files' footers (row counts per row group,
    schema, null counts); the targets for a classifier's labels are read
    as one column, in chunks.
    """

    kind = "parquet"
    sparse = False
    dtype = np.dtype(np.float64)

    def __init__(self, path: str | os.PathLike, features: Sequence[str] | None = None,
                 target: str | None = AUTO):
        self.path = os.path.abspath(os.fspath(path))
        self.files = parquet_files(self.path)
        self.row_groups: list[tuple[str, int, int]] = []  # (file, row group, rows)
        self.schema = first = None
        stamps = []
        for file in self.files:  # one footer open at a time: a directory may hold thousands of files
            pf = open_file(file)
            file_schema = pf.schema_arrow
            if self.schema is None:
                self.schema, first = file_schema, file
                self.features, self.target = resolve_columns(file_schema, self.path, features, target)
                columns = self.features + ([self.target] if self.target else [])
            elif not file_schema.equals(self.schema, check_metadata=False):
                raise ValueError(f"{file} has another schema than {os.path.basename(first)} in the same "
                                 f"directory: {_schema_difference(self.schema, file_schema)}")
            for column, count in _null_counts(pf, columns).items():
                if count:
                    raise null_error(file, column, count)
            md = pf.metadata
            self.row_groups.extend((file, g, md.row_group(g).num_rows) for g in range(md.num_row_groups))
            stat = os.stat(file)
            stamps.append(f"{file}:{stat.st_mtime_ns}:{stat.st_size}")
            del pf
        self.n_rows = sum(n for _, _, n in self.row_groups)
        if self.n_rows == 0:
            raise ValueError(f"{self.path} has no rows")
        self.n_features = len(self.features)
        # The names the estimators' checks and messages use for HDF5 files.
        self.x_key, self.y_key = ",".join(self.features), self.target
        self.y_shape: tuple[int, ...] | None = None
        self.y_dtype: np.dtype | None = None
        if self.target is not None:
            self.y_shape, self.y_dtype = (self.n_rows,), _numpy_dtype(self.schema.field(self.target).type)
        digest = hashlib.sha1("\n".join(stamps + columns).encode(), usedforsecurity=False).hexdigest()
        self.dataset_id = f"parquet:{self.path}:{self.target}:{digest}"

    def with_target(self, target: str | None) -> ParquetDataset:
        """The same files and features with another target (None: read no target)."""
        return ParquetDataset(self.path, self.features, target)

    def describe(self) -> str:
        files = f", {len(self.files)} files" if len(self.files) > 1 else ""
        return f"{self.path} ({self.n_rows} x {self.n_features}, Parquet{files})"

    def targets(self, chunk_rows: int = 1 << 20) -> Iterator[np.ndarray]:
        """Yield the target column in chunks of rows (the driver reads targets, never X)."""
        if self.target is None:
            raise ValueError(f"{self.path}: no target column (target is None)")
        for file in self.files:
            pf = open_file(file)
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=[self.target]):
                yield _target_values(batch.column(0), file, self.target)

    def iter_rows(self, with_targets: bool = False, chunk_rows: int = 65_536) -> Iterator[Any]:
        """Every row in chunks, read locally: ``X`` (float64), or ``(X, y)``."""
        columns = self.features + ([self.target] if with_targets else [])
        for file in self.files:
            pf = open_file(file)
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=columns):
                X = _features(batch, self.features, file)
                yield (X, _target_values(batch.column(self.target), file, self.target)) if with_targets else X

    def slices(self, lo: int, hi: int) -> tuple[dict[str, Any], list[np.ndarray]]:
        """A worker's read plan for rows ``lo:hi``: the row groups that overlap them and what to keep of each."""
        pieces, start = [], 0
        for file, group, n in self.row_groups:
            end = start + n
            if end > lo and start < hi:
                skip = max(lo - start, 0)
                pieces.append((file, group, skip, min(hi, end) - start - skip))
            start = end
        spec = {"kind": "parquet", "path": self.path, "pieces": pieces, "features": self.features,
                "target": self.target, "rows": (lo, hi), "n_total": self.n_rows}
        return spec, []


def _schema_difference(a: Any, b: Any) -> str:
    if a.names != b.names:
        return f"columns {', '.join(b.names)} here, {', '.join(a.names)} there"
    for fa, fb in zip(a, b):
        if not fa.type.equals(fb.type) or fa.nullable != fb.nullable:
            return f"column {fb.name!r} is {fb.type} here, {fa.type} there"
    return "the schemas differ"


def _numpy_dtype(arrow_type: Any) -> np.dtype:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if is_numeric(arrow_type):
        return np.dtype(arrow_type.to_pandas_dtype())
    return np.dtype(str)  # text labels


def _column_numpy(column: Any) -> np.ndarray:
    """An Arrow array or chunked array without nulls as numpy (a copy only where needed)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column.to_numpy(zero_copy_only=False)


def _features(table: Any, features: Sequence[str], where: str, rows: str = "") -> np.ndarray:
    """The feature columns of a table or batch as a float64 (n, d) array; nulls and NaN are errors."""
    X = np.empty((table.num_rows, len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        column = table.column(name)
        if column.null_count:
            raise null_error(where, name, column.null_count, rows)
        if not is_numeric(column.type):  # a file replaced since the footers were checked
            raise ValueError(f"{where}: feature column {name!r} has type {column.type}, not a number")
        X[:, j] = _column_numpy(column)
    if not np.isfinite(X).all():
        bad = features[int(np.flatnonzero(~np.isfinite(X).all(axis=0))[0])]
        raise ValueError(f"{where}: column {bad!r}{rows} contains NaN or infinity")
    return X


def _target_values(column: Any, where: str, name: str, rows: str = "") -> np.ndarray:
    if column.null_count:
        raise null_error(where, name, column.null_count, rows)
    y = _column_numpy(column)
    if y.dtype.kind == "O":
        y = y.astype(str)
    elif y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{where}: column {name!r}{rows} contains NaN or infinity")
    return y


def read_parquet_partition(spec: dict[str, Any]) -> Partition:
    """Worker side: read rows ``spec['rows']``, row group by row group (peak memory: the partition and one group)."""
    pq = pyarrow_parquet()
    import pyarrow as pa

    lo, hi = spec["rows"]
    features, target = spec["features"], spec["target"]
    columns = features + ([target] if target else [])
    X = np.empty((hi - lo, len(features)), dtype=np.float64)
    ys: list[np.ndarray] = []
    filled, opened = 0, {}
    for file, group, skip, take in spec["pieces"]:
        try:
            pf = opened.get(file)
            if pf is None:
                pf = opened[file] = pq.ParquetFile(file)
            table = pf.read_row_group(group, columns=columns).slice(skip, take)
        except (pa.ArrowException, OSError, KeyError) as exc:
            raise OSError(f"cannot read row group {group} of {file}: {_reason(exc)}") from None
        rows = f" (row group {group})"
        X[filled:filled + take] = _features(table, features, file, rows)
        if target:
            ys.append(_target_values(table.column(target), file, target, rows))
        filled += take
    if filled != hi - lo:
        raise OSError(f"{spec['path']}: rows {lo}:{hi} are not all there any more (the files changed)")
    y = (np.concatenate(ys) if ys else np.empty(0)) if target else None
    return Partition(X=X, y=y, row_offset=lo, n_total=spec["n_total"])
