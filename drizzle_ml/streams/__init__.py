"""Stream sources: partitioned record streams with offsets, read by the workers.

A source is a small picklable description (:class:`FileSource`,
:class:`DirectorySource`, :class:`ParquetSource`, :class:`TCPSource`,
:class:`HDF5Source`, :class:`IterableSource`) that the driver ships to the
workers; each worker opens only its own partitions and reads them itself, so no record passes
through the driver. Every partition has an *offset*: a small JSON value that
says how far the partition has been consumed (a byte position, a record
count, a file name and position). Offsets are taken only at micro-batch cuts
and saved with the model version in checkpoints, which is what makes a
restart neither lose nor repeat a record.

Reading is pull-based: a reader takes at most what the next micro-batch
needs, and what is not taken stays in the file, the HDF5 dataset or the
socket's buffers (TCP flow control then slows the producer). That is the
back-pressure: nothing is buffered without bound when the learner falls
behind.

Records are lines of CSV (numbers separated by commas; for supervised
learners the last field is the target) or JSON (``{"x": [...], "y": v}`` or
a list of numbers, target last), rows of a 2-D HDF5 dataset (target in
the last column), or rows of Parquet files (columns chosen by name). A
malformed record (wrong field count, not a number, NaN or infinity, a null,
a label outside the known classes) is skipped and counted
(``on_error="skip"``, the default) or stops the job with an error naming the
source and offset (``on_error="fail"``).
"""

from __future__ import annotations

import os
from collections import Counter

from .base import Chunk, PartitionReader, Source, partition_key, worker_partitions
from .batching import Batch, Batching, StreamReader, StreamSpec
from .directory import DirectorySource
from .file import FileSource
from .hdf5 import HDF5Source
from .iterable import IterableSource, _flatten
from .parquet import ParquetSource
from .records import BOM, FORMATS, ON_ERROR, RecordFormat, StreamError, first_lines, not_there, too_long
from .tcp import TCPSource

__all__ = [
    "FORMATS", "ON_ERROR", "Batch", "Batching", "Chunk", "DirectorySource", "FileSource", "HDF5Source",
    "IterableSource", "ParquetSource", "PartitionReader", "RecordFormat", "Source", "StreamError", "StreamReader",
    "StreamSpec", "TCPSource", "first_lines", "not_there", "parse_source", "partition_key", "peek_n_features",
    "too_long", "worker_partitions",
]


def parse_source(text: str, *, follow: bool = True) -> Source:
    """``file:PATH``, ``dir:PATH``, ``parquet:DIR``, ``tcp:HOST:PORT`` or ``h5:PATH#KEY`` as a :class:`Source`."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ValueError(f"source must look like file:PATH, dir:PATH, parquet:DIR, tcp:HOST:PORT or h5:PATH#KEY, "
                         f"got {text!r}")
    if kind == "file":
        return FileSource(rest, follow=follow)
    if kind == "dir":
        return DirectorySource(rest, follow=follow)
    if kind == "parquet":
        return ParquetSource(rest, follow=follow)
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"tcp source must look like tcp:HOST:PORT, got {text!r}")
        return TCPSource(host, int(port))
    if kind == "h5":
        path, _, key = rest.partition("#")
        return HDF5Source(path, key or "X", follow=follow)
    raise ValueError(f"unknown source kind {kind!r} in {text!r}: use file:, dir:, parquet:, tcp: or h5:")


def peek_n_features(source: Source, fmt: RecordFormat, limit: int = 1 << 16, lines: int = 1000) -> int:
    """Features per record: the most common field count among the first ``lines`` complete
    records (read on the driver, nothing consumed). One odd line (a header, a truncated
    record) must not fix the format and turn every record after it into a malformed one.

    Raises StreamError where the source cannot be looked at without
    consuming it (TCP) or has no good record yet.
    """
    probe = RecordFormat(fmt.kind, None, fmt.has_target, None, "skip")
    if isinstance(source, ParquetSource):
        return len(source.resolved(fmt.has_target).features)
    if isinstance(source, HDF5Source):
        reader = source.open(probe, 0, 1, 0)
        reader.close()
        return int(probe.n_features)
    if isinstance(source, IterableSource):
        if not len(source.items):
            raise StreamError("the iterable source is empty")
        return len(_flatten(source.items[0], fmt.has_target)) - int(fmt.has_target)
    if isinstance(source, FileSource):
        if not os.path.isfile(source.path):
            raise not_there("file", source.path)
        paths = [source.path]
    elif isinstance(source, DirectorySource):
        if not os.path.isdir(source.path):
            raise not_there("directory", source.path)
        paths = [os.path.join(source.path, n) for n in source.files()]
    else:
        raise StreamError(f"the number of features of {source.describe()} must be given (n_features): "
                          "it cannot be read ahead without consuming the stream")
    counts: Counter = Counter()
    utf16 = []  # files that start with UTF-16's byte order mark: no line of them is a record
    for path in paths:
        if sum(counts.values()) >= lines:
            break  # a directory of many files: the first ones tell, the rest are not opened
        with open(path, "rb") as f:
            head = f.read(limit).removeprefix(BOM)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            utf16.append(path)
        for line in head.split(b"\n")[:-1]:  # complete lines only
            if sum(counts.values()) >= lines:
                break
            if not line.strip():
                continue
            try:
                width = len(probe._parse_line(line.strip()))
            except (ValueError, TypeError, KeyError, IndexError):
                continue
            if width >= 1 + int(fmt.has_target):
                counts[width] += 1
    if counts:
        width = counts.most_common(1)[0][0]  # ties: the first seen
        return width - int(fmt.has_target)
    if utf16:
        raise StreamError(f"{utf16[0]} is UTF-16 text: records must be UTF-8 (or ASCII) lines")
    raise StreamError(f"{source.describe()} has no complete record yet to tell the number of features; "
                      "pass n_features")
