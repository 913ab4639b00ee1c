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

import json
import os
import socket
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .program import Partition

FORMATS = ("csv", "json")
ON_ERROR = ("skip", "fail")


class StreamError(ValueError):
    """A stream cannot be read: a malformed record under ``on_error="fail"``, a source that is gone."""


# -- records ------------------------------------------------------------------------------------
@dataclass
class RecordFormat:
    """How records become numbers.

    kind : "csv" or "json" (text sources; HDF5 rows need no parsing).
    n_features : features per record, or None to take it from the first good record.
    has_target : the record's last field (CSV/list) or ``"y"`` is the target.
    classes : known labels (classifiers); other labels are malformed records.
    on_error : "skip" (count and drop malformed records) or "fail".
    """

    kind: str = "csv"
    n_features: int | None = None
    has_target: bool = False
    classes: np.ndarray | None = None
    on_error: str = "skip"

    def __post_init__(self) -> None:
        if self.kind not in FORMATS:
            raise ValueError(f"record format must be one of {FORMATS}, got {self.kind!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.n_features is not None and (not isinstance(self.n_features, (int, np.integer))
                                            or self.n_features < 1):
            raise ValueError(f"n_features must be a positive integer or None, got {self.n_features!r}")
        if self.classes is not None:
            self.classes = np.asarray(self.classes, dtype=np.float64)

    @property
    def width(self) -> int | None:
        return None if self.n_features is None else self.n_features + int(self.has_target)

    def check_rows(self, rows: np.ndarray, where: Callable[[int], str]) -> tuple[np.ndarray, int]:
        """Keep the rows of a (n, width) block that are finite and have a known label."""
        good = np.isfinite(rows).all(axis=1)
        if self.classes is not None and rows.shape[0]:
            good &= np.isin(rows[:, -1], self.classes)
        n_bad = int(rows.shape[0] - np.count_nonzero(good))
        if n_bad:
            first = int(np.flatnonzero(~good)[0])
            row = rows[first]
            reason = ("a label not among the known classes " + _short(self.classes)
                      if np.isfinite(row).all() else "NaN or infinity")
            self.fail(where(first), f"{reason}: {row.tolist()}")
            rows = rows[good]
        return rows, n_bad

    def fail(self, where: str, what: str) -> None:
        if self.on_error == "fail":
            raise StreamError(f"malformed record at {where}: {what} (on_error='fail')")

    def parse_text(self, data: bytes, where: Callable[[int], str]) -> tuple[np.ndarray, int]:
        """Rows of shape (n, width) from complete lines; blank lines are ignored.

        ``where(i)`` names the i-th line of ``data`` (its offset) in errors.
        """
        if self.kind == "csv" and self.width is not None and data:
            rows = self._parse_csv_fast(data)
            if rows is not None:
                return self.check_rows(rows, where)
        rows, line_of_row, n_bad = [], [], 0
        for i, line in enumerate(data.split(b"\n")):
            line = line.strip()
            if not line:
                continue
            try:
                values = self._parse_line(line)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                n_bad += 1
                self.fail(where(i), f"{exc}: {line[:80]!r}")
                continue
            if self.n_features is None:
                if len(values) < 1 + int(self.has_target):
                    n_bad += 1
                    self.fail(where(i), f"no features: {line[:80]!r}")
                    continue
                self.n_features = len(values) - int(self.has_target)
            if len(values) != self.width:
                n_bad += 1
                self.fail(where(i), f"{len(values)} fields, expected {self.width}: {line[:80]!r}")
                continue
            rows.append(values)
            line_of_row.append(i)
        block = np.array(rows, dtype=np.float64).reshape(len(rows), self.width or 0)
        block, more_bad = self.check_rows(block, lambda j: where(line_of_row[j]))
        return block, n_bad + more_bad

    def _parse_csv_fast(self, data: bytes) -> np.ndarray | None:
        # One C-level parse of the whole block; any irregularity (a blank or
        # short line, a word) falls back to the line-by-line path. Every line
        # must have width - 1 commas: a total count alone would let a long and
        # a short line make up for each other.
        raw = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(raw == ord("\n"))
        if not data.endswith(b"\n"):
            ends = np.append(ends, len(data))
        n_lines = len(ends)
        commas_before_end = np.searchsorted(np.flatnonzero(raw == ord(",")), ends)
        if np.any(np.diff(commas_before_end, prepend=0) != self.width - 1):
            return None
        try:
            values = np.fromstring(data.replace(b"\n", b","), sep=",")
        except ValueError:
            return None
        if values.size != n_lines * self.width:
            return None
        return values.reshape(n_lines, self.width)

    def _parse_line(self, line: bytes) -> list[float]:
        if self.kind == "csv":
            return [float(token) for token in line.split(b",")]
        obj = json.loads(line)
        if isinstance(obj, dict):
            x = [float(v) for v in obj["x"]]
            if self.has_target:
                x.append(float(obj["y"]))
            return x
        if isinstance(obj, list):
            return [float(v) for v in obj]
        raise TypeError(f"a JSON record must be an object or a list, got {type(obj).__name__}")


def _short(values: np.ndarray | None) -> str:
    if values is None:
        return ""
    shown = values[:10].tolist()
    return str(shown)[:-1] + (", ...]" if len(values) > 10 else "]")


def first_lines(data: bytes, n: int) -> bytes:
    """The first ``n`` newline-terminated lines of ``data`` (all of it if it has no more)."""
    if not n or data.count(b"\n") <= n:
        return data
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    return data[: int(ends[n - 1]) + 1]


def too_long(where: str, limit: int) -> StreamError:
    return StreamError(f"{where}: a record longer than {limit} bytes (no newline); records are lines")


@dataclass
class Chunk:
    """Records read from one partition: rows (n, width), malformed count, arrival times (s, epoch)."""

    rows: np.ndarray
    n_bad: int
    oldest: float
    newest: float


class _Arrivals:
    """When bytes (or rows) at a position were first seen: the arrival of a record."""

    def __init__(self) -> None:
        self.marks: deque[tuple[int, float]] = deque()  # (end position, time first seen)
        self.seen = 0

    def saw(self, end: int) -> None:
        if end > self.seen:
            self.marks.append((end, time.time()))
            self.seen = end

    def span(self, start: int, end: int) -> tuple[float, float]:
        """Arrival of the first and last record in ``[start, end)``; forgets what is before ``end``."""
        oldest = newest = time.time()
        first = True
        for mark_end, t in self.marks:
            if mark_end > start and first:
                oldest, first = t, False
            if mark_end >= end:
                newest = t
                break
        while self.marks and self.marks[0][0] <= end:
            self.marks.popleft()
        return oldest, newest


# -- readers ------------------------------------------------------------------------------------
class PartitionReader:
    """One partition of a source on one worker. ``offset`` is JSON; ``read`` never blocks."""

    ended = False

    @property
    def offset(self) -> Any:
        raise NotImplementedError

    def read(self, max_records: int) -> Chunk | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _TextFileReader(PartitionReader):
    """Complete lines of a file from byte ``pos`` on, owned by this partition.

    With ``block_size`` the file is cut into blocks and a line belongs to the
    partition owning the block its first byte lies in (``block % n == p``),
    the rule of Hadoop's text splits: no coordination between readers.
    Without it the whole file is this partition's (a directory source).
    """

    def __init__(self, path: str, fmt: RecordFormat, pos: int, follow: bool,
                 block_size: int | None = None, partition: int = 0, n_partitions: int = 1,
                 chunk_bytes: int = 1 << 20):
        self.path, self.fmt, self.pos, self.follow = path, fmt, int(pos), follow
        self.block_size, self.partition, self.n_partitions = block_size, partition, n_partitions
        self.chunk_bytes = chunk_bytes
        self.fd = os.open(path, os.O_RDONLY)
        self.arrivals = _Arrivals()
        self.ended = False

    @property
    def offset(self) -> int:
        return self.pos

    def _owned_start(self, pos: int, size: int) -> int | None:
        """The first line start of this partition at or after ``pos`` (None: not in the file yet)."""
        if self.block_size is None:
            return pos
        block = pos // self.block_size
        if block % self.n_partitions == self.partition:
            return pos
        block += (self.partition - block) % self.n_partitions
        start = block * self.block_size
        if start == 0:
            return 0
        # The first line start at or after `start`: just past the first newline at start-1 or later.
        probe = start - 1
        while probe < size:
            data = os.pread(self.fd, min(self.chunk_bytes, size - probe), probe)
            newline = data.find(b"\n")
            if newline >= 0:
                return probe + newline + 1
            probe += len(data)
        return None

    def read(self, max_records: int) -> Chunk | None:
        size = os.fstat(self.fd).st_size
        if size < self.pos:
            raise StreamError(f"{self.path} shrank below the consumed offset {self.pos} "
                              "(truncated or replaced): a stream file must only grow")
        self.arrivals.saw(size)
        start = self._owned_start(self.pos, size)
        if start is None or start >= size:
            if start is not None:
                self.pos = start
            self.ended = not self.follow
            return None
        self.pos = start
        block_end = (None if self.block_size is None
                     else (start // self.block_size + 1) * self.block_size)
        data = os.pread(self.fd, min(self.chunk_bytes, size - start), start)
        # Lines starting before the block's end are ours; keep complete ones only.
        take = data if block_end is None else data[: max(block_end - start, 0)]
        cut = take.rfind(b"\n") + 1 if take else 0
        if block_end is not None and len(data) > len(take) and cut < len(take):
            # Our last line runs past the block end: it is ours too, up to its newline.
            rest = data.find(b"\n", len(take))
            cut = rest + 1 if rest >= 0 else cut
        if cut == 0:
            if start + len(data) >= size and not self.follow and data:
                cut = len(data)  # a last line without a newline, in a finished file
            elif len(data) == self.chunk_bytes:
                raise too_long(f"{self.path} byte offset {start}", self.chunk_bytes)
            else:
                return None
        lines = first_lines(data[:cut], max_records)
        starts = None

        def where(i: int) -> str:
            nonlocal starts
            if starts is None:
                nl = np.flatnonzero(np.frombuffer(lines, dtype=np.uint8) == 10)
                starts = np.concatenate([[0], nl + 1])
            return f"{self.path} byte offset {start + int(starts[i])}"

        rows, n_bad = self.fmt.parse_text(lines, where)
        end = start + len(lines)
        oldest, newest = self.arrivals.span(start, end)
        self.pos = end
        return Chunk(rows, n_bad, oldest, newest)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _DirectoryReader(PartitionReader):
    """This partition's files of a directory, in name order; a file is complete when it appears.

    Files are owned by ``crc32(name) % n_partitions``; a quiet directory is
    listed again every ``LISTING_INTERVAL`` seconds. The source says which
    names are its files (``wanted``: names starting with ``.`` or ending in
    ``.tmp`` never are: write there, then rename in) and how one is read
    (``open_file``: lines of text, or a Parquet file's rows).
    The offset is ``{"file": name, "pos": position}``: every earlier file of
    this partition is done, ``name`` is consumed up to ``pos`` (bytes of
    text, rows of Parquet).
    """

    LISTING_INTERVAL = 0.005

    def __init__(self, source: "DirectorySource", fmt: RecordFormat, partition: int, n_partitions: int,
                 offset: Any):
        self.source, self.fmt = source, fmt
        self.partition, self.n_partitions = partition, n_partitions
        offset = offset or {"file": "", "pos": 0}
        self.name, self.start = str(offset["file"]), int(offset["pos"])
        self.current: _TextFileReader | None = None
        self.ended = False
        self.next_listing = 0.0  # monotonic time before which a quiet directory is not listed again

    @property
    def offset(self) -> dict:
        pos = self.current.pos if self.current is not None else self.start
        return {"file": self.name, "pos": int(pos)}

    def _mine(self) -> list[str]:
        try:
            names = os.listdir(self.source.path)
        except FileNotFoundError:
            raise StreamError(f"stream directory {self.source.path} does not exist") from None
        return sorted(n for n in names if self.source.wanted(n)
                      and zlib.crc32(n.encode()) % self.n_partitions == self.partition)

    def _advance(self) -> bool:
        """Move to this partition's next file after ``name``; False when there is none (yet)."""
        now = time.monotonic()
        if now < self.next_listing:
            return False
        later = [n for n in self._mine() if n > self.name]
        if not later:
            self.ended = not self.source.follow
            # The reader is polled every 0.25 ms; listing (and hashing every name) that
            # often would cost more than the records. New files wait at most this long.
            self.next_listing = now + self.LISTING_INTERVAL
            return False
        if self.current is not None:
            self.current.close()
        self.current, self.name, self.start = None, later[0], 0
        return True

    def read(self, max_records: int) -> Chunk | None:
        while True:
            if self.current is None:
                # Resume inside (or at the end of) the offset's file, if it is still there.
                if not (self.name and os.path.exists(os.path.join(self.source.path, self.name))) \
                        and not self._advance():
                    return None
                self.current = self.source.open_file(os.path.join(self.source.path, self.name), self.fmt,
                                                     self.start)
            chunk = self.current.read(max_records)
            if chunk is not None:
                return chunk
            self.start = self.current.pos  # this file is finished
            if not self._advance():
                return None

    def close(self) -> None:
        if self.current is not None:
            self.current.close()


class _ParquetFileReader(PartitionReader):
    """Rows of one complete Parquet file from row ``pos`` on, row group by row group.

    The chosen feature columns come first, the target last (when the
    learner has one), as float64; a null is NaN and so a malformed record.
    A file that is not Parquet or lacks a chosen column is malformed as a
    whole (``on_error``): skipped and counted as one record, or an error.
    """

    def __init__(self, path: str, fmt: RecordFormat, pos: int, source: "ParquetSource"):
        from .parquet import is_numeric, open_file

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


class _TCPReader(PartitionReader):
    """Lines from one TCP connection; the offset counts records taken.

    On connecting, the reader sends ``DRIZZLE partition=P partitions=N
    offset=K`` and a newline: a producer that can replay starts this
    partition at record K (exactly-once across restarts); one that ignores
    the line makes a restart resume wherever the producer is.
    """

    def __init__(self, source: "TCPSource", fmt: RecordFormat, partition: int, n_partitions: int,
                 offset: Any, connect_timeout: float = 10.0):
        self.source, self.fmt, self.partition = source, fmt, partition
        self.count = int(offset or 0)
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock = socket.create_connection((source.host, source.port), timeout=1.0)
                break
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise StreamError(f"cannot connect to tcp:{source.host}:{source.port}: {exc}") from None
                time.sleep(0.05)
        try:
            self.sock.sendall(f"DRIZZLE partition={partition} partitions={n_partitions} "
                              f"offset={self.count}\n".encode())
        except OSError as exc:
            self.sock.close()
            raise StreamError(f"tcp:{source.host}:{source.port} closed the connection at once: {exc}") from None
        self.sock.setblocking(False)
        self.buffer = bytearray()
        self.arrivals = _Arrivals()
        self.taken = 0  # bytes of the stream consumed (arrival bookkeeping)
        self.closed = False
        self.ended = False

    @property
    def offset(self) -> int:
        return self.count

    def read(self, max_records: int) -> Chunk | None:
        # Receive only while the buffer is small: the rest waits in the kernel
        # and then at the producer (back-pressure).
        while not self.closed and len(self.buffer) < self.source.buffer_bytes:
            try:
                data = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise StreamError(f"tcp:{self.source.host}:{self.source.port}: {exc}") from None
            if not data:
                self.closed = True
                break
            self.buffer += data
            self.arrivals.saw(self.taken + len(self.buffer))
        cut = self.buffer.rfind(b"\n") + 1
        if self.closed and cut < len(self.buffer):
            cut = len(self.buffer)  # the producer closed after a last line without newline
        if cut == 0:
            if len(self.buffer) >= self.source.buffer_bytes:
                raise too_long(f"tcp:{self.source.host}:{self.source.port} record {self.count}",
                               self.source.buffer_bytes)
            self.ended = self.closed
            return None
        lines = first_lines(bytes(self.buffer[:cut]), max_records)
        n_lines = lines.count(b"\n") + (0 if lines.endswith(b"\n") else 1)
        first = self.count
        where = lambda i: f"tcp:{self.source.host}:{self.source.port} partition {self.partition} record {first + i}"
        rows, n_bad = self.fmt.parse_text(lines, where)
        del self.buffer[: len(lines)]
        oldest, newest = self.arrivals.span(self.taken, self.taken + len(lines))
        self.taken += len(lines)
        self.count += n_lines
        return Chunk(rows, n_bad, oldest, newest)

    def close(self) -> None:
        self.sock.close()


class _HDF5Reader(PartitionReader):
    """Rows of a growing 2-D HDF5 dataset, in blocks of ``block_rows`` owned round-robin.

    The writer should use SWMR mode (``libver="latest"``, ``swmr_mode=True``)
    so that readers see appended rows safely; the reader opens the file with
    ``swmr=True`` when it can and refreshes the dataset's shape.
    """

    def __init__(self, source: "HDF5Source", fmt: RecordFormat, partition: int, n_partitions: int,
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

    def _check_dataset(self, source: "HDF5Source", fmt: RecordFormat) -> Any:
        if source.key not in self.file:
            raise StreamError(f"{source.path} has no dataset {source.key!r}")
        dset = self.file[source.key]
        if dset.ndim != 2:
            raise StreamError(f"{source.path}#{source.key} must be 2-D (records x fields), got shape {dset.shape}")
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


class _IterableReader(PartitionReader):
    """Items ``i`` with ``i % n_partitions == partition`` of a sequence shipped to the worker."""

    def __init__(self, source: "IterableSource", fmt: RecordFormat, partition: int, n_partitions: int,
                 offset: Any):
        self.items, self.fmt = source.items, fmt
        self.partition, self.n_partitions = partition, n_partitions
        self.count = int(offset or 0)  # items of this partition taken
        self.ended = False

    @property
    def offset(self) -> int:
        return self.count

    def read(self, max_records: int) -> Chunk | None:
        start = self.partition + self.count * self.n_partitions
        if start >= len(self.items):
            self.ended = True
            return None
        stop = min(len(self.items), start + max(max_records or len(self.items), 1) * self.n_partitions)
        picked = self.items[start:stop:self.n_partitions]
        now = time.time()
        rows, item_of_row, n_bad = [], [], 0
        for i, item in enumerate(picked):
            try:
                values = np.asarray(_flatten(item, self.fmt.has_target), dtype=np.float64)
            except (TypeError, ValueError) as exc:
                n_bad += 1
                self.fmt.fail(f"item {start + i * self.n_partitions}", str(exc))
                continue
            if self.fmt.n_features is None:
                self.fmt.n_features = values.size - int(self.fmt.has_target)
            if values.size != self.fmt.width:
                n_bad += 1
                self.fmt.fail(f"item {start + i * self.n_partitions}",
                              f"{values.size} values, expected {self.fmt.width}")
                continue
            rows.append(values)
            item_of_row.append(start + i * self.n_partitions)
        block = np.array(rows, dtype=np.float64).reshape(len(rows), self.fmt.width or 0)
        block, more = self.fmt.check_rows(block, lambda j: f"item {item_of_row[j]}")
        self.count += len(picked)
        return Chunk(block, n_bad + more, now, now)


def _flatten(item: Any, has_target: bool) -> list[float]:
    if isinstance(item, tuple) and len(item) == 2 and has_target:
        x, y = item
        return [*np.ravel(np.asarray(x, dtype=np.float64)).tolist(), float(y)]
    return np.ravel(np.asarray(item, dtype=np.float64)).tolist()


# -- sources --------------------------------------------------------------------------------------
@dataclass
class Source:
    """Base of the source descriptions (picklable; opened on the workers)."""

    def open(self, fmt: RecordFormat, partition: int, n_partitions: int, offset: Any) -> PartitionReader:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass
class FileSource(Source):
    """An append-only file of CSV or JSON lines, tailed while it grows (``follow``).

    Partitions own blocks of ``block_size`` bytes round-robin; the offset is a byte position.
    """

    path: str
    follow: bool = True
    block_size: int = 1 << 16

    def open(self, fmt, partition, n_partitions, offset):
        if not os.path.isfile(self.path):
            raise StreamError(f"stream file {self.path} does not exist")
        return _TextFileReader(self.path, fmt, int(offset or 0), self.follow, self.block_size,
                               partition, n_partitions)

    def describe(self) -> str:
        return f"file:{self.path}"


@dataclass
class DirectorySource(Source):
    """A directory that receives new files of CSV or JSON lines (each complete when it appears)."""

    path: str
    follow: bool = True

    def open(self, fmt, partition, n_partitions, offset):
        if not os.path.isdir(self.path):
            raise StreamError(f"stream directory {self.path} does not exist")
        return _DirectoryReader(self, fmt, partition, n_partitions, offset)

    def wanted(self, name: str) -> bool:
        """Whether a directory entry is one of the stream's files."""
        return not name.startswith(".") and not name.endswith(".tmp")

    def open_file(self, path: str, fmt: RecordFormat, pos: int) -> PartitionReader:
        """A reader of one complete file from position ``pos`` on."""
        return _TextFileReader(path, fmt, pos, follow=False)

    def describe(self) -> str:
        return f"dir:{self.path}"


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
        from .parquet import wanted_name

        return wanted_name(name) and not name.endswith(".tmp")

    def open_file(self, path: str, fmt: RecordFormat, pos: int) -> PartitionReader:
        return _ParquetFileReader(path, fmt, pos, self)

    def open(self, fmt, partition, n_partitions, offset):
        from .parquet import pyarrow_parquet

        pyarrow_parquet()
        return super().open(fmt, partition, n_partitions, offset)

    def resolved(self, has_target: bool) -> "ParquetSource":
        """This source with its columns fixed: explicit ones kept, the rest read from the first file's schema."""
        from .parquet import AUTO, DEFAULT_TARGET, open_file, pyarrow_parquet, resolve_columns

        pyarrow_parquet()
        target = (self.target or DEFAULT_TARGET) if has_target else None
        if self.features is not None:
            return ParquetSource(self.path, self.follow, list(self.features), target)
        names = sorted(n for n in os.listdir(self.path) if self.wanted(n)) if os.path.isdir(self.path) else []
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


@dataclass
class TCPSource(Source):
    """Lines from a TCP server; each partition is one connection. The stream ends when it closes."""

    host: str
    port: int
    buffer_bytes: int = 4 << 20
    follow: bool = True

    def open(self, fmt, partition, n_partitions, offset):
        return _TCPReader(self, fmt, partition, n_partitions, offset)

    def describe(self) -> str:
        return f"tcp:{self.host}:{self.port}"


@dataclass
class HDF5Source(Source):
    """A 2-D HDF5 dataset that grows (rows appended, SWMR); partitions own blocks of rows."""

    path: str
    key: str = "X"
    follow: bool = True
    block_rows: int = 4096

    def open(self, fmt, partition, n_partitions, offset):
        if not os.path.isfile(self.path):
            raise StreamError(f"stream file {self.path} does not exist")
        return _HDF5Reader(self, fmt, partition, n_partitions, offset)

    def describe(self) -> str:
        return f"h5:{self.path}#{self.key}"


@dataclass
class IterableSource(Source):
    """A Python sequence of records (arrays, lists, or ``(x, y)`` pairs), for tests and notebooks.

    It is pickled to the workers, so it must be a sequence (list, array),
    not a generator; item ``i`` belongs to partition ``i % n_partitions``.
    """

    items: Sequence[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not hasattr(self.items, "__getitem__") or not hasattr(self.items, "__len__"):
            raise TypeError(
                f"IterableSource needs a sequence (list, tuple, array) that can be sent to the "
                f"workers, got {type(self.items).__name__}; use list(...) on a generator"
            )

    def open(self, fmt, partition, n_partitions, offset):
        return _IterableReader(self, fmt, partition, n_partitions, offset)

    def describe(self) -> str:
        return f"iterable of {len(self.items)} records"

    @property
    def follow(self) -> bool:
        return False


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


# -- micro-batches --------------------------------------------------------------------------------
@dataclass
class Batching:
    """How micro-batches are cut, per worker.

    max_batch : records per worker per micro-batch (a batch is cut when it has them).
    interval : seconds after the previous cut at which a batch is cut with what
        it has (None: only by size, which makes the batches, and so the model,
        independent of timing).
    idle_timeout : a worker whose partitions brought nothing for this long is
        idle; the stream ends when every worker is idle (None: only finished
        sources are idle).
    """

    max_batch: int = 10_000
    interval: float | None = 0.01
    idle_timeout: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, (int, np.integer)) \
                or self.max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {self.max_batch!r}")
        for name in ("interval", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")


@dataclass
class Batch(Partition):
    """One worker's micro-batch: a :class:`Partition` plus what the stream knows of it.

    n_bad : malformed records skipped. idle : this worker's partitions are
    finished or quiet (see :class:`Batching`). oldest, newest : arrival times
    (seconds since the epoch) of its first and last record (inf/-inf when empty).
    """

    n_bad: int = 0
    idle: bool = False
    oldest: float = float("inf")
    newest: float = float("-inf")


class StreamReader:
    """A worker's partitions of a stream, cut into micro-batches.

    ``wait(test)`` is the worker's bounded wait (it also serves control
    messages); the reader polls its sources every ``poll_interval`` seconds.
    """

    def __init__(self, source: Source, fmt: RecordFormat, batching: Batching, partitions: Iterable[int],
                 n_partitions: int, offsets: dict[str, Any], worker: int, poll_interval: float = 2.5e-4):
        self.fmt, self.batching, self.worker = fmt, batching, worker
        self.readers: dict[int, PartitionReader] = {}
        try:
            for p in partitions:
                self.readers[p] = source.open(fmt, p, n_partitions, offsets.get(partition_key(p)))
        except BaseException:
            self.close()
            raise
        self.poll_interval = poll_interval
        self.last_cut = time.monotonic()
        self.last_record = time.monotonic()

    def offsets(self) -> dict[str, Any]:
        return {partition_key(p): r.offset for p, r in self.readers.items()}

    def _ended(self) -> bool:
        return all(r.ended for r in self.readers.values())

    def next_batch(self, wait: Callable[[Callable[[], bool], float], Any]) -> Batch:
        """The next micro-batch: cut by size, interval, or idleness, whichever comes first."""
        want = self.batching.max_batch
        chunks: list[Chunk] = []
        have = 0
        idle = False

        def ready() -> bool:
            nonlocal have, idle
            for reader in self.readers.values():
                while have < want:
                    chunk = reader.read(want - have)
                    if chunk is None:
                        break
                    chunks.append(chunk)
                    have += chunk.rows.shape[0] + chunk.n_bad
                    if chunk.rows.shape[0] or chunk.n_bad:
                        self.last_record = time.monotonic()
            if have >= want:
                return True
            now = time.monotonic()
            if self._ended() or (self.batching.idle_timeout is not None
                                 and now - self.last_record >= self.batching.idle_timeout):
                idle = True
                return True
            return self.batching.interval is not None and now - self.last_cut >= self.batching.interval

        if not ready():
            wait(ready, self.poll_interval)
        self.last_cut = time.monotonic()
        n_features = self.fmt.n_features or 0
        # One copy of the rows: features and target cut from each chunk straight into the batch.
        full = [c.rows for c in chunks if c.rows.shape[0]]
        X = np.concatenate([r[:, :n_features] for r in full]) if full else np.empty((0, n_features))
        y = None
        if self.fmt.has_target:
            y = np.concatenate([r[:, n_features] for r in full]) if full else np.empty(0)
        return Batch(
            X=X, y=y, worker=self.worker, n_bad=sum(c.n_bad for c in chunks), idle=idle,
            oldest=min((c.oldest for c in chunks if c.rows.shape[0]), default=float("inf")),
            newest=max((c.newest for c in chunks if c.rows.shape[0]), default=float("-inf")),
        )

    def close(self) -> None:
        for reader in self.readers.values():
            try:
                reader.close()
            except Exception:
                pass


def partition_key(p: int) -> str:
    return f"p{p}"


def worker_partitions(worker: int, n_workers: int, n_partitions: int) -> list[int]:
    """The partitions worker ``worker`` reads: ``p % n_workers == worker``."""
    return [p for p in range(n_partitions) if p % n_workers == worker]


@dataclass
class StreamSpec:
    """What a stream job's workers need: the source, the record format, batching, offsets."""

    source: Source
    fmt: RecordFormat
    batching: Batching
    n_partitions: int
    offsets: dict[str, Any] = field(default_factory=dict)


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
        paths = [source.path] if os.path.isfile(source.path) else []
    elif isinstance(source, DirectorySource):
        names = sorted(n for n in os.listdir(source.path) if not n.startswith(".") and not n.endswith(".tmp")) \
            if os.path.isdir(source.path) else []
        paths = [os.path.join(source.path, n) for n in names]
    else:
        raise StreamError(f"the number of features of {source.describe()} must be given (n_features): "
                          "it cannot be read ahead without consuming the stream")
    counts: Counter = Counter()
    for path in paths:
        with open(path, "rb") as f:
            head = f.read(limit)
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
    raise StreamError(f"{source.describe()} has no complete record yet to tell the number of features; "
                      "pass n_features")
