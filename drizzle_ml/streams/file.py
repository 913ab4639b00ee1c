"""``file:PATH``: an append-only file of CSV or JSON lines, tailed while it grows; partitions own blocks of bytes."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from .base import Chunk, PartitionReader, Source, _Arrivals
from .records import BOM, RecordFormat, StreamError, first_lines, not_there, too_long


class _TextFileReader(PartitionReader):
    """Complete lines of a file from byte ``pos`` on, owned by this partition.

    With ``block_size`` the file is cut into blocks and a line belongs to the
    partition owning the block its first byte lies in (``block % n == p``),
    the rule of Hadoop's text splits: no coordination between readers.
    Without it the whole file is this partition's (a directory source).
    """

    CHECK_INTERVAL = 0.05

    def __init__(self, path: str, fmt: RecordFormat, pos: int, follow: bool,
                 block_size: int | None = None, partition: int = 0, n_partitions: int = 1,
                 chunk_bytes: int = 1 << 20):
        self.path, self.fmt, self.pos, self.follow = path, fmt, int(pos), follow
        self.block_size, self.partition, self.n_partitions = block_size, partition, n_partitions
        self.chunk_bytes = chunk_bytes
        self.fd = os.open(path, os.O_RDONLY)
        self.arrivals = _Arrivals()
        self.ended = False
        self.next_check = 0.0  # monotonic time before which a followed file is not checked again

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

    def _check_same_file(self) -> None:
        """A followed file renamed over or removed gets nothing more: an error, not a wait without end.

        Checked when this partition has read everything of the file it holds open, at most
        every ``CHECK_INTERVAL`` seconds (the reader is polled every 0.25 ms).
        """
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + self.CHECK_INTERVAL
        held = os.fstat(self.fd)
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            named = None
        if named is None or (named.st_ino, named.st_dev) != (held.st_ino, held.st_dev):
            raise StreamError(f"{self.path} was {'removed' if named is None else 'replaced'} while followed "
                              f"(consumed up to byte offset {self.pos}): a stream file must only grow in place")

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
            if self.follow:
                self._check_same_file()
            return None
        self.pos = start
        block_end = (None if self.block_size is None
                     else (start // self.block_size + 1) * self.block_size)
        data = os.pread(self.fd, min(self.chunk_bytes, size - start), start)
        if start == 0 and data.startswith(BOM):  # an editor's mark, not part of the first record
            start, data = len(BOM), data[len(BOM):]
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
            raise not_there("file", self.path)
        return _TextFileReader(self.path, fmt, int(offset or 0), self.follow, self.block_size,
                               partition, n_partitions)

    def describe(self) -> str:
        return f"file:{self.path}"
