"""``dir:PATH``: new files appearing in a directory, each read once, in name order; partitions own files."""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from typing import Any

from .base import Chunk, PartitionReader, Source
from .file import _TextFileReader
from .records import RecordFormat, not_there


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

    def __init__(self, source: DirectorySource, fmt: RecordFormat, partition: int, n_partitions: int,
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
            names = self.source.files()
        except FileNotFoundError:
            raise not_there("directory", self.source.path) from None
        return [n for n in names if zlib.crc32(n.encode()) % self.n_partitions == self.partition]

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


@dataclass
class DirectorySource(Source):
    """A directory that receives new files of CSV or JSON lines (each complete when it appears)."""

    path: str
    follow: bool = True

    def open(self, fmt, partition, n_partitions, offset):
        if not os.path.isdir(self.path):
            raise not_there("directory", self.path)
        return _DirectoryReader(self, fmt, partition, n_partitions, offset)

    def wanted(self, name: str) -> bool:
        """Whether a directory entry is one of the stream's files."""
        return not name.startswith(".") and not name.endswith(".tmp")

    def files(self) -> list[str]:
        """The stream's files in the directory now, in name order: wanted names of regular files
        (a subdirectory, a FIFO or a dangling link is none; opening one would fail or block)."""
        with os.scandir(self.path) as entries:
            return sorted(e.name for e in entries if self.wanted(e.name) and e.is_file())

    def open_file(self, path: str, fmt: RecordFormat, pos: int) -> PartitionReader:
        """A reader of one complete file from position ``pos`` on."""
        return _TextFileReader(path, fmt, pos, follow=False)

    def describe(self) -> str:
        return f"dir:{self.path}"
