"""``parquet:DIR``: new Parquet files of a directory, as ``dir:`` reads text files; columns chosen by name."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from .base import Chunk, PartitionReader
from .directory import DirectorySource
from .records import RecordFormat, StreamError


class _ParquetFileReader(PartitionReader):
    """Rows of one complete Parquet file from row ``pos`` on, row group by row group.

    The chosen feature columns come first, the target last (when the
    learner has one), as float64; a null is NaN and so a malformed record.
    A file that is not Parquet or lacks a chosen column is malformed as a
    whole (``on_error``): skipped and counted as one record, or an error.
    """

    def __init__(self, path: str, fmt: RecordFormat, pos: int, source: ParquetSource):
        from ..parquet import is_numeric, open_file

        self.path, self.fmt, self.pos = path, fmt, int(pos)
        self.columns = list(source.features or []) + ([source.target] if fmt.has_target else [])
        self.arrived = time.time()  # the file is complete when it appears: every row arrives with it
        self.block: tuple[int, int, np.ndarray] | None = None  # (first row, end row, rows) of one row group
        self.problem: str | None = None
        self.ended = False
        self.starts = np.zeros(1, dtype=np.int64)
        try:
            self.pf = open_file(path)
        except ValueError as exc:
            self.pf, self.problem = None, str(exc).removeprefix(f"{path}: ")
            return
        md = self.pf.metadata
        self.starts = np.concatenate([[0], np.cumsum([md.row_group(g).num_rows for g in range(md.num_row_groups)])])
        schema = self.pf.schema_arrow
        for name in self.columns:
            if name not in schema.names:
                self.problem = f"no column {name!r} (columns: {', '.join(schema.names)})"
            elif not is_numeric(schema.field(name).type):
                self.problem = f"column {name!r} has type {schema.field(name).type}, not a number"
            if self.problem:
                break

    @property
    def offset(self) -> int:
        return self.pos

    def _rows(self, group: int) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        table = self.pf.read_row_group(group, columns=self.columns)
        rows = np.empty((table.num_rows, len(self.columns)), dtype=np.float64)
        for j, name in enumerate(self.columns):
            column = pc.cast(table.column(name), pa.float64()).fill_null(float("nan"))
            rows[:, j] = column.to_numpy()
        return rows

    def read(self, max_records: int) -> Chunk | None:
        total = int(self.starts[-1])
        if self.problem is not None:
            # The whole file is one malformed record; its offset then passes its end, so a
            # reader resumed there (a restart) does not count it again.
            done = max(total, 1)
            if self.pos >= done:
                self.ended = True
                return None
            self.fmt.fail(self.path, self.problem)  # raises under on_error="fail"
            self.pos = done
            return Chunk(np.empty((0, len(self.columns))), 1, self.arrived, self.arrived)
        if self.pos >= total:
            self.ended = True
            return None
        if self.block is None or not self.block[0] <= self.pos < self.block[1]:
            group = int(np.searchsorted(self.starts, self.pos, side="right")) - 1
            self.block = (int(self.starts[group]), int(self.starts[group + 1]), self._rows(group))
        first, end, block = self.block
        take = min(end - self.pos, max_records or end)
        start = self.pos
        rows, n_bad = self.fmt.check_rows(block[start - first: start - first + take],
                                          lambda i: f"{self.path} row {start + i}")
        self.pos = start + take
        return Chunk(rows, n_bad, self.arrived, self.arrived)


@dataclass
class ParquetSource(DirectorySource):
    """A directory that receives new Parquet files (``.parquet``/``.pq``, each complete when it appears).

    Read like a ``dir:`` source: whole files owned by partitions, in name
    order; the offset's position counts rows. ``features``: the feature
    columns (None: every numeric column of the first file but the target);
    ``target``: the target column for supervised learners (None: ``y``).
    :meth:`resolved` fixes both on the driver before the workers open files.
    Needs pyarrow.
    """

    features: list[str] | None = None
    target: str | None = None

    def wanted(self, name: str) -> bool:
        from ..parquet import wanted_name

        return wanted_name(name) and not name.endswith(".tmp")

    def open_file(self, path: str, fmt: RecordFormat, pos: int) -> PartitionReader:
        return _ParquetFileReader(path, fmt, pos, self)

    def open(self, fmt, partition, n_partitions, offset):
        from ..parquet import pyarrow_parquet

        pyarrow_parquet()
        return super().open(fmt, partition, n_partitions, offset)

    def resolved(self, has_target: bool) -> ParquetSource:
        """This source with its columns fixed: explicit ones kept, the rest read from the first file's schema."""
        from ..parquet import (
            AUTO,
            DEFAULT_TARGET,
            open_file,
            pyarrow_parquet,
            resolve_columns,
        )

        pyarrow_parquet()
        target = (self.target or DEFAULT_TARGET) if has_target else None
        if self.features is not None:
            return ParquetSource(self.path, self.follow, list(self.features), target)
        names = self.files() if os.path.isdir(self.path) else []
        if not names:
            raise StreamError(f"{self.describe()} has no Parquet file yet to tell the feature columns; "
                              "name them (features)")
        first = os.path.join(self.path, names[0])
        try:
            schema = open_file(first).schema_arrow
            # Without a target to learn, a column 'y' (or the named target) is still no default feature.
            features, _ = resolve_columns(schema, first, None, target if has_target else (self.target or AUTO))
        except ValueError as exc:
            raise StreamError(str(exc)) from None
        return ParquetSource(self.path, self.follow, features, target)

    def describe(self) -> str:
        return f"parquet:{self.path}"
