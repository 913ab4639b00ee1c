"""``h5:PATH#KEY``: rows of a 2-D HDF5 dataset that grows along its first axis; partitions own blocks of rows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Chunk, PartitionReader, Source, _Arrivals
from .records import RecordFormat, StreamError, not_there


class _HDF5Reader(PartitionReader):
    """Rows of a growing 2-D HDF5 dataset, in blocks of ``block_rows`` owned round-robin.

    The writer should use SWMR mode (``libver="latest"``, ``swmr_mode=True``)
    so that readers see appended rows safely; the reader opens the file with
    ``swmr=True`` when it can and refreshes the dataset's shape.
    """

    def __init__(self, source: HDF5Source, fmt: RecordFormat, partition: int, n_partitions: int,
                 offset: Any):
        import h5py

        self.source, self.fmt = source, fmt
        self.partition, self.n_partitions = partition, n_partitions
        self.row = int(offset or 0)
        try:
            self.file = h5py.File(source.path, "r", swmr=True)
        except OSError:
            try:
                self.file = h5py.File(source.path, "r")
            except OSError as exc:
                raise StreamError(f"cannot open {source.path} as HDF5: {exc}") from None
        try:
            self.dset = self._check_dataset(source, fmt)
        except BaseException:
            self.file.close()
            raise
        self.arrivals = _Arrivals()
        self.ended = False

    def _check_dataset(self, source: HDF5Source, fmt: RecordFormat) -> Any:
        import h5py

        if not isinstance(self.file.get(source.key), h5py.Dataset):  # missing, or a group
            raise StreamError(f"{source.path} has no dataset {source.key!r}")
        dset = self.file[source.key]
        if dset.ndim != 2:
            raise StreamError(f"{source.path}#{source.key} must be 2-D (records x fields), got shape {dset.shape}")
        if not (np.issubdtype(dset.dtype, np.number) or dset.dtype == np.bool_):
            raise StreamError(f"{source.path}#{source.key} must hold numbers, got dtype {dset.dtype}")
        width = dset.shape[1]
        if fmt.n_features is None:
            fmt.n_features = width - int(fmt.has_target)
        if fmt.width != width:
            raise StreamError(f"{source.path}#{source.key} has {width} columns, expected {fmt.width}")
        return dset

    @property
    def offset(self) -> int:
        return self.row

    def read(self, max_records: int) -> Chunk | None:
        try:
            self.dset.refresh()
        except (AttributeError, OSError, ValueError):
            pass  # not in SWMR mode: the shape seen at open
        n = self.dset.shape[0]
        self.arrivals.saw(n)
        size = self.source.block_rows
        block = self.row // size
        if block % self.n_partitions != self.partition:
            block += (self.partition - block) % self.n_partitions
            self.row = max(self.row, block * size)
        stop = min(n, (self.row // size + 1) * size, self.row + (max_records or n))
        if stop <= self.row:
            self.ended = not self.source.follow
            return None
        rows = np.asarray(self.dset[self.row:stop], dtype=np.float64)
        first = self.row
        rows, n_bad = self.fmt.check_rows(rows, lambda i: f"{self.source.path}#{self.source.key} row {first + i}")
        oldest, newest = self.arrivals.span(first, stop)
        self.row = stop
        return Chunk(rows, n_bad, oldest, newest)

    def close(self) -> None:
        self.file.close()


@dataclass
class HDF5Source(Source):
    """A 2-D HDF5 dataset that grows (rows appended, SWMR); partitions own blocks of rows."""

    path: str
    key: str = "X"
    follow: bool = True
    block_rows: int = 4096

    def open(self, fmt, partition, n_partitions, offset):
        if not os.path.isfile(self.path):
            raise not_there("file", self.path)
        return _HDF5Reader(self, fmt, partition, n_partitions, offset)

    def describe(self) -> str:
        return f"h5:{self.path}#{self.key}"
