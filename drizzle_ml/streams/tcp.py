"""``tcp:HOST:PORT``: lines from a TCP server, one connection per partition; the offset counts records."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

from .base import Chunk, PartitionReader, Source, _Arrivals
from .records import RecordFormat, StreamError, first_lines, too_long


class _TCPReader(PartitionReader):
    """Lines from one TCP connection; the offset counts records taken.

    On connecting, the reader sends ``DRIZZLE partition=P partitions=N
    offset=K`` and a newline: a producer that can replay starts this
    partition at record K (exactly-once across restarts); one that ignores
    the line makes a restart resume wherever the producer is.
    """

    def __init__(self, source: TCPSource, fmt: RecordFormat, partition: int, n_partitions: int,
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
